"""``/v1/chat/completions``: messages rendered with the leased version's chat template (images fetched and
encoded off the event loop), tools planned per the model's tool-call format, answers parsed back into
tool calls; whole responses or streamed chunks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from adapterhub.errors import UserInputError
from adapterhub.serving.adapters import Lease
from adapterhub.serving.endpoints.chat.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatResponseMessage,
    FunctionCall,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
)
from adapterhub.serving.endpoints.generation import GeneratingService, Job, merge, template_messages_of, timed
from adapterhub.serving.engines.base import TokenLogprob as EngineLogprob
from adapterhub.serving.media import load_image
from adapterhub.serving.protocol.responses import Usage, new_id, now
from adapterhub.serving.structured import Constraint
from adapterhub.tools import (
    StreamSplitter,
    ToolParser,
    get_parser,
    new_call_id,
    supports_tools,
    template_messages,
)


@dataclass
class ToolPlan:
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


class ChatService(GeneratingService):
    endpoint = "chat"

    def __init__(self, stack: Any) -> None:
        super().__init__(stack)
        self.tool_parser = stack.config.tool_parser
        self.media = stack.media

    # ---------------------------------------------------------------- before the engine
    async def images(self, req: ChatCompletionRequest) -> list[Any]:
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
        template = self.chat_template(req.model, req.messages, req.tool_mode() != "none", lease)
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []] or None
        if req.tool_mode() == "none" and not supports_tools(template):
            tools = None
        messages = template_messages(template_messages_of(req.messages))
        if images:
            ids, extra = self.engine.encode_chat_images(messages, template, images, tools=tools)
            if inputs is not None:
                inputs.update(extra)
            return ids
        return self.engine.encode_chat(messages, template, tools=tools)

    def tool_plan(self, req: ChatCompletionRequest) -> Callable[[Lease], ToolPlan | None]:
        def plan(lease: Lease) -> ToolPlan | None:
            mode = req.tool_mode()
            if mode == "none":
                return None
            tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
            return ToolPlan(get_parser(lease.tool_parser or self.tool_parser), {t["function"]["name"] for t in tools},
                            mode, tools, req.parallel_tool_calls)
        return plan

    def constrain(self, req: Any, plan: ToolPlan | None, constraint: Constraint | None
                  ) -> tuple[Constraint | None, bool | None]:
        """A forced tool call (``required`` or a named function) is generated under the format's grammar."""
        if plan is None:
            return constraint, None
        skip_special = False if plan.parser.special_tokens else None
        if plan.forced:
            if constraint is not None:
                raise UserInputError(f"'{constraint.param}' cannot be combined with tool_choice "
                                     f"'{req.tool_choice if isinstance(req.tool_choice, str) else plan.mode}'",
                                     param=constraint.param)
            constraint = Constraint("lark", plan.parser.grammar(
                plan.tools, None if plan.mode == "required" else plan.mode, req.parallel_tool_calls), "tools")
        return constraint, skip_special

    async def prepare(self, req: ChatCompletionRequest, caller: str | None) -> Job:
        """Validate, lease the model and encode: the job :meth:`create` or :meth:`stream` then runs (the
        lease is released when it ends)."""
        images = await self.images(req)
        inputs: dict[str, Any] = {}
        return await self.start(req, lambda lease: [self.encode_messages(req, lease, images, inputs)], req.n, caller,
                                self.tool_plan(req), inputs)

    # ---------------------------------------------------------------- answers
    def logprobs(self, lps: list[EngineLogprob]) -> ChatLogprobs:
        ids = [lp.token_id for lp in lps] + [t for lp in lps for t, _ in lp.top]
        by_id: dict[int, str] = dict(zip(ids, self.engine.token_texts(ids)))

        def entry(tid: int, logprob: float) -> TopLogprob:
            t = by_id[tid]
            return TopLogprob(token=t, logprob=logprob, bytes=list(t.encode("utf-8")))

        return ChatLogprobs(content=[
            TokenLogprob(**entry(lp.token_id, lp.logprob).model_dump(),
                         top_logprobs=[entry(t, v) for t, v in lp.top]) for lp in lps])

    @staticmethod
    def message(text: str, reason: str, plan: ToolPlan | None) -> tuple[ChatResponseMessage, str]:
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

    async def create(self, req: ChatCompletionRequest, caller: str | None = None,
                     job: Job | None = None) -> ChatCompletionResponse:
        """``caller`` (e.g. an X-Session-Id) keeps a caller on one version of a split alias; ``user`` wins.
        ``job``: already prepared (:meth:`prepare`)."""
        t0 = time.perf_counter()
        job = job or await self.prepare(req, caller)
        results = await self.finish(job, t0)
        choices = []
        for i, r in enumerate(results):
            message, reason = self.message(r.text, r.reason, job.plan)
            choices.append(ChatChoice(index=i, message=message, finish_reason=reason,  # type: ignore[arg-type]
                                      logprobs=self.logprobs(r.logprobs) if req.logprobs else None))
        return ChatCompletionResponse(id=new_id("chatcmpl"), created=now(), model=job.lease.answered_by,
                                      choices=choices,
                                      usage=Usage.of(len(job.prompts[0]), sum(r.tokens for r in results)))

    async def stream(self, req: ChatCompletionRequest, caller: str | None = None, job: Job | None = None
                     ) -> AsyncIterator[ChatCompletionChunk]:
        """Validate eagerly (errors before the first byte), then return the chunk iterator."""
        job = job or await self.prepare(req, caller)
        model, plan = job.lease.answered_by, job.plan
        splitters = [StreamSplitter(plan.parser, plan.names, plan.forced) if plan else None for _ in job.gens]
        cid, created = new_id("chatcmpl"), now()
        prompt_len = len(job.prompts[0])
        continuous = bool(req.stream_options and req.stream_options.continuous_usage_stats)

        def chunk(i: int, delta: ChatDelta, reason: Any, lps: tuple[EngineLogprob, ...] = (),
                  usage: Usage | None = None) -> ChatCompletionChunk:
            logprobs = self.logprobs(list(lps)) if req.logprobs and lps else None
            return ChatCompletionChunk(id=cid, created=created, model=model, usage=usage, choices=[
                ChatChunkChoice(index=i, delta=delta, finish_reason=reason, logprobs=logprobs)])

        async def frames() -> AsyncIterator[ChatCompletionChunk]:
            done: dict[int, int] = {}
            async with self.streaming(job) as results:
                for i in range(req.n):
                    yield chunk(i, ChatDelta(role="assistant", content=""), None)
                async for i, d in merge(self.engine, job.gens):
                    timed(results[i], d)
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
                if req.stream_options and req.stream_options.include_usage:
                    yield ChatCompletionChunk(id=cid, created=created, model=model, choices=[],
                                              usage=Usage.of(prompt_len, sum(done.values())))

        return frames()
