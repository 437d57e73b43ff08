"""``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from serving.auth import require_api_key
from serving.protocol import ChatCompletionRequest, CompletionRequest

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


def _sse(frames: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        async for f in frames:
            yield f"data: {json.dumps(f, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/chat/completions")
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
    service = request.app.state.service
    if req.stream:
        return _sse(await service.chat_stream(req))
    return await service.chat(req)


@router.post("/completions")
async def completions(req: CompletionRequest, request: Request) -> Any:
    service = request.app.state.service
    if req.stream:
        return _sse(await service.complete_stream(req))
    return await service.complete(req)


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [m.model_dump() for m in request.app.state.catalog()]}


@router.get("/models/{model_id:path}")
async def model(model_id: str, request: Request) -> dict[str, Any]:
    from adapterhub.errors import ModelNotFoundError

    for m in request.app.state.catalog():
        if m.id == model_id:
            return m.model_dump()
    request.app.state.manager.resolve(model_id)  # raises 404 with the reason
    raise ModelNotFoundError(f"The model '{model_id}' does not exist")
