"""``/v1/responses``: the Responses API on the chat service.

A request becomes a chat conversation (``instructions`` as the system message, the stored conversation of
``previous_response_id``, then the input items: messages, images, function calls and their outputs), runs
through :class:`ChatService` (the same adapters, template, sampling, structured output and tool grammar as
``/v1/chat/completions``), and its answer becomes output items: a ``message`` with ``output_text`` and
``function_call`` items. Streamed, the chat chunks become the typed Responses events, numbered in order.

Stored responses (``store``, the default) go to the registry's database (SQLite, or PostgreSQL shared by
every replica) for ``retention`` seconds: the response, its input items, the conversation so far and the
version that answered, so ``previous_response_id`` continues on that version (a model named by alias is
pinned to the version the alias pointed to when the conversation started).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from adapterhub.errors import AdapterHubError, NotFoundError, UserInputError
from adapterhub.serving.endpoints.chat.protocol import ChatCompletionRequest, ChatCompletionResponse
from adapterhub.serving.endpoints.chat.serving import ChatService
from adapterhub.serving.endpoints.generation import refuse_unsupported
from adapterhub.serving.endpoints.responses.protocol import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    DeletedResponse,
    Event,
    FunctionCallItem,
    FunctionCallOutput,
    FunctionCallOutputItem,
    IncompleteDetails,
    InputImage,
    InputItemList,
    ItemEvent,
    MessageItem,
    OutputMessage,
    OutputText,
    PartEvent,
    ResponseError,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextDeltaEvent,
    TextDoneEvent,
)
from adapterhub.serving.protocol.responses import Usage, now
from adapterhub.serving.tenants import current_caller

# Chat-side parameter names as the Responses API calls them (in errors raised by the chat service).
_PARAMS = (("response_format", "text.format"), ("max_tokens", "max_output_tokens"), ("messages", "input"))


def _renamed(e: AdapterHubError) -> AdapterHubError:
    for chat_name, name in _PARAMS:
        if e.param and e.param.startswith(chat_name):
            e.param = name + e.param[len(chat_name):] if chat_name != "messages" else name
    return e


def _owner() -> str | None:
    """The key that stores a response (--auth keys); only that key reads, continues or deletes it."""
    caller = current_caller.get()
    return caller.key.name if caller is not None and caller.key is not None else None


def _id(prefix: str) -> str:
    import uuid

    return f"{prefix}_{uuid.uuid4().hex}"


class MemoryResponses:
    """Where responses are kept when the server has no registry: this process only, same retention."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def put_response(self, rid: str, record: dict[str, Any], expires_at: float) -> None:
        with self._lock:
            t = time.time()
            self._items = {k: v for k, v in self._items.items() if v[0] >= t}
            self._items[rid] = (expires_at, record)

    def get_response(self, rid: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._items.get(rid)
        return found[1] if found and found[0] >= time.time() else None

    def delete_response(self, rid: str) -> bool:
        with self._lock:
            found = self._items.pop(rid, None)
        return found is not None and found[0] >= time.time()


class ResponsesService:
    def __init__(self, stack: Any) -> None:
        self.chat: ChatService = stack.endpoint(ChatService)
        self.store: Any = stack.registry.store if stack.registry is not None else MemoryResponses()
        self.retention_s = stack.config.responses_retention_days * 86400

    # ---------------------------------------------------------------- storage (off the event loop)
    async def _load(self, rid: str, param: str | None = None) -> dict[str, Any]:
        record = await asyncio.to_thread(self.store.get_response, rid)
        if record is None or record.get("owner") != _owner():  # another tenant's: as if it did not exist
            raise NotFoundError(f"no stored response '{rid}' (never stored, deleted, or past its retention)",
                                param=param)
        return record  # type: ignore[no-any-return]

    async def _save(self, rid: str, record: dict[str, Any]) -> None:
        await asyncio.to_thread(self.store.put_response, rid, record, time.time() + self.retention_s)

    async def get(self, rid: str) -> dict[str, Any]:
        return (await self._load(rid))["response"]  # type: ignore[no-any-return]

    async def delete(self, rid: str) -> DeletedResponse:
        await self._load(rid)  # exists and is the caller's
        if not await asyncio.to_thread(self.store.delete_response, rid):
            raise NotFoundError(f"no stored response '{rid}'")
        return DeletedResponse(id=rid)

    async def input_items(self, rid: str, *, limit: int = 20, order: str = "desc", after: str | None = None
                          ) -> InputItemList:
        items = list((await self._load(rid))["input_items"])
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [i.get("id") for i in items]
            if after not in ids:
                raise UserInputError(f"'after' names no input item of this response: {after}", param="after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return InputItemList(data=page, first_id=page[0]["id"] if page else None,
                             last_id=page[-1]["id"] if page else None, has_more=len(items) > limit)

    # ---------------------------------------------------------------- request → chat
    @staticmethod
    def _messages(items: list[Any]) -> list[dict[str, Any]]:
        """Input items as chat messages: consecutive function calls join one assistant turn."""
        out: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            if isinstance(item, MessageItem):
                if isinstance(item.content, str):
                    out.append({"role": item.role, "content": item.content})
                    continue
                parts: list[dict[str, Any]] = []
                for k, p in enumerate(item.content):
                    if isinstance(p, InputImage):
                        if item.role != "user":
                            raise UserInputError("images can only be in user messages",
                                                 param=f"input[{i}].content[{k}]")
                        parts.append({"type": "image_url", "image_url": {"url": p.image_url}})
                    else:
                        parts.append({"type": "text", "text": p.text})
                if all(p["type"] == "text" for p in parts):
                    out.append({"role": item.role, "content": "".join(p["text"] for p in parts)})
                else:
                    out.append({"role": item.role, "content": parts})
            elif isinstance(item, FunctionCallItem):
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                last = out[-1] if out else None
                if last is not None and last["role"] == "assistant":
                    last.setdefault("tool_calls", []).append(call)
                else:
                    out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif isinstance(item, FunctionCallOutputItem):
                out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
        return out

    def _chat_request(self, req: ResponsesRequest, model: str, history: list[dict[str, Any]]
                      ) -> tuple[ChatCompletionRequest, list[dict[str, Any]]]:
        convo = history + self._messages(req.items())
        messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + convo
        body: dict[str, Any] = {"model": model, "messages": messages, "parallel_tool_calls": req.parallel_tool_calls,
                                "stream": req.stream}
        if req.stream:
            body["stream_options"] = {"include_usage": True}
        if req.max_output_tokens is not None:
            body["max_tokens"] = req.max_output_tokens
        if req.temperature is not None:
            body["temperature"] = req.temperature
        if req.top_p is not None:
            body["top_p"] = req.top_p
        if req.user is not None:
            body["user"] = req.user
        if req.tools:
            body["tools"] = [{"type": "function", "function": {k: v for k, v in t.model_dump().items()
                                                               if k != "type" and v is not None}}
                             for t in req.function_tools()]
        if req.tool_choice is not None:
            c = req.tool_choice
            body["tool_choice"] = c if isinstance(c, str) else {"type": "function", "function": {"name": c.name}}
        fmt = req.text.format if req.text else None
        # text.format shapes text output; a forced call (tool_choice required or a function) writes none, so
        # only the tool grammar applies (chat completions refuses the pair: there it is one output).
        if fmt is not None and fmt.type != "text" and not req.forces_a_call():
            body["response_format"] = {"type": fmt.type} if fmt.type == "json_object" else {
                "type": "json_schema", "json_schema": {k: v for k, v in {
                    "name": fmt.name or "response", "description": fmt.description, "schema": fmt.schema_,
                    "strict": fmt.strict}.items() if v is not None}}
        try:
            return ChatCompletionRequest.model_validate(body), convo
        except ValidationError as e:
            err = e.errors()[0]
            raise UserInputError(f"input: {err['msg']}", param="input") from None

    async def _prepare(self, req: ResponsesRequest, caller: str | None) -> tuple[Any, ChatCompletionRequest,
                                                                                     dict[str, Any]]:
        """The chat job (model leased, prompt encoded) and what is stored with the response."""
        refuse_unsupported(req)
        history: list[dict[str, Any]] = []
        model = req.model
        if req.previous_response_id is not None:
            prev = await self._load(req.previous_response_id, param="previous_response_id")
            history = list(prev["messages"])
            pinned = prev.get("pinned")
            if pinned and pinned.split("@")[0] == req.model.split("@")[0]:
                model = pinned  # the conversation stays on the version it started on
        chat_req, convo = self._chat_request(req, model, history)
        try:
            job = await self.chat.prepare(chat_req, caller)
            job.endpoint = "responses"  # counted as a Responses request, not a chat one
        except AdapterHubError as e:
            raise _renamed(e) from None
        items = [self._with_id(item.model_dump(exclude_none=True, by_alias=True)) for item in req.items()]
        context = {"convo": convo, "input_items": items, "pinned": job.lease.ref or model}
        return job, chat_req, context

    @staticmethod
    def _with_id(item: dict[str, Any]) -> dict[str, Any]:
        """An input item as ``input_items`` lists it: with an id, a message's text as a content part."""
        if item["type"] == "message" and isinstance(item["content"], str):
            kind = "output_text" if item["role"] == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        if not item.get("id"):
            prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}[item["type"]]
            item["id"] = _id(prefix)
        return item

    def _shell(self, req: ResponsesRequest, rid: str, model: str, created: int) -> ResponseObject:
        c = req.tool_choice
        fmt: dict[str, Any] = {"type": "text"}
        f = req.text.format if req.text else None
        if f is not None and f.type == "json_schema":  # every field of the spec's JsonSchemaResponseFormat
            fmt = {"type": "json_schema", "name": f.name or "response", "description": f.description,
                   "schema": f.schema_, "strict": bool(f.strict)}
        elif f is not None:
            fmt = {"type": f.type}
        return ResponseObject(
            id=rid, created_at=created, status="in_progress", instructions=req.instructions,
            max_output_tokens=req.max_output_tokens, model=model, parallel_tool_calls=req.parallel_tool_calls,
            previous_response_id=req.previous_response_id,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            tool_choice=(c if isinstance(c, str) else c.model_dump()) if c is not None else "auto",
            tools=[t.model_dump(exclude_none=True) for t in req.function_tools()], text={"format": fmt},
            metadata=req.metadata or {}, store=req.store, user=req.user, safety_identifier=req.safety_identifier,
            prompt_cache_key=req.prompt_cache_key)

    @staticmethod
    def _finish(resp: ResponseObject, reason: str, usage: Usage | None) -> ResponseObject:
        resp.status = "incomplete" if reason == "length" else "completed"
        resp.incomplete_details = IncompleteDetails(reason="max_output_tokens") if reason == "length" else None
        resp.completed_at = now()
        if usage is not None:
            resp.usage = ResponseUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                                       total_tokens=usage.total_tokens)
        return resp

    async def _store(self, req: ResponsesRequest, resp: ResponseObject, context: dict[str, Any]) -> None:
        if not req.store:
            return
        answer: dict[str, Any] = {"role": "assistant", "content": None}
        for item in resp.output:
            if isinstance(item, OutputMessage):
                answer["content"] = "".join(p.text for p in item.content)
            else:
                answer.setdefault("tool_calls", []).append({"id": item.call_id, "type": "function", "function": {
                    "name": item.name, "arguments": item.arguments}})
        await self._save(resp.id, {"response": resp.model_dump(mode="json"), "input_items": context["input_items"],
                                   "messages": context["convo"] + [answer], "pinned": context["pinned"],
                                   "owner": _owner()})

    # ---------------------------------------------------------------- whole responses
    async def create(self, req: ResponsesRequest, caller: str | None = None) -> ResponseObject:
        job, chat_req, context = await self._prepare(req, caller)
        try:
            answer: ChatCompletionResponse = await self.chat.create(chat_req, caller, job)
        except AdapterHubError as e:
            raise _renamed(e) from None
        choice = answer.choices[0]
        resp = self._shell(req, _id("resp"), answer.model, now())
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        if choice.message.content:
            resp.output.append(OutputMessage(id=_id("msg"), status=status,
                                             content=[OutputText(text=choice.message.content)]))
        for call in choice.message.tool_calls or []:
            resp.output.append(FunctionCallOutput(id=_id("fc"), call_id=call.id, name=call.function.name,
                                                  arguments=call.function.arguments, status="completed"))
        self._finish(resp, choice.finish_reason or "stop", answer.usage)
        await self._store(req, resp, context)
        return resp

    # ---------------------------------------------------------------- streamed responses
    async def stream(self, req: ResponsesRequest, caller: str | None = None) -> AsyncIterator[Event]:
        """Validate and lease eagerly (errors before the first byte), then return the event iterator."""
        job, chat_req, context = await self._prepare(req, caller)
        chunks = await self.chat.stream(chat_req, caller, job)
        resp = self._shell(req, _id("resp"), job.lease.answered_by, now())
        return self._events(req, resp, chunks, context)

    async def _events(self, req: ResponsesRequest, resp: ResponseObject, chunks: AsyncIterator[Any],
                      context: dict[str, Any]) -> AsyncIterator[Event]:
        seq = 0

        def numbered(e: Event) -> Event:
            nonlocal seq
            e.sequence_number, seq = seq, seq + 1
            return e

        def snapshot() -> ResponseObject:
            return resp.model_copy(deep=True)

        try:
            async for event in self._translate(resp, chunks, context, req, numbered, snapshot):
                yield event
        finally:  # however it ends (the client may have gone): the chat stream ends too, cancelling its work
            await chunks.aclose()  # type: ignore[attr-defined]

    async def _translate(self, resp: ResponseObject, chunks: AsyncIterator[Any], context: dict[str, Any],
                         req: ResponsesRequest, numbered: Any, snapshot: Any) -> AsyncIterator[Event]:
        message: OutputMessage | None = None
        text: list[str] = []
        reason, usage = "stop", None

        def close_message(status: str) -> list[Event]:
            nonlocal message
            if message is None:
                return []
            full = "".join(text)
            idx = resp.output.index(message)
            message.status = status  # type: ignore[assignment]
            message.content = [OutputText(text=full)]
            out: list[Event] = [
                TextDoneEvent(item_id=message.id, output_index=idx, content_index=0, text=full),
                PartEvent(type="response.content_part.done", item_id=message.id, output_index=idx, content_index=0,
                          part=OutputText(text=full)),
                ItemEvent(type="response.output_item.done", output_index=idx, item=message.model_copy(deep=True))]
            message = None
            return out

        yield numbered(ResponseEvent(type="response.created", response=snapshot()))
        yield numbered(ResponseEvent(type="response.in_progress", response=snapshot()))
        try:
            async for chunk in chunks:
                if chunk.usage is not None and not chunk.choices:
                    usage = chunk.usage
                for ch in chunk.choices:
                    delta = ch.delta
                    if delta.content:
                        if message is None:
                            message = OutputMessage(id=_id("msg"), status="in_progress", content=[])
                            resp.output.append(message)
                            idx = len(resp.output) - 1
                            yield numbered(ItemEvent(type="response.output_item.added", output_index=idx,
                                                     item=message.model_copy(deep=True)))
                            yield numbered(PartEvent(type="response.content_part.added", item_id=message.id,
                                                     output_index=idx, content_index=0, part=OutputText(text="")))
                        text.append(delta.content)
                        yield numbered(TextDeltaEvent(item_id=message.id, output_index=resp.output.index(message),
                                                      content_index=0, delta=delta.content))
                    for call in delta.tool_calls or []:
                        for e in close_message("completed"):
                            yield numbered(e)
                        item = FunctionCallOutput(id=_id("fc"), call_id=call.id, name=call.function.name,
                                                  arguments="", status="in_progress")
                        resp.output.append(item)
                        idx = len(resp.output) - 1
                        yield numbered(ItemEvent(type="response.output_item.added", output_index=idx,
                                                 item=item.model_copy(deep=True)))
                        yield numbered(ArgumentsDeltaEvent(item_id=item.id, output_index=idx,
                                                           delta=call.function.arguments))
                        item.arguments, item.status = call.function.arguments, "completed"
                        yield numbered(ArgumentsDoneEvent(item_id=item.id, output_index=idx, name=item.name,
                                                          arguments=item.arguments))
                        yield numbered(ItemEvent(type="response.output_item.done", output_index=idx,
                                                 item=item.model_copy(deep=True)))
                    if ch.finish_reason is not None:
                        reason = ch.finish_reason
        except AdapterHubError as e:
            resp.status = "failed"
            resp.error = ResponseError(code=e.code or e.error_type, message=e.message)
            yield numbered(ResponseEvent(type="response.failed", response=snapshot()))
            return
        for e in close_message("incomplete" if reason == "length" else "completed"):
            yield numbered(e)
        self._finish(resp, reason, usage)
        await self._store(req, resp, context)
        kind = "response.incomplete" if resp.status == "incomplete" else "response.completed"
        yield numbered(ResponseEvent(type=kind, response=snapshot()))

