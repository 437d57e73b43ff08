"""``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``: parse, call the service, send."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from serving.auth import require_api_key
from serving.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in ((400, "Invalid request"), (401, "Missing or wrong API key"), (404, "Unknown model"),
                       (503, "Overloaded: retry later"))
}
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)


def _sse(frames: AsyncIterator[BaseModel]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        async for f in frames:
            yield f"data: {json.dumps(f.model_dump(mode='json'), ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
    service = request.app.state.service
    if req.stream:
        return _sse(await service.chat_stream(req))
    return await service.chat(req)


@router.post("/completions", response_model=CompletionResponse)
async def completions(req: CompletionRequest, request: Request) -> Any:
    service = request.app.state.service
    if req.stream:
        return _sse(await service.complete_stream(req))
    return await service.complete(req)


@router.get("/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    return ModelList(data=request.app.state.catalog())


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def model(model_id: str, request: Request) -> ModelCard:
    from adapterhub.errors import ModelNotFoundError

    for m in request.app.state.catalog():
        if m.id == model_id:
            return m
    request.app.state.manager.resolve(model_id)  # raises 404 with the reason
    raise ModelNotFoundError(f"The model '{model_id}' does not exist")
