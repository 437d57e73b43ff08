"""``/health`` and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from adapterhub.serving.endpoints.http import stack_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    st = stack_of(request)
    return {"status": "ok", "engine": st.engine.name, "base": st.manager.base_name,
            "loaded_adapters": len(st.engine.loaded_adapters()), "queue_depth": st.engine.queue_depth()}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    from prometheus_client import CONTENT_TYPE_LATEST

    return PlainTextResponse(stack_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
