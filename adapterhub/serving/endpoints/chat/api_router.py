"""``POST /v1/chat/completions``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from adapterhub.serving.auth import require_api_key
from adapterhub.serving.endpoints.chat.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
)
from adapterhub.serving.endpoints.chat.serving import ChatService
from adapterhub.serving.endpoints.http import ERRORS, service, sse, unless_disconnected
from adapterhub.serving.middleware import stream_of

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=stream_of(ChatCompletionChunk))
async def chat_completions(req: ChatCompletionRequest, request: Request,
                           chat: ChatService = Depends(service(ChatService))) -> Any:
    caller = request.headers.get("x-session-id")
    if req.stream:
        return sse(await chat.stream(req, caller))
    return await unless_disconnected(request, chat.create(req, caller), "chat")
