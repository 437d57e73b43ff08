"""What every endpoint's router shares: typed access to the process's :class:`ServingStack` (instead of
untyped ``request.app.state``), the documented error responses, and server-sent events.

A stream that fails after its first byte ends with an OpenAI-style error event before ``[DONE]`` (the
status line was already sent), so clients see why instead of a cut connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from adapterhub.errors import AdapterHubError
from adapterhub.serving.protocol.responses import ErrorResponse, error_body
from adapterhub.serving.stack import ServingStack

log = logging.getLogger(__name__)
T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in ((400, "Invalid request (the message names the parameter)"), (401, "Missing or wrong API key"),
                       (404, "Unknown model"), (413, "Request body too large"), (503, "Overloaded: retry later"))
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


def sse(frames: AsyncIterator[BaseModel]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for f in frames:
                yield f"data: {json.dumps(f.model_dump(mode='json'), ensure_ascii=False)}\n\n"
        except AdapterHubError as e:
            yield f"data: {json.dumps(error_body(e.message, e.error_type, e.code, e.param))}\n\n"
        except Exception as e:  # noqa: BLE001 - the status line is sent: report in-band
            log.exception("stream failed")
            yield f"data: {json.dumps(error_body(f'internal error: {type(e).__name__}', 'server_error', 'internal_error'))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
