"""The serving composition root: the few functions the CLI, the demo, tests and the Ray Serve deployment
call. Objects are built here and passed in; nothing is created at import time.

* :func:`build_engine` — the engine a :class:`ServeConfig` names, on its base or merged model;
* :func:`build_service` — engine + registry + adapter manager + completion service + metrics;
* :func:`create_app` — the FastAPI app around them; :func:`serve` runs it with uvicorn,
  :func:`serve_in_background` on 127.0.0.1 for the length of a ``with`` block (demo, benchmarks, tests);
* :func:`chat` — the terminal chat, through the same adapter manager and checks as the server.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from fastapi import FastAPI

from adapterhub.errors import AdapterHubError, ModelNotFoundError, UserInputError
from adapterhub.loading.bases import resolve_base
from adapterhub.loading.versions import open_version
from adapterhub.models import config_fingerprint, require_trust
from adapterhub.registry import Registry
from adapterhub.registry.validation import validate_adapter_dir
from adapterhub.serving.adapters import AdapterManager
from adapterhub.serving.app import make_app
from adapterhub.serving.config import HF_MAX_BATCH_TOKENS, ServeConfig
from adapterhub.serving.engines.base import Engine
from adapterhub.serving.media import MediaPolicy
from adapterhub.serving.metrics import Metrics
from adapterhub.serving.stack import ServingStack
from adapterhub.serving.tenants import KeyRing
from adapterhub.settings import Settings
from adapterhub.tools import get_parser, load_tool_template

__all__ = ["ServeConfig", "build_engine", "build_service", "chat", "create_app", "serve", "serve_in_background"]

log = logging.getLogger(__name__)
DEFAULT_MAX_LORA_RANK = 16


def derived_max_rank(refs: list[str], registry: Registry | None) -> int:
    """The engine's LoRA rank when --max-lora-rank is not given: the largest among the adapters it is
    asked to serve at start, and at least 16 so that typical adapters loaded later on demand fit."""
    ranks = [DEFAULT_MAX_LORA_RANK]
    for ref in refs if registry is not None else []:
        record = registry.resolve(ref)
        if record.kind == "adapter":  # a model artifact is refused, with the reason, when it is pinned
            ranks.append(validate_adapter_dir(registry.path(record, verify=False)).rank)
    rank = max(ranks)
    if rank > DEFAULT_MAX_LORA_RANK:
        log.info("max LoRA rank %d (the largest among --adapters)", rank)
    return rank


def build_engine(config: ServeConfig, settings: Settings, registry: Registry | None) -> tuple[Engine, str]:
    """Build the engine named by ``config``; returns (engine, served base name)."""
    if config.deterministic and config.engine != "hf":
        raise UserInputError("--deterministic is built for the hf engine only (it decodes one sequence at a time); "
                             "the vllm engine batches inside vLLM")
    if config.adapter_cache_mb is not None and config.engine != "hf":
        raise UserInputError("--adapter-cache-mb sizes the hf engine's host cache; the vllm engine keeps adapters in "
                             "host memory itself (max_cpu_loras, set from --max-loaded)")
    if config.merged:
        if registry is None:
            raise UserInputError("--merged needs the registry")
        opened = open_version(registry, config.merged, kind="model")
        path, model_id, fingerprint = opened.path, config.served_name or opened.record.name, config_fingerprint(
            opened.path)
    else:
        resolved = resolve_base(config.base, settings)
        path, model_id, fingerprint = resolved.path, resolved.id, resolved.fingerprint
    require_trust(path, config.trust_remote_code, "--trust-remote-code")
    name = config.served_name or model_id
    rank = config.max_lora_rank or derived_max_rank(config.adapters, registry)
    common: dict[str, Any] = dict(model_id=model_id, fingerprint=fingerprint, dtype=config.dtype,
                                  max_loaded=config.loaded_limit, max_lora_rank=rank, max_waiting=config.max_waiting,
                                  max_waiting_tokens=config.max_waiting_tokens)
    if config.engine == "vllm":
        from adapterhub.serving.engines.vllm import VLLMEngine

        return VLLMEngine(path, bits=config.bits, extra_args=config.engine_args(), **common), name
    from adapterhub.serving.engines.hf import HFEngine

    engine = HFEngine(path, bits=config.bits, max_batch_size=1 if config.deterministic else config.batch_limit,
                      max_batch_tokens=config.max_batch_tokens or HF_MAX_BATCH_TOKENS,
                      trust_remote_code=config.trust_remote_code,
                      adapter_cache_mb=1024 if config.adapter_cache_mb is None else config.adapter_cache_mb, **common)
    return engine, name


def build_service(config: ServeConfig, settings: Settings | None = None, *, engine: Engine | None = None,
                  registry: Registry | None = None, base_name: str | None = None,
                  use_registry: bool = True) -> ServingStack:
    """Everything a server process runs on. ``engine`` / ``registry`` may be passed in (tests)."""
    settings = settings or Settings()
    if registry is None and use_registry:
        registry = Registry.open(settings)
    if engine is None:
        engine, name = build_engine(config, settings, registry)
        base_name = base_name or name
    base_name = base_name or config.served_name or engine.base_identity["id"]
    metrics = Metrics()
    manager = AdapterManager(engine, registry, base_name=base_name, metrics=metrics,
                             max_slot_waiters=config.max_waiting, registry_timeout_s=config.registry_timeout_s,
                             registry_staleness_s=config.registry_staleness_s)
    get_parser(config.tool_parser)  # an unknown parser fails at start, not at the first request
    keys = None
    if config.auth == "keys":
        if registry is None:
            raise UserInputError("--auth keys needs the registry (where the keys are kept)")
        keys = KeyRing(registry.store, manager.registry_call, metrics)
    return ServingStack(config, engine, registry, manager, metrics,
                        media=MediaPolicy(tuple(config.allowed_media_domains), config.max_image_bytes,
                                          config.max_images, config.media_timeout_s),
                        tool_template=load_tool_template(config.tool_template), keys=keys)


def create_app(config: ServeConfig, *, engine: Engine | None = None, registry: Registry | None = None,
               settings: Settings | None = None, base_name: str | None = None,
               use_registry: bool = True) -> FastAPI:
    """The OpenAI-compatible app (see :mod:`adapterhub.serving.app`) on a stack built from ``config``."""
    return make_app(build_service(config, settings, engine=engine, registry=registry, base_name=base_name,
                                  use_registry=use_registry))


@contextmanager
def serve_in_background(config: ServeConfig, settings: Settings | None = None, *,
                        registry: Registry | None = None) -> Iterator[tuple[str, ServingStack]]:
    """``with serve_in_background(config) as (url, stack):`` a real server on 127.0.0.1 (``config.port``,
    0 for any free port) until the block ends."""
    from adapterhub.serving.server import BackgroundServer

    stack = build_service(config, settings, registry=registry)
    with BackgroundServer(make_app(stack), port=config.port) as url:
        yield url, stack


def serve(config: ServeConfig, settings: Settings | None = None,
          announce: Callable[[str], None] = log.warning) -> None:
    """Run the server until interrupted (blocking); ``announce`` gets the line saying where it listens."""
    import uvicorn

    settings = settings or Settings()
    stack = build_service(config, settings)
    if stack.registry is not None:
        # The janitor: what writers killed on any machine left behind (past the grace period).
        removed = stack.registry.gc(settings.gc_grace_s)
        if any(removed.values()):
            log.warning("registry gc at start: %s", ", ".join(f"{k}={v}" for k, v in removed.items()))
    announce(f"serving '{stack.base_name}' with the {config.engine} engine on http://{config.host}:{config.port}/v1")
    uvicorn.run(make_app(stack), host=config.host, port=config.port, log_level="warning")


def chat(model: str, *, adapter: str | None = None, bits: int | None = None, system: str | None = None,
         template: str | None = None, max_tokens: int = 256, temperature: float = 0.0,
         settings: Settings | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None,
         trust_remote_code: bool = False, image: str | None = None) -> int:
    """Multi-turn terminal chat with a base or merged model, optionally with an adapter; returns turns."""
    from adapterhub.serving.chat import run_chat
    from adapterhub.templates import get_template

    settings = settings or Settings()
    if image is not None and not Path(image).is_file():  # before loading any model
        raise UserInputError(f"--image: no such file: {image}")
    registry = Registry.open(settings)
    try:
        resolve_base(model, settings)
        config = ServeConfig(base=model, bits=bits, max_loaded=1, max_lora_rank=256,
                             trust_remote_code=trust_remote_code)
    except AdapterHubError:
        try:
            record = registry.resolve(model)
        except (AdapterHubError, ValueError):
            raise ModelNotFoundError(f"'{model}' is neither a base model nor a model in the registry") from None
        base_model = registry.manifest(record).base_model if record.kind == "adapter" else None
        if base_model is not None and adapter is None:  # an adapter: chat with it on its recorded base
            model, adapter = base_model.id, model
            config = ServeConfig(base=model, bits=bits, max_loaded=1, max_lora_rank=256,
                                 trust_remote_code=trust_remote_code)
        else:
            config = ServeConfig(merged=model, served_name=model, bits=bits, max_loaded=1, max_lora_rank=256,
                                 trust_remote_code=trust_remote_code)
    stack = build_service(config, settings, registry=registry)
    chat_template = get_template(template) if template else None
    key, label = None, stack.base_name
    if adapter:
        lease = asyncio.run(stack.manager.acquire(adapter))
        key, label = lease.key, f"{stack.base_name} + {lease.ref}"
        chat_template = chat_template or lease.chat_template
    picture = None
    if image is not None:
        import base64

        from adapterhub.serving.media import MediaPolicy, load_image

        if not stack.engine.accepts_images:
            raise UserInputError(f"--image: '{model}' does not take images (text only)")
        path = Path(image)

        picture = load_image("data:image/x;base64," + base64.b64encode(path.read_bytes()).decode(),
                             MediaPolicy(max_bytes=64 * 2**20), "--image")
    stack.engine.start()
    try:
        return run_chat(stack.engine, adapter_key=key, template=chat_template, system=system, max_tokens=max_tokens,
                        temperature=temperature, stdin=stdin or sys.stdin, stdout=stdout or sys.stdout, label=label,
                        image=picture)
    finally:
        stack.engine.stop()
