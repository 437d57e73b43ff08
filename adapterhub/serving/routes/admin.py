"""Admin endpoints: load, unload and list loaded adapters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from adapterhub.serving.auth import require_admin_key
from adapterhub.serving.protocol import AdapterLoadRequest
from adapterhub.serving.routes.openai import ERRORS

router = APIRouter(prefix="/v1/adapters", dependencies=[Depends(require_admin_key)], responses=ERRORS)


@router.get("")
async def list_loaded(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": request.app.state.manager.loaded()}


@router.post("/load")
async def load(body: AdapterLoadRequest, request: Request) -> dict[str, Any]:
    request.app.state.service.refuse_unsupported(body)
    rec = await request.app.state.manager.load(body.model, pin=body.pin)
    return {"loaded": rec.ref, "content_hash": rec.content_hash, "pinned": body.pin}


@router.post("/unload")
async def unload(body: AdapterLoadRequest, request: Request) -> dict[str, Any]:
    request.app.state.service.refuse_unsupported(body)
    return {"unloaded": await request.app.state.manager.unload(body.model)}
