"""Admin endpoints: load, unload and list loaded adapters (admin key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from adapterhub.serving.auth import require_admin_key
from adapterhub.serving.endpoints.admin.protocol import AdapterLoadRequest
from adapterhub.serving.endpoints.generation import refuse_unsupported
from adapterhub.serving.endpoints.http import ERRORS, stack_of

router = APIRouter(prefix="/v1/adapters", dependencies=[Depends(require_admin_key)], responses=ERRORS)


@router.get("")
async def list_loaded(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": stack_of(request).manager.loaded()}


@router.post("/load")
async def load(body: AdapterLoadRequest, request: Request) -> dict[str, Any]:
    refuse_unsupported(body)
    rec = await stack_of(request).manager.load(body.model, pin=body.pin)
    return {"loaded": rec.ref, "content_hash": rec.content_hash, "pinned": body.pin}


@router.post("/unload")
async def unload(body: AdapterLoadRequest, request: Request) -> dict[str, Any]:
    refuse_unsupported(body)
    return {"unloaded": await stack_of(request).manager.unload(body.model)}
