"""Chat and text completions: protocol request in, typed protocol response out. No FastAPI here.

The service resolves the ``model`` field to a lease (base or adapter version), renders the prompt with
the adapter's stored chat template, checks the context window, fans ``n`` choices out as engine
requests (batched together by the engine), and releases the lease when the last choice ends — also
when the client goes away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from adapterhub.errors import ContextLengthError, UserInputError
from serving.adapters import AdapterManager, Lease
from serving.engines.base import Delta, Engine, GenerationRequest, SamplingParams
from serving.metrics import Metrics
from serving.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatResponseMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
    new_id,
    now,
)


class CompletionService:
    def __init__(self, engine: Engine, manager: AdapterManager, metrics: Metrics, *,
                 default_max_tokens: int = 512) -> None:
        self.engine = engine
        self.manager = manager
        self.metrics = metrics
        self.default_max_tokens = default_max_tokens

    # ---------------------------------------------------------------- helpers
    def _params(self, req: ChatCompletionRequest | CompletionRequest, prompt_len: int, i: int) -> SamplingParams:
        ctx = self.engine.capabilities.context_length
        budget = req.token_budget()
        if budget is not None and prompt_len + budget > ctx:
            raise ContextLengthError(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{prompt_len + budget} tokens ({prompt_len} in the prompt, {budget} for the completion). "
                "Please reduce the prompt or the completion length."
            )
        if prompt_len >= ctx:
            raise ContextLengthError(
                f"This model's maximum context length is {ctx} tokens, and the prompt has {prompt_len}."
            )
        max_tokens = budget if budget is not None else min(self.default_max_tokens, ctx - prompt_len)
        seed = None if req.seed is None else req.seed + i
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=seed,
                              stop=req.stop_list())

    async def _start(self, req: Any, encode: Any) -> tuple[Lease, list[int], list[GenerationRequest]]:
        """Lease the model, encode the prompt, build the n engine requests; the lease is released if any
        step fails. The caller releases it when the last choice ends."""
        lease = await self.manager.acquire(req.model)
        try:
            prompt = encode(lease)
            return lease, prompt, self._requests(lease, prompt, req)
        except BaseException:
            self.manager.release(lease)
            raise

    def _requests(self, lease: Lease, prompt: list[int], req: Any) -> list[GenerationRequest]:
        rid = new_id("req")
        return [GenerationRequest(prompt, self._params(req, len(prompt), i), lease.key, f"{rid}-{i}")
                for i in range(req.n)]

    # ---------------------------------------------------------------- chat
    def encode_messages(self, req: ChatCompletionRequest, lease: Lease) -> list[int]:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        return self.engine.encode_chat(messages, lease.chat_template)

    async def chat(self, req: ChatCompletionRequest) -> ChatCompletionResponse:
        t0 = time.perf_counter()
        lease, prompt, gens = await self._start(req, lambda lease: self.encode_messages(req, lease))
        try:
            results = await asyncio.gather(*(_collect(self.engine, g) for g in gens))
        finally:
            self.manager.release(lease)
        completion = sum(n for _, _, n in results)
        self.metrics.observe("chat", req.model, 200, time.perf_counter() - t0, len(prompt), completion)
        return ChatCompletionResponse(
            id=new_id("chatcmpl"), created=now(), model=req.model,
            choices=[ChatChoice(index=i, message=ChatResponseMessage(content=text), finish_reason=reason)
                     for i, (text, reason, _) in enumerate(results)],
            usage=Usage.of(len(prompt), completion),
        )

    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Validate eagerly (errors before the first byte), then return the chunk iterator."""
        lease, prompt, gens = await self._start(req, lambda lease: self.encode_messages(req, lease))
        cid, created = new_id("chatcmpl"), now()

        def chunk(i: int, delta: ChatDelta, reason: Any) -> ChatCompletionChunk:
            return ChatCompletionChunk(id=cid, created=created, model=req.model,
                                       choices=[ChatChunkChoice(index=i, delta=delta, finish_reason=reason)])

        async def frames() -> AsyncIterator[ChatCompletionChunk]:
            t0 = time.perf_counter()
            completion = 0
            try:
                for i in range(req.n):
                    yield chunk(i, ChatDelta(role="assistant", content=""), None)
                async for i, d in _merge(self.engine, gens):
                    if d.text:
                        yield chunk(i, ChatDelta(content=d.text), None)
                    if d.finish_reason is not None:
                        completion += d.completion_tokens
                        if d.finish_reason != "cancelled":
                            yield chunk(i, ChatDelta(), d.finish_reason)
                if req.stream_options and req.stream_options.include_usage:
                    yield ChatCompletionChunk(id=cid, created=created, model=req.model, choices=[],
                                              usage=Usage.of(len(prompt), completion))
                self.metrics.observe("chat", req.model, 200, time.perf_counter() - t0, len(prompt), completion)
            finally:
                for g in gens:
                    g.cancel()
                self.manager.release(lease)

        return frames()

    # ---------------------------------------------------------------- completions
    def _prompt_text(self, req: CompletionRequest) -> str:
        if isinstance(req.prompt, list):
            if len(req.prompt) != 1:
                raise UserInputError("only a single prompt per request is supported", param="prompt")
            return req.prompt[0]
        return req.prompt

    async def complete(self, req: CompletionRequest) -> CompletionResponse:
        t0 = time.perf_counter()
        text_in = self._prompt_text(req)
        lease, prompt, gens = await self._start(req, lambda _lease: self.engine.encode(text_in))
        try:
            results = await asyncio.gather(*(_collect(self.engine, g) for g in gens))
        finally:
            self.manager.release(lease)
        completion = sum(n for _, _, n in results)
        self.metrics.observe("completions", req.model, 200, time.perf_counter() - t0, len(prompt), completion)
        return CompletionResponse(
            id=new_id("cmpl"), created=now(), model=req.model,
            choices=[CompletionChoice(index=i, text=(text_in if req.echo else "") + text, finish_reason=reason)
                     for i, (text, reason, _) in enumerate(results)],
            usage=Usage.of(len(prompt), completion),
        )

    async def complete_stream(self, req: CompletionRequest) -> AsyncIterator[CompletionResponse]:
        text_in = self._prompt_text(req)
        lease, prompt, gens = await self._start(req, lambda _lease: self.engine.encode(text_in))
        cid, created = new_id("cmpl"), now()

        async def frames() -> AsyncIterator[CompletionResponse]:
            completion = 0
            try:
                async for i, d in _merge(self.engine, gens):
                    if d.finish_reason is not None:
                        completion += d.completion_tokens
                    if d.text or (d.finish_reason and d.finish_reason != "cancelled"):
                        yield CompletionResponse(id=cid, created=created, model=req.model, choices=[
                            CompletionChoice(index=i, text=d.text, finish_reason=d.finish_reason)])
                if req.stream_options and req.stream_options.include_usage:
                    yield CompletionResponse(id=cid, created=created, model=req.model, choices=[],
                                             usage=Usage.of(len(prompt), completion))
            finally:
                for g in gens:
                    g.cancel()
                self.manager.release(lease)

        return frames()


async def _collect(engine: Engine, req: GenerationRequest) -> tuple[str, str, int]:
    parts: list[str] = []
    reason, tokens = "stop", 0
    async for d in engine.generate(req):
        parts.append(d.text)
        if d.finish_reason is not None:
            reason, tokens = d.finish_reason, d.completion_tokens
    return "".join(parts), reason, tokens


async def _merge(engine: Engine, gens: list[GenerationRequest]) -> AsyncIterator[tuple[int, Delta]]:
    """Interleave the streams of several choices as their deltas arrive."""
    if len(gens) == 1:
        async for d in engine.generate(gens[0]):
            yield 0, d
        return
    q: asyncio.Queue[tuple[int, Delta | None]] = asyncio.Queue()

    async def pump(i: int, g: GenerationRequest) -> None:
        try:
            async for d in engine.generate(g):
                await q.put((i, d))
        finally:
            await q.put((i, None))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    remaining = len(tasks)
    try:
        while remaining:
            i, d = await q.get()
            if d is None:
                remaining -= 1
            else:
                yield i, d
    finally:
        for t in tasks:
            t.cancel()

