"""``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``: parse, call the service, send.

A stream that fails after its first byte ends with an OpenAI-style error event before ``[DONE]``
(the status line was already sent), so clients see why instead of a cut connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from adapterhub.errors import AdapterHubError, ModelNotFoundError
from adapterhub.serving.auth import require_api_key
from adapterhub.serving.middleware import stream_of
from adapterhub.serving.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    error_body,
)

log = logging.getLogger(__name__)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in ((400, "Invalid request (the message names the parameter)"), (401, "Missing or wrong API key"),
                       (404, "Unknown model"), (413, "Request body too large"), (503, "Overloaded: retry later"))
}
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)


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


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=stream_of(ChatCompletionChunk))
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
    service, caller = request.app.state.service, request.headers.get("x-session-id")
    if req.stream:
        return sse(await service.chat_stream(req, caller))
    return await service.chat(req, caller)


@router.post("/completions", response_model=CompletionResponse, responses=stream_of(CompletionResponse))
async def completions(req: CompletionRequest, request: Request) -> Any:
    service, caller = request.app.state.service, request.headers.get("x-session-id")
    if req.stream:
        return sse(await service.complete_stream(req, caller))
    return await service.complete(req, caller)


@router.get("/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    return ModelList(data=request.app.state.catalog())


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def model(model_id: str, request: Request) -> ModelCard:
    cards = request.app.state.catalog()
    for m in cards:
        if m.id == model_id:
            return m
    manager = request.app.state.manager
    if model_id in manager.base_names:  # "base" and other names of the base model
        return cards[0].model_copy(update={"id": model_id})
    manager.resolve(model_id)  # raises 404 with the reason
    raise ModelNotFoundError(f"The model '{model_id}' does not exist")
