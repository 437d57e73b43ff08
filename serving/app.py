"""The composition root of the server: ``create_app`` wires engine, registry, manager and service.

``build_engine`` turns a :class:`ServeConfig` into an engine (resolving the base model or a merged
artifact); tests pass their own engine instead.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapterhub.errors import AdapterHubError
from adapterhub.registry import Registry
from adapterhub.settings import Settings
from serving.adapters import AdapterManager
from serving.config import ServeConfig
from serving.engines.base import Engine
from serving.metrics import Metrics
from serving.protocol import ModelCard, error_body
from serving.routes import admin, health, openai
from serving.service import CompletionService

log = logging.getLogger(__name__)


DEFAULT_MAX_LORA_RANK = 16


def derived_max_rank(refs: list[str], registry: Registry | None) -> int:
    """The engine's LoRA rank when --max-lora-rank is not given: the largest among the adapters it is
    asked to serve at start, and at least 16 so that typical adapters loaded later on demand fit."""
    from adapterhub.registry.validation import validate_adapter_dir

    ranks = [DEFAULT_MAX_LORA_RANK]
    for ref in refs if registry is not None else []:
        record = registry.resolve(ref)
        if registry.manifest(record).kind == "adapter":  # a model artifact is refused, with the reason, at pin
            ranks.append(validate_adapter_dir(record.path).rank)
    rank = max(ranks)
    if rank > DEFAULT_MAX_LORA_RANK:
        log.info("max LoRA rank %d (the largest among --adapters)", rank)
    return rank


def build_engine(config: ServeConfig, settings: Settings, registry: Registry | None) -> tuple[Engine, str]:
    """Build the engine named by ``config``; returns (engine, served base name)."""
    from adapterhub.models import resolve_model

    if config.merged:
        if registry is None:
            raise AdapterHubError("--merged needs the registry")
        rec = registry.resolve(config.merged)
        manifest = registry.verify(rec)
        if manifest.kind != "model":
            from adapterhub.errors import UserInputError

            raise UserInputError(f"{rec.ref} is an adapter, not a merged model: serve it with --adapters")
        from adapterhub.models import config_fingerprint

        path, model_id, fingerprint = rec.path, config.served_name or rec.name, config_fingerprint(rec.path)
    else:
        resolved = resolve_model(config.base, settings)
        path, model_id, fingerprint = resolved.path, resolved.id, resolved.fingerprint
    name = config.served_name or model_id
    rank = config.max_lora_rank or derived_max_rank(config.adapters, registry)
    common: dict[str, Any] = dict(model_id=model_id, fingerprint=fingerprint, dtype=config.dtype,
                                  max_loaded=config.max_loaded, max_lora_rank=rank)
    if config.engine == "vllm":
        from serving.engines.vllm import VLLMEngine

        return VLLMEngine(path, bits=config.bits, extra_args=config.vllm_args, **common), name
    from serving.engines.hf import HFEngine

    engine = HFEngine(path, bits=config.bits, max_batch_size=config.max_batch_size,
                      max_waiting=config.max_waiting, **common)
    return engine, name


def create_app(config: ServeConfig, *, engine: Engine, registry: Registry | None,
               base_name: str | None = None) -> FastAPI:
    """Build the FastAPI app around an engine that is already constructed."""
    base_name = base_name or config.served_name or engine.base_identity["id"]
    metrics = Metrics()
    manager = AdapterManager(engine, registry, base_name=base_name)
    service = CompletionService(engine, manager, metrics, default_max_tokens=config.default_max_tokens)
    metrics.gauges["loaded_adapters"] = lambda: len(engine.loaded_adapters())
    metrics.gauges["queue_depth"] = engine.queue_depth

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        engine.start()
        for ref in config.adapters:
            await manager.load(ref, pin=True)
        yield
        engine.stop()

    app = FastAPI(title="adapterhub", version="0.1.0", lifespan=lifespan)
    app.state.config = config
    app.state.engine = engine
    app.state.manager = manager
    app.state.service = service
    app.state.metrics = metrics
    app.state.catalog = lambda: catalog(manager, registry, engine)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(health.router)

    @app.exception_handler(AdapterHubError)
    async def _ah_error(request: Request, exc: AdapterHubError) -> JSONResponse:
        metrics.observe(request.url.path, "-", exc.http_status, 0.0)
        return JSONResponse(error_body(exc.message, exc.error_type, exc.code, exc.param), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body')}: {e.get('msg')}" for e in errs)
        return JSONResponse(error_body(msg or "invalid request", "invalid_request_error", "invalid_value",
                                       ".".join(loc) or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error", "internal_error"),
                            status_code=500)

    return app


def catalog(manager: AdapterManager, registry: Registry | None, engine: Engine) -> list[ModelCard]:
    """The base plus every adapter in the registry that was trained for this base."""
    cards = [ModelCard(id=manager.base_name, root=manager.base_name)]
    if registry is None:
        return cards
    ident = engine.base_identity
    latest: dict[str, Any] = {}
    for rec in registry.list():
        if rec.kind != "adapter":
            continue
        latest[rec.name] = rec
        cards.append(ModelCard(id=rec.ref, parent=manager.base_name, root=rec.name, version=rec.version,
                               aliases=list(rec.aliases), created=int(rec.created_at)))
        for alias in rec.aliases:
            cards.append(ModelCard(id=f"{rec.name}@{alias}", parent=manager.base_name, root=rec.name,
                                   version=rec.version, created=int(rec.created_at)))
    for name, rec in latest.items():
        cards.append(ModelCard(id=name, parent=manager.base_name, root=name, version=rec.version,
                               created=int(rec.created_at)))
    allowed = {c.root for c in cards if c.root}
    if ident.get("id"):
        compatible = {r.name for r in registry.list() if r.kind == "adapter" and _same_base(r.base_model, ident)}
        allowed = compatible | {manager.base_name}
    return [c for c in cards if c.root in allowed]


def _same_base(recorded: str | None, ident: dict[str, Any]) -> bool:
    if recorded is None:
        return False
    import os

    rid, eid = str(recorded), str(ident.get("id"))
    return rid == eid or os.path.basename(rid.rstrip("/")) == os.path.basename(eid.rstrip("/"))
