"""``POST /v1/completions``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from adapterhub.serving.auth import require_api_key
from adapterhub.serving.endpoints.completions.protocol import CompletionRequest, CompletionResponse
from adapterhub.serving.endpoints.completions.serving import CompletionsService
from adapterhub.serving.endpoints.http import ERRORS, service, sse, unless_disconnected
from adapterhub.serving.middleware import stream_of

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)


@router.post("/completions", response_model=CompletionResponse, responses=stream_of(CompletionResponse))
async def completions(req: CompletionRequest, request: Request,
                      svc: CompletionsService = Depends(service(CompletionsService))) -> Any:
    caller = request.headers.get("x-session-id")
    if req.stream:
        return sse(await svc.stream(req, caller))
    return await unless_disconnected(request, svc.create(req, caller), "completions")
