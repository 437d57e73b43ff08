"""What every generating endpoint shares: a request fanned out into engine requests on a leased model.

:class:`GeneratingService` refuses what it cannot honour (every unsupported parameter named), checks
what can be checked before the engine (empty prompts, token ids outside the vocabulary, the context
window), so one bad request never reaches a batch shared with others. It resolves ``model`` to a lease
(base or adapter version), fans ``n`` (× prompts) choices out as engine requests (batched together by
the engine), records metrics, and releases the lease when the last choice ends — also when the client
goes away (:meth:`GeneratingService.streaming`). No FastAPI here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from adapterhub.errors import ContextLengthError, UserInputError
from adapterhub.serving.adapters import Lease
from adapterhub.serving.engines.base import Delta, Engine, GenerationRequest, SamplingParams, TokenLogprob
from adapterhub.serving.metrics import current_target
from adapterhub.serving.protocol.requests import ChatMessage, ImagePart, SamplingRequest
from adapterhub.serving.protocol.responses import new_id
from adapterhub.serving.stack import ServingStack
from adapterhub.serving.structured import Constraint
from adapterhub.serving.structured import from_request as constraint_of
from adapterhub.serving.tenants import Charge, current_caller
from adapterhub.tools import supports_tools


class UnsupportedParameterError(UserInputError):
    code = "unsupported_parameter"


def refuse_unsupported(req: Any) -> None:
    """A 400 naming the first field ``req`` carries that this server cannot honour (and the others)."""
    problems = req.unsupported()
    if problems:
        name, reason = problems[0]
        more = f" (also: {', '.join(n for n, _ in problems[1:])})" if len(problems) > 1 else ""
        raise UnsupportedParameterError(f"'{name}' is not supported: {reason}{more}", param=name)


@dataclass
class Result:
    """One choice as it was generated: text, finish reason, tokens, logprobs and its timing."""

    text: str = ""
    reason: str = "stop"
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    first_at: float | None = None  # monotonic time of the first generated token
    last_at: float | None = None
    gaps: list[float] = field(default_factory=list)  # seconds per token between later deltas
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # when the prompt was scored

    @property
    def cumulative_logprob(self) -> float:
        return sum(lp.logprob for lp in self.logprobs)


@dataclass
class Job:
    """One request fanned out: its lease, prompts (ids) and the engine requests, choice by choice."""

    lease: Lease
    prompts: list[list[int]]
    gens: list[GenerationRequest]
    prompt_of: list[int]  # gens[i] answers prompts[prompt_of[i]]
    plan: Any = None  # what the endpoint decided before encoding (chat: its tool plan)
    charge: Charge | None = None  # what it counts against the caller's key (--auth keys)
    endpoint: str | None = None  # the metrics label when another endpoint runs it (responses → chat)
    arrived: float = 0.0  # time.monotonic() when the request started: TTFT counts from here

    @property
    def model(self) -> str:
        """The version it ran on (``name@N``) or the base, for usage by key."""
        return self.lease.ref if self.lease.key is not None and self.lease.ref else self.lease.name


class GeneratingService:
    """The base of the chat and completions services (and any endpoint that generates)."""

    endpoint = "generate"  # the metrics label

    def __init__(self, stack: ServingStack) -> None:
        self.stack = stack
        self.engine = stack.engine
        self.manager = stack.manager
        self.metrics = stack.metrics
        self.default_max_tokens = stack.config.default_max_tokens
        self.keys = stack.keys

    def check_ids(self, ids: list[int], param: str) -> None:
        vocab = self.engine.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise UserInputError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param=param)

    def chat_template(self, model: str, messages: list[ChatMessage], offers_tools: bool, lease: Lease) -> str | None:
        """The lease's template; for a conversation with tools, one that renders them (or a clear 400)."""
        template = lease.chat_template or self.engine.default_chat_template
        uses_tools = offers_tools or any(m.tool_calls or m.role == "tool" for m in messages)
        if not uses_tools or supports_tools(template):
            return template
        if self.stack.tool_template is not None:
            return self.stack.tool_template
        raise UserInputError(f"the chat template of '{model}' has no tool support: use a model or adapter "
                             "trained with a tool template, or start the server with --tool-template (e.g. hermes)",
                             param="tools")

    def params(self, req: SamplingRequest, prompt_len: int, seed_offset: int, logprobs: int | None,
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
            logprobs=logprobs, constraint=constraint, prompt_logprobs=self.prompt_logprobs(req),
        )

    def prompt_logprobs(self, req: Any) -> int | None:
        """How many alternatives to report for each prompt token (None: the prompt is not scored)."""
        return None

    def constrain(self, req: Any, plan: Any, constraint: Constraint | None) -> tuple[Constraint | None, bool | None]:
        """The constraint the engine applies and whether to keep special tokens; the chat endpoint turns a
        forced tool call into a grammar here. Default: the request's own constraint."""
        return constraint, None

    async def start(self, req: Any, encode: Callable[[Lease], list[list[int]]], n: int, caller: str | None,
                    plan: Callable[[Lease], Any] | None = None, inputs: dict[str, Any] | None = None) -> Job:
        """Refuse unsupported fields, lease the model, encode the prompts, build the engine requests; the
        lease is released if any step fails. The caller releases it when the last choice ends."""
        arrived = time.monotonic()  # waiting for the adapter (a slot, its load) is part of the user's wait
        refuse_unsupported(req)
        self.check_ids(list(req.stop_token_ids), "stop_token_ids")
        self.check_ids([i for i, _ in req.logit_bias_ids()], "logit_bias")
        requested = constraint_of(req)
        if requested is not None:  # compiling a grammar can take a second: never on the event loop
            await asyncio.to_thread(self.engine.check_constraint, requested)
        if self.keys is not None:  # a key whose requests per minute are used up: refused before any work
            self.keys.precheck(current_caller.get())
        lease = await self.manager.acquire(req.model, req.user or caller)
        current_target.set((lease.name, lease.version))
        if lease.split_alias:
            self.metrics.split_served.labels(lease.name, lease.split_alias, lease.version).inc()
        try:
            decided = plan(lease) if plan is not None else None
            constraint, skip_special = self.constrain(req, decided, requested)
            if constraint is not None and constraint is not requested:  # e.g. a forced tool call's grammar
                await asyncio.to_thread(self.engine.check_constraint, constraint)
            prompts = await asyncio.to_thread(encode, lease)  # a 15 MB prompt takes seconds to tokenize
            rid = new_id("req")
            gens, prompt_of = [], []
            logprobs = req.n_logprobs()
            if logprobs is None and n > req.n:  # best_of ranks by cumulative logprob: needed even if not shown
                logprobs = 0
            for p_i, prompt in enumerate(prompts):
                for i in range(n):
                    params = self.params(req, len(prompt), p_i * n + i, logprobs, constraint, skip_special)
                    gens.append(GenerationRequest(prompt, params, lease.key, f"{rid}-{p_i}-{i}", inputs=inputs))
                    prompt_of.append(p_i)
            self.admit(len(gens), sum(len(g.prompt_ids) for g in gens))
            charge = None
            if self.keys is not None:  # reserves prompt + completion budget against the key's limits
                charge = self.keys.admit(current_caller.get(),
                                         sum(len(g.prompt_ids) + g.params.max_tokens for g in gens))
            return Job(lease, prompts, gens, prompt_of, decided, charge, arrived=arrived)
        except BaseException:
            self.manager.release(lease)
            raise

    def admit(self, sequences: int, tokens: int) -> None:
        """Decided before anything is queued: a request that alone needs more sequences or prompt tokens than
        the engine queues is a 400 naming the limit; one that does not fit in what is free now is a 503."""
        if self.engine.line is not None:
            self.engine.line.check(sequences, tokens)

    async def finish(self, job: Job, t0: float) -> list[Result]:
        """Every choice of a non-streamed request, collected; the lease released and the request recorded.
        If one choice fails or the request is cancelled (its client went away), every other choice is
        cancelled at once: nothing keeps running for an answer nobody will read."""
        tasks = [asyncio.ensure_future(collect(self.engine, g)) for g in job.gens]
        try:
            results = list(await asyncio.gather(*tasks))
        except BaseException:
            for g in job.gens:
                g.cancel()
            for t in tasks:
                t.cancel()
            self.settle(job, [], "cancelled")  # its prompt was read: charged, with no completion
            raise
        finally:
            self.manager.release(job.lease)
        self.record(job, t0, results)
        return results

    @asynccontextmanager
    async def streaming(self, job: Job) -> AsyncIterator[list[Result]]:
        """Around a stream's frames: per-choice results to fill; recorded when the stream ends, and the
        choices cancelled and the lease released however it ends (a client that goes away included)."""
        t0 = time.perf_counter()
        results = [Result() for _ in job.gens]
        try:
            yield results
            self.record(job, t0, results)
        except (asyncio.CancelledError, GeneratorExit):  # the client went away mid-stream
            self.metrics.cancelled(job.endpoint or self.endpoint, job.lease.name, job.lease.version)
            self.settle(job, results, "cancelled")  # charged what was generated before it left
            raise
        finally:
            for g in job.gens:
                g.cancel()
            self.manager.release(job.lease)
            self.settle(job, results, "error")  # no-op when recorded or cancelled above

    def settle(self, job: Job, results: list[Result], status: str = "200") -> None:
        """Charge the caller's key what the request used (its prompts and the tokens generated)."""
        if self.keys is not None:
            self.keys.settle(job.charge, job.model, sum(len(p) for p in job.prompts),
                             sum(r.tokens for r in results), status)

    def record(self, job: Job, t0: float, results: list[Result]) -> None:
        lease = job.lease
        self.settle(job, results)
        completion = sum(r.tokens for r in results)
        self.metrics.observe(job.endpoint or self.endpoint, lease.name, lease.version, 200, time.perf_counter() - t0,
                             sum(len(p) for p in job.prompts), completion)
        for g, r in zip(job.gens, results):
            queued = g.started_at - g.created_at if g.started_at is not None else None  # waiting for the batch
            ttft = r.first_at - (job.arrived or g.created_at) if r.first_at is not None else None
            self.metrics.timing(lease.name, lease.version, ttft=ttft, gaps=r.gaps, queued=queued)


def timed(r: Result, d: Delta) -> None:
    """Track a choice's first-token time and per-token gaps (``r.tokens``: tokens seen so far)."""
    now = time.monotonic()
    if d.completion_tokens > r.tokens:
        if r.last_at is None:
            r.first_at = now
        else:
            r.gaps.append((now - r.last_at) / (d.completion_tokens - r.tokens))
        r.last_at, r.tokens = now, d.completion_tokens


def template_messages_of(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Protocol messages as the dicts a chat template renders (images as ``{"type": "image"}`` parts)."""
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


async def collect(engine: Engine, req: GenerationRequest) -> Result:
    r = Result()
    parts: list[str] = []
    async for d in engine.generate(req):
        timed(r, d)
        if d.prompt_logprobs is not None:
            r.prompt_logprobs = d.prompt_logprobs
        parts.append(d.text)
        r.logprobs.extend(d.logprobs)
        if d.finish_reason is not None:
            r.reason, r.tokens = d.finish_reason, d.completion_tokens
    r.text = "".join(parts)
    return r


async def merge(engine: Engine, gens: list[GenerationRequest]) -> AsyncIterator[tuple[int, Delta]]:
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
