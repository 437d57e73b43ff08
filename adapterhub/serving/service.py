"""Chat and text completions: protocol request in, typed protocol response out. No FastAPI here.

The service refuses what it cannot honour (every unsupported parameter named), checks what can be
checked before the engine (empty prompts, token ids outside the vocabulary, the context window), so
one bad request never reaches a batch shared with others. It resolves ``model`` to a lease (base or
adapter version), renders the prompt with the adapter's stored chat template, fans ``n`` (× prompts)
choices out as engine requests (batched together by the engine), and releases the lease when the last
choice ends — also when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from adapterhub.errors import ContextLengthError, UserInputError
from adapterhub.serving.adapters import AdapterManager, Lease
from adapterhub.serving.engines.base import Delta, Engine, GenerationRequest, SamplingParams, TokenLogprob
from adapterhub.serving.media import MediaPolicy, load_image
from adapterhub.serving.metrics import Metrics, current_target
from adapterhub.serving.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    ChatResponseMessage,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    FunctionCall,
    TokenizeRequest,
    TokenizeResponse,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
    new_id,
    now,
)
from adapterhub.serving.protocol import (
    TokenLogprob as TokenLogprobOut,
)
from adapterhub.serving.protocol.requests import ImagePart, _Sampling
from adapterhub.serving.structured import Constraint
from adapterhub.serving.structured import from_request as constraint_of
from adapterhub.tools import (
    StreamSplitter,
    ToolParser,
    get_parser,
    new_call_id,
    supports_tools,
    template_messages,
)


class UnsupportedParameterError(UserInputError):
    code = "unsupported_parameter"


@dataclass
class _Result:
    text: str = ""
    reason: str = "stop"
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    first_at: float | None = None  # monotonic time of the first generated token
    last_at: float | None = None
    gaps: list[float] = field(default_factory=list)  # seconds per token between later deltas

    @property
    def cumulative_logprob(self) -> float:
        return sum(lp.logprob for lp in self.logprobs)


@dataclass
class _Tools:
    """How one chat request uses tools: the parser of the model's format, the known names, the mode."""

    parser: ToolParser
    names: set[str]
    mode: str  # auto | required | a function name
    tools: list[dict[str, Any]]
    parallel: bool = True

    @property
    def forced(self) -> bool:
        return self.mode != "auto"

    def allowed(self, calls: list[Any]) -> list[Any]:
        """The calls the client gets. ``parallel_tool_calls: false``: at most one (forced calls are one by
        grammar; a model in ``auto`` may still write several: the first is kept). ``strict`` functions:
        forced calls are generated under their schema; in ``auto`` a call whose arguments do not validate
        is not returned as a call (the answer stays text), so every strict call a client gets validates."""
        calls = calls if self.parallel else calls[:1]
        schemas = {t["function"]["name"]: t["function"].get("parameters") or {"type": "object"}
                   for t in self.tools if t["function"].get("strict")}
        if schemas and not self.forced:
            import jsonschema

            for c in calls:
                if c.name in schemas:
                    try:
                        jsonschema.validate(json.loads(c.arguments), schemas[c.name])
                    except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError):
                        return []
        return calls


@dataclass
class _Job:
    """One request fanned out: its lease, prompts (ids) and the engine requests, choice by choice."""

    lease: Lease
    prompts: list[list[int]]
    gens: list[GenerationRequest]
    prompt_of: list[int]  # gens[i] answers prompts[prompt_of[i]]
    tools: _Tools | None = None


class CompletionService:
    def __init__(self, engine: Engine, manager: AdapterManager, metrics: Metrics, *,
                 default_max_tokens: int = 512, tool_parser: str = "hermes", tool_template: str | None = None,
                 media: MediaPolicy | None = None) -> None:
        self.engine = engine
        self.manager = manager
        self.metrics = metrics
        self.default_max_tokens = default_max_tokens
        self.tool_parser = tool_parser
        self.tool_template = tool_template
        self.media = media or MediaPolicy()

    # ---------------------------------------------------------------- checks
    @staticmethod
    def refuse_unsupported(req: Any) -> None:
        problems = req.unsupported()
        if problems:
            name, reason = problems[0]
            more = f" (also: {', '.join(n for n, _ in problems[1:])})" if len(problems) > 1 else ""
            raise UnsupportedParameterError(f"'{name}' is not supported: {reason}{more}", param=name)

    def _check_ids(self, ids: list[int], param: str) -> None:
        vocab = self.engine.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise UserInputError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param=param)

    def _params(self, req: _Sampling, prompt_len: int, seed_offset: int, logprobs: int | None,
                constraint: Constraint | None = None, skip_special_tokens: bool | None = None) -> SamplingParams:
        ctx = self.engine.capabilities.context_length
        budget = req.token_budget()  # type: ignore[attr-defined]
        if prompt_len == 0:
            raise UserInputError("the prompt is empty (0 tokens)", param="prompt")
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
        if req.min_tokens > max_tokens:
            raise UserInputError(f"min_tokens ({req.min_tokens}) is more than max_tokens ({max_tokens})",
                                 param="min_tokens")
        seed = None if req.seed is None else (req.seed + seed_offset) % 2**64
        return SamplingParams(
            max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=max(req.top_k, 0),
            min_p=req.min_p, seed=seed, stop=req.stop_list(), stop_token_ids=tuple(req.stop_token_ids),
            include_stop_str_in_output=req.include_stop_str_in_output, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, repetition_penalty=req.repetition_penalty,
            logit_bias=req.logit_bias_ids(), min_tokens=req.min_tokens, ignore_eos=req.ignore_eos,
            skip_special_tokens=req.skip_special_tokens if skip_special_tokens is None else skip_special_tokens,
            logprobs=logprobs, constraint=constraint,
        )

    async def _start(self, req: Any, encode: Callable[[Lease], list[list[int]]], n: int,
                     caller: str | None, tools: Callable[[Lease], _Tools | None] | None = None,
                     inputs: dict[str, Any] | None = None) -> _Job:
        """Refuse unsupported fields, lease the model, encode the prompts, build the engine requests; the
        lease is released if any step fails. The caller releases it when the last choice ends."""
        self.refuse_unsupported(req)
        self._check_ids(list(req.stop_token_ids), "stop_token_ids")
        self._check_ids([i for i, _ in req.logit_bias_ids()], "logit_bias")
        constraint = constraint_of(req)
        if constraint is not None:
            self.engine.check_constraint(constraint)
        lease = await self.manager.acquire(req.model, req.user or caller)
        current_target.set((lease.name, lease.version))
        if lease.split_alias:
            self.metrics.split_served.labels(lease.name, lease.split_alias, lease.version).inc()
        try:
            plan = tools(lease) if tools is not None else None
            skip_special = None
            if plan is not None:
                skip_special = False if plan.parser.special_tokens else None
                if plan.forced:
                    if constraint is not None:
                        raise UserInputError(f"'{constraint.param}' cannot be combined with tool_choice "
                                             f"'{req.tool_choice if isinstance(req.tool_choice, str) else plan.mode}'",
                                             param=constraint.param)
                    constraint = Constraint("lark", plan.parser.grammar(
                        plan.tools, None if plan.mode == "required" else plan.mode, req.parallel_tool_calls), "tools")
                    self.engine.check_constraint(constraint)
            prompts = encode(lease)
            rid = new_id("req")
            gens, prompt_of = [], []
            logprobs = req.n_logprobs()
            if logprobs is None and n > req.n:  # best_of ranks by cumulative logprob: needed even if not shown
                logprobs = 0
            for p_i, prompt in enumerate(prompts):
                for i in range(n):
                    params = self._params(req, len(prompt), p_i * n + i, logprobs, constraint, skip_special)
                    gens.append(GenerationRequest(prompt, params, lease.key, f"{rid}-{p_i}-{i}", inputs=inputs))
                    prompt_of.append(p_i)
            return _Job(lease, prompts, gens, prompt_of, plan)
        except BaseException:
            self.manager.release(lease)
            raise

    def _record(self, endpoint: str, job: _Job, t0: float, results: list[_Result]) -> None:
        lease = job.lease
        completion = sum(r.tokens for r in results)
        self.metrics.observe(endpoint, lease.name, lease.version, 200, time.perf_counter() - t0,
                             sum(len(p) for p in job.prompts), completion)
        for g, r in zip(job.gens, results):
            queued = g.started_at - g.created_at if g.started_at is not None else None
            ttft = r.first_at - g.created_at if r.first_at is not None else None
            self.metrics.timing(lease.name, lease.version, ttft=ttft, gaps=r.gaps, queued=queued)

    # ---------------------------------------------------------------- logprobs
    def _chat_logprobs(self, lps: list[TokenLogprob]) -> ChatLogprobs:
        texts = self.engine.token_texts([lp.token_id for lp in lps] + [t for lp in lps for t, _ in lp.top])
        by_id: dict[int, str] = dict(zip([lp.token_id for lp in lps] + [t for lp in lps for t, _ in lp.top], texts))

        def entry(tid: int, logprob: float) -> TopLogprob:
            t = by_id[tid]
            return TopLogprob(token=t, logprob=logprob, bytes=list(t.encode("utf-8")))

        return ChatLogprobs(content=[
            TokenLogprobOut(**entry(lp.token_id, lp.logprob).model_dump(),
                            top_logprobs=[entry(t, v) for t, v in lp.top]) for lp in lps])

    def _completion_logprobs(self, lps: list[TokenLogprob], offset: int) -> CompletionLogprobs:
        ids = [lp.token_id for lp in lps] + [t for lp in lps for t, _ in lp.top]
        by_id = dict(zip(ids, self.engine.token_texts(ids)))
        out = CompletionLogprobs()
        for lp in lps:
            tok = by_id[lp.token_id]
            out.tokens.append(tok)
            out.token_logprobs.append(lp.logprob)
            out.top_logprobs.append({by_id[t]: v for t, v in lp.top} if lp.top else None)
            out.text_offset.append(offset)
            offset += len(tok)
        return out

    # ---------------------------------------------------------------- tokens
    async def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        self.refuse_unsupported(req)
        for i, m in enumerate(req.messages or []):
            if m.images():
                raise UserInputError("/tokenize does not take images", param=f"messages[{i}].content")
        lease = await self.manager.acquire(req.model)
        try:
            if req.messages is not None:
                tools = [t.model_dump(exclude_none=True) for t in req.tools or []] or None
                template = self._template(req.model, req.messages, bool(tools), lease)
                ids = self.engine.encode_chat(template_messages(_messages(req.messages)), template,
                                              add_generation_prompt=req.add_generation_prompt, tools=tools)
            else:
                ids = self.engine.encode(req.prompt or "", add_special_tokens=req.add_special_tokens)
        finally:
            self.manager.release(lease)
        strs = self.engine.token_texts(ids) if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=self.engine.capabilities.context_length, tokens=ids,
                                token_strs=strs)

    async def detokenize(self, req: DetokenizeRequest) -> DetokenizeResponse:
        self.refuse_unsupported(req)
        self.manager.resolve(req.model)  # an unknown model is a 404, as everywhere
        self._check_ids(req.tokens, "tokens")
        return DetokenizeResponse(prompt=self.engine.decode(req.tokens))

    # ---------------------------------------------------------------- chat
    def _template(self, model: str, messages: list[ChatMessage], offers_tools: bool, lease: Lease) -> str | None:
        """The lease's template; for a conversation with tools, one that renders them (or a clear 400)."""
        template = lease.chat_template or self.engine.default_chat_template
        uses_tools = offers_tools or any(m.tool_calls or m.role == "tool" for m in messages)
        if not uses_tools or supports_tools(template):
            return template
        if self.tool_template is not None:
            return self.tool_template
        raise UserInputError(f"the chat template of '{model}' has no tool support: use a model or adapter "
                             "trained with a tool template, or start the server with --tool-template (e.g. hermes)",
                             param="tools")

    async def _images(self, req: ChatCompletionRequest) -> list[Any]:
        """The request's images, fetched and decoded off the event loop (none: an empty list)."""
        parts = [(f"messages[{i}].content", p) for i, m in enumerate(req.messages) for p in m.images()]
        if not parts:
            return []
        if not self.engine.accepts_images:
            raise UserInputError(f"model '{req.model}' does not take images (text only)", param=parts[0][0])
        if len(parts) > self.media.max_images:
            raise UserInputError(f"{len(parts)} images in one request; this server takes at most "
                                 f"{self.media.max_images}", param=parts[0][0])
        return list(await asyncio.gather(*(asyncio.to_thread(load_image, p.image_url.url, self.media, name)
                                           for name, p in parts)))

    def encode_messages(self, req: ChatCompletionRequest, lease: Lease, images: list[Any] | None = None,
                        inputs: dict[str, Any] | None = None) -> list[int]:
        """The prompt's ids; with ``images``, their model inputs (pixel values) are put into ``inputs``."""
        template = self._template(req.model, req.messages, req.tool_mode() != "none", lease)
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []] or None
        if req.tool_mode() == "none" and not supports_tools(template):
            tools = None
        messages = template_messages(_messages(req.messages))
        if images:
            ids, extra = self.engine.encode_chat_images(messages, template, images, tools=tools)
            if inputs is not None:
                inputs.update(extra)
            return ids
        return self.engine.encode_chat(messages, template, tools=tools)

    def _tools(self, req: ChatCompletionRequest) -> Callable[[Lease], _Tools | None]:
        def plan(lease: Lease) -> _Tools | None:
            mode = req.tool_mode()
            if mode == "none":
                return None
            tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
            return _Tools(get_parser(lease.tool_parser or self.tool_parser), {t["function"]["name"] for t in tools},
                          mode, tools, req.parallel_tool_calls)
        return plan

    @staticmethod
    def _message(text: str, reason: str, plan: _Tools | None) -> tuple[ChatResponseMessage, str]:
        if plan is None:
            return ChatResponseMessage(content=text), reason
        # Cut by max_tokens: the complete calls are returned (an unfinished last one is dropped), and
        # finish_reason stays "length".
        content, calls = plan.parser.parse(text, plan.names, truncated=reason == "length")
        calls = plan.allowed(calls)
        if not calls:
            return ChatResponseMessage(content=text), reason
        return ChatResponseMessage(content=content, tool_calls=[
            ToolCall(id=new_call_id(), function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls
        ]), "tool_calls" if reason == "stop" else reason

    async def chat(self, req: ChatCompletionRequest, caller: str | None = None) -> ChatCompletionResponse:
        """``caller`` (e.g. an X-Session-Id) keeps a caller on one version of a split alias; ``user`` wins."""
        t0 = time.perf_counter()
        images = await self._images(req)
        inputs: dict[str, Any] = {}
        job = await self._start(req, lambda lease: [self.encode_messages(req, lease, images, inputs)], req.n, caller,
                                self._tools(req), inputs)
        try:
            results = await asyncio.gather(*(_collect(self.engine, g) for g in job.gens))
        finally:
            self.manager.release(job.lease)
        completion = sum(r.tokens for r in results)
        prompt_len = len(job.prompts[0])
        self._record("chat", job, t0, results)
        choices = []
        for i, r in enumerate(results):
            message, reason = self._message(r.text, r.reason, job.tools)
            choices.append(ChatChoice(index=i, message=message, finish_reason=reason,  # type: ignore[arg-type]
                                      logprobs=self._chat_logprobs(r.logprobs) if req.logprobs else None))
        return ChatCompletionResponse(id=new_id("chatcmpl"), created=now(), model=job.lease.answered_by,
                                      choices=choices, usage=Usage.of(prompt_len, completion))

    async def chat_stream(self, req: ChatCompletionRequest, caller: str | None = None
                          ) -> AsyncIterator[ChatCompletionChunk]:
        """Validate eagerly (errors before the first byte), then return the chunk iterator."""
        images = await self._images(req)
        inputs: dict[str, Any] = {}
        job = await self._start(req, lambda lease: [self.encode_messages(req, lease, images, inputs)], req.n, caller,
                                self._tools(req), inputs)
        model = job.lease.answered_by
        plan = job.tools
        splitters = [StreamSplitter(plan.parser, plan.names, plan.forced) if plan else None for _ in job.gens]
        cid, created = new_id("chatcmpl"), now()
        prompt_len = len(job.prompts[0])
        continuous = bool(req.stream_options and req.stream_options.continuous_usage_stats)

        def chunk(i: int, delta: ChatDelta, reason: Any, lps: tuple[TokenLogprob, ...] = (),
                  usage: Usage | None = None) -> ChatCompletionChunk:
            logprobs = self._chat_logprobs(list(lps)) if req.logprobs and lps else None
            return ChatCompletionChunk(id=cid, created=created, model=model, usage=usage, choices=[
                ChatChunkChoice(index=i, delta=delta, finish_reason=reason, logprobs=logprobs)])

        async def frames() -> AsyncIterator[ChatCompletionChunk]:
            t0 = time.perf_counter()
            done: dict[int, int] = {}
            results = [_Result() for _ in job.gens]
            try:
                for i in range(req.n):
                    yield chunk(i, ChatDelta(role="assistant", content=""), None)
                async for i, d in _merge(self.engine, job.gens):
                    _timed(results[i], d)
                    usage = Usage.of(prompt_len, sum(done.values()) + d.completion_tokens) if continuous else None
                    split = splitters[i]
                    text = split.feed(d.text) if split is not None else d.text
                    if text or d.logprobs:
                        yield chunk(i, ChatDelta(content=text), None, d.logprobs, usage)
                    if d.finish_reason is not None:
                        done[i] = results[i].tokens = d.completion_tokens
                        if d.finish_reason == "cancelled":
                            continue
                        reason = d.finish_reason
                        if split is not None:
                            rest, parsed = split.finish(truncated=reason == "length")
                            calls = plan.allowed(parsed) if plan is not None else parsed
                            if parsed and not calls:  # not returned as calls: the held-back text is content
                                rest = split.unsent()
                            if rest:
                                yield chunk(i, ChatDelta(content=rest), None, usage=usage)
                            if calls:
                                reason = "tool_calls" if reason == "stop" else reason
                                yield chunk(i, ChatDelta(tool_calls=[
                                    ToolCallDelta(index=k, id=new_call_id(),
                                                  function=FunctionCall(name=c.name, arguments=c.arguments))
                                    for k, c in enumerate(calls)]), None, usage=usage)
                        yield chunk(i, ChatDelta(), reason, usage=usage)
                completion = sum(done.values())
                if req.stream_options and req.stream_options.include_usage:
                    yield ChatCompletionChunk(id=cid, created=created, model=model, choices=[],
                                              usage=Usage.of(prompt_len, completion))
                self._record("chat", job, t0, results)
            finally:
                for g in job.gens:
                    g.cancel()
                self.manager.release(job.lease)

        return frames()

    # ---------------------------------------------------------------- completions
    def _encode_prompts(self, req: CompletionRequest) -> list[list[int]]:
        out = []
        for p in req.prompts():
            if isinstance(p, str):
                out.append(self.engine.encode(p))
            else:
                self._check_ids(p, "prompt")
                out.append(list(p))
        return out

    def _echo(self, req: CompletionRequest, prompt: list[int], index: int) -> str:
        if not req.echo:
            return ""
        given = req.prompts()[index]
        return given if isinstance(given, str) else self.engine.decode(prompt)

    async def complete(self, req: CompletionRequest, caller: str | None = None) -> CompletionResponse:
        t0 = time.perf_counter()
        n_gen = req.best_of or req.n
        job = await self._start(req, lambda _lease: self._encode_prompts(req), n_gen, caller)
        try:
            results = await asyncio.gather(*(_collect(self.engine, g) for g in job.gens))
        finally:
            self.manager.release(job.lease)
        choices = []
        for p_i, prompt in enumerate(job.prompts):
            mine = results[p_i * n_gen:(p_i + 1) * n_gen]
            if n_gen > req.n:  # best_of: the n with the highest cumulative logprob
                mine = sorted(mine, key=lambda r: r.cumulative_logprob, reverse=True)[: req.n]
            echo = self._echo(req, prompt, p_i)
            for i, r in enumerate(mine):
                lps = self._completion_logprobs(r.logprobs, len(echo)) if req.logprobs is not None else None
                choices.append(CompletionChoice(index=p_i * req.n + i, text=echo + r.text, finish_reason=r.reason,
                                                logprobs=lps))
        completion = sum(r.tokens for r in results)
        prompt_tokens = sum(len(p) for p in job.prompts)
        self._record("completions", job, t0, results)
        return CompletionResponse(id=new_id("cmpl"), created=now(), model=job.lease.answered_by, choices=choices,
                                  usage=Usage.of(prompt_tokens, completion))

    async def complete_stream(self, req: CompletionRequest, caller: str | None = None
                              ) -> AsyncIterator[CompletionResponse]:
        job = await self._start(req, lambda _lease: self._encode_prompts(req), req.n, caller)
        model = job.lease.answered_by
        cid, created = new_id("cmpl"), now()
        prompt_tokens = sum(len(p) for p in job.prompts)

        def frame(i: int, text: str, reason: Any, lps: CompletionLogprobs | None = None) -> CompletionResponse:
            return CompletionResponse(id=cid, created=created, model=model, choices=[
                CompletionChoice(index=i, text=text, finish_reason=reason, logprobs=lps)])

        continuous = bool(req.stream_options and req.stream_options.continuous_usage_stats)

        async def frames() -> AsyncIterator[CompletionResponse]:
            t0 = time.perf_counter()
            completion = 0
            offsets = [0] * len(job.gens)
            results = [_Result() for _ in job.gens]
            try:
                if req.echo:
                    for g_i, p_i in enumerate(job.prompt_of):
                        text = self._echo(req, job.prompts[p_i], p_i)
                        offsets[g_i] = len(text)
                        yield frame(g_i, text, None)
                async for g_i, d in _merge(self.engine, job.gens):
                    _timed(results[g_i], d)
                    if d.finish_reason is not None:
                        completion += d.completion_tokens
                        results[g_i].tokens = d.completion_tokens
                    if d.text or d.logprobs or (d.finish_reason and d.finish_reason != "cancelled"):
                        lps = (self._completion_logprobs(list(d.logprobs), offsets[g_i])
                               if req.logprobs is not None else None)
                        offsets[g_i] += len(d.text)
                        out = frame(g_i, d.text, d.finish_reason if d.finish_reason != "cancelled" else None, lps)
                        if continuous:
                            out.usage = Usage.of(prompt_tokens, sum(r.tokens for r in results))
                        yield out
                if req.stream_options and req.stream_options.include_usage:
                    yield CompletionResponse(id=cid, created=created, model=model, choices=[],
                                             usage=Usage.of(prompt_tokens, completion))
                self._record("completions", job, t0, results)
            finally:
                for g in job.gens:
                    g.cancel()
                self.manager.release(job.lease)

        return frames()


def _timed(r: _Result, d: Delta) -> None:
    """Track a choice's first-token time and per-token gaps (``r.tokens``: tokens seen so far)."""
    now = time.monotonic()
    if d.completion_tokens > r.tokens:
        if r.last_at is None:
            r.first_at = now
        else:
            r.gaps.append((now - r.last_at) / (d.completion_tokens - r.tokens))
        r.last_at, r.tokens = now, d.completion_tokens


def _messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        content: Any = m.text()
        if m.images():  # parts in order, images as the {"type": "image"} placeholders processors read
            content = [{"type": "image"} if isinstance(p, ImagePart) else {"type": "text", "text": p.text}
                       for p in m.content or [] if not isinstance(p, dict)]
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content}
        if m.name is not None:
            d["name"] = m.name
        if m.tool_calls:
            d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


async def _collect(engine: Engine, req: GenerationRequest) -> _Result:
    r = _Result()
    parts: list[str] = []
    async for d in engine.generate(req):
        _timed(r, d)
        parts.append(d.text)
        r.logprobs.extend(d.logprobs)
        if d.finish_reason is not None:
            r.reason, r.tokens = d.finish_reason, d.completion_tokens
    r.text = "".join(parts)
    return r


async def _merge(engine: Engine, gens: list[GenerationRequest]) -> AsyncIterator[tuple[int, Delta]]:
    """Interleave the streams of several choices as their deltas arrive."""
    if len(gens) == 1:
        async for d in engine.generate(gens[0]):
            yield 0, d
        return
    q: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, g: GenerationRequest) -> None:
        try:
            async for d in engine.generate(g):
                await q.put((i, d))
        except Exception as e:  # noqa: BLE001 - re-raised in the consumer
            await q.put((i, e))
        finally:
            await q.put((i, None))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    remaining = len(tasks)
    try:
        while remaining:
            i, d = await q.get()
            if d is None:
                remaining -= 1
            elif isinstance(d, BaseException):
                raise d
            else:
                yield i, d
    finally:
        for t in tasks:
            t.cancel()
