"""``/health`` and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from adapterhub.serving.auth import has_api_key, require_metrics_key
from adapterhub.serving.endpoints.http import stack_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """ok for load balancers; the details (engine, base, load) only with the API key when one is set."""
    st = stack_of(request)
    # The registry being away is "degraded", not down: the base and every version known by number or hash
    # still answer (from memory), aliases from their last known value for a bounded time.
    public = {"status": "ok", "registry": st.manager.registry_state}
    if not await has_api_key(request):
        return public
    return {**public, "engine": st.engine.name, "base": st.manager.base_name,
            "loaded_adapters": len(st.engine.loaded_adapters()), "queue_depth": st.engine.queue_depth()}


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_metrics_key)])
async def metrics(request: Request) -> PlainTextResponse:
    from prometheus_client import CONTENT_TYPE_LATEST

    return PlainTextResponse(stack_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
