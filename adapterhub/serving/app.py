"""The HTTP layer: a FastAPI app around a :class:`~adapterhub.serving.stack.ServingStack`, with the one place
where errors become OpenAI-shaped bodies. Build it with :func:`adapterhub.serving.api.create_app`."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapterhub import __version__
from adapterhub.errors import AdapterHubError
from adapterhub.serving.auth import require_docs_key
from adapterhub.serving.endpoints import routers
from adapterhub.serving.metrics import current_target
from adapterhub.serving.middleware import BodySizeLimit, RequestId, openai_error_schema
from adapterhub.serving.protocol import error_body
from adapterhub.serving.stack import ServingStack

log = logging.getLogger(__name__)


def make_app(stack: ServingStack) -> FastAPI:
    """The FastAPI app; the engine starts and the configured adapters are pinned at startup."""
    engine, manager, metrics = stack.engine, stack.manager, stack.metrics
    metrics.gauge("loaded_adapters", "Adapters loaded on the engine.", lambda: len(engine.loaded_adapters()))
    metrics.gauge("queue_depth", "Requests waiting for the engine.", engine.queue_depth)
    cache = getattr(engine, "host_cache", None)  # the hf engine's adapters in host memory
    if cache is not None:
        metrics.gauge("adapter_host_cache_bytes", "Bytes of adapters held in host memory (--adapter-cache-mb).",
                      lambda: float(cache.bytes))
        metrics.gauge("adapter_host_cache_adapters", "Adapters held in host memory.", lambda: float(len(cache)))
    metrics.gauge("slot_waiting", "Requests waiting for an adapter slot (every slot busy).",
                  lambda: manager.slot_waiting)
    metrics.labeled_gauge("requests_in_flight", "Requests holding a loaded version (queued in the engine or "
                          "decoding), per version.", ["name", "version"], manager.in_flight)
    metrics.labeled_gauge("requests_waiting", "Requests waiting for their version to be loaded (a free adapter "
                          "slot, their turn in line, the load), per version.", ["name", "version"], manager.waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        engine.start()
        if stack.keys is not None:
            await stack.keys.start()
        for ref in stack.config.adapters:
            await manager.load(ref, pin=True)
        yield
        if stack.keys is not None:
            await stack.keys.stop()
        engine.stop()

    # /openapi.json, /docs and /redoc are routes of our own so that, with --api-key, they need a key too
    # (--metrics-key, else the API key): the schema lists every adapter-facing parameter and limit.
    app = FastAPI(title="adapterhub", version=__version__, lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_docs_key)])
    async def _openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_docs_key)])
    async def _docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="adapterhub")

    @app.get("/redoc", include_in_schema=False, dependencies=[Depends(require_docs_key)])
    async def _redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="adapterhub")

    app.state.stack = stack  # read through adapterhub.serving.endpoints.http.stack_of
    for router in routers():
        app.include_router(router)
    if stack.config.ui:
        from adapterhub.serving.endpoints.console.api_router import router as console

        app.include_router(console)
    # Outermost last: the request id is set first, then the size limit, then CORS answers preflights.
    if stack.config.allowed_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=stack.config.allowed_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Request-Id"])
    app.add_middleware(BodySizeLimit, max_bytes=stack.config.max_request_bytes)
    app.add_middleware(RequestId)
    openai_error_schema(app)

    @app.exception_handler(AdapterHubError)
    async def _ah_error(request: Request, exc: AdapterHubError) -> JSONResponse:
        metrics.observe(_endpoint(request), *current_target.get(), exc.http_status, 0.0)
        headers = {"Retry-After": "1"} if exc.http_status == 503 else {}  # overloaded: worth retrying soon
        headers.update(getattr(exc, "headers", None) or {})  # a rate limit's x-ratelimit-* and Retry-After
        return JSONResponse(error_body(exc.message, exc.error_type, exc.code, exc.param), status_code=exc.http_status,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body')}: {e.get('msg')}" for e in errs)
        metrics.observe(_endpoint(request), "-", "-", 400, 0.0)
        return JSONResponse(error_body(msg or "invalid request", "invalid_request_error", "invalid_value",
                                       ".".join(loc) or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))  # a 405 keeps its Allow header

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        metrics.observe(_endpoint(request), *current_target.get(), 500, 0.0)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error", "internal_error"),
                            status_code=500)

    return app


def _endpoint(request: Request) -> str:
    """The metrics label: the matched route's template (``/v1/models/{model_id}``), never the raw path, so
    anyone sending random paths cannot grow /metrics; "unmatched" for a path no route has."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    return {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/responses": "responses"}.get(
        path, path)
