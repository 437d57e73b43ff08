"""``POST /v1/responses``, ``GET`` / ``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from adapterhub.serving.auth import require_api_key
from adapterhub.serving.endpoints.http import ERRORS, service, sse, unless_disconnected
from adapterhub.serving.endpoints.responses.protocol import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    DeletedResponse,
    ErrorEvent,
    InputItemList,
    ItemEvent,
    PartEvent,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
    TextDeltaEvent,
    TextDoneEvent,
)
from adapterhub.serving.endpoints.responses.serving import ResponsesService
from adapterhub.serving.middleware import stream_of

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS)


@router.post("/responses", response_model=ResponseObject, responses=stream_of(
    ResponseEvent, ItemEvent, PartEvent, TextDeltaEvent, TextDoneEvent, ArgumentsDeltaEvent, ArgumentsDoneEvent,
    ErrorEvent, openai_chunks=False))
async def create_response(req: ResponsesRequest, request: Request,
                          responses: ResponsesService = Depends(service(ResponsesService))) -> Any:
    caller = request.headers.get("x-session-id")
    if req.stream:
        return sse(await responses.stream(req, caller), named=True)
    return await unless_disconnected(request, responses.create(req, caller), "responses")


@router.get("/responses/{response_id}", response_model=ResponseObject)
async def get_response(response_id: str, responses: ResponsesService = Depends(service(ResponsesService))) -> Any:
    return await responses.get(response_id)


@router.delete("/responses/{response_id}", response_model=DeletedResponse)
async def delete_response(response_id: str,
                          responses: ResponsesService = Depends(service(ResponsesService))) -> Any:
    return await responses.delete(response_id)


@router.get("/responses/{response_id}/input_items", response_model=InputItemList)
async def list_input_items(response_id: str, limit: int = Query(20, ge=1, le=100),
                           order: Literal["asc", "desc"] = "desc", after: str | None = None,
                           responses: ResponsesService = Depends(service(ResponsesService))) -> Any:
    return await responses.input_items(response_id, limit=limit, order=order, after=after)
