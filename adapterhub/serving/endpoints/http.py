"""What every endpoint's router shares: typed access to the process's :class:`ServingStack` (instead of
untyped ``request.app.state``), the documented error responses, and server-sent events.

A stream that fails after its first byte ends with an OpenAI-style error event before ``[DONE]`` (the
status line was already sent), so clients see why instead of a cut connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from adapterhub.errors import AdapterHubError
from adapterhub.serving.protocol.responses import ErrorResponse, error_body
from adapterhub.serving.stack import ServingStack

log = logging.getLogger(__name__)
T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in ((400, "Invalid request (the message names the parameter)"), (401, "Missing or wrong API key"),
                       (403, "A tenant key on an admin route (--auth keys)"), (404, "Unknown model"),
                       (413, "Request body too large"),
                       (429, "A key's requests or tokens per minute are used up (--auth keys): see Retry-After"),
                       (503, "Overloaded: retry later"))
}


def stack_of(request: Request) -> ServingStack:
    """The stack the app was made on (set once by ``make_app``)."""
    stack: ServingStack = request.app.state.stack
    return stack


def service(cls: type[T]) -> Callable[[Request], T]:
    """A FastAPI dependency giving the stack's instance of an endpoint's service class."""
    def dependency(request: Request) -> T:
        return stack_of(request).endpoint(cls)
    return dependency


async def unless_disconnected(request: Request, work: Awaitable[T], endpoint: str) -> T | Response:
    """``work`` (a non-streamed answer), cancelled as soon as the client disconnects: its sequences leave
    the queue and the batch, and the request is counted as cancelled (as vLLM's ``with_cancellation``)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    stack_of(request).metrics.cancelled(endpoint, "-", "-")
    return Response(status_code=499)  # nobody reads it: the connection is gone


def sse(frames: AsyncIterator[BaseModel], *, named: bool = False) -> StreamingResponse:
    """Server-sent events. Chat and completions: ``data:`` lines ending with ``data: [DONE]``. ``named``
    (the Responses API): each event also has an ``event:`` line with its ``type``, and no ``[DONE]``."""
    def frame(data: dict[str, Any]) -> str:
        head = f"event: {data.get('type', 'error')}\n" if named else ""
        return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def error(message: str, type_: str, code: str | None, param: str | None) -> str:
        if named:
            # OpenAI's event has the fields at the top, Open Responses' under "error": both are given.
            detail = {"type": type_, "code": code or type_, "message": message, "param": param}
            return frame({"type": "error", "sequence_number": 0, "code": code or type_, "message": message,
                          "param": param, "error": detail})
        return frame(error_body(message, type_, code, param))

    async def body() -> AsyncIterator[str]:
        try:
            async for f in frames:
                yield frame(f.model_dump(mode="json"))
        except AdapterHubError as e:
            yield error(e.message, e.error_type, e.code, e.param)
        except Exception as e:  # noqa: BLE001 - the status line is sent: report in-band
            log.exception("stream failed")
            yield error(f"internal error: {type(e).__name__}", "server_error", "internal_error", None)
        if not named:
            yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
