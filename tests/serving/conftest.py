"""Fixtures of the serving tests: one real server on the tiny model with an adapter, per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.server import running_server


@pytest.fixture(scope="module")
def setup(tiny_model, tiny_adapters, tmp_path_factory):
    """(server url, engine, tiny model dir, adapter dir): base "tiny" and adapter "ad" behind a real server."""
    m = resolve_model(str(tiny_model), Settings())
    registry = Registry(LocalStore(tmp_path_factory.mktemp("surface-registry")))
    base = {"id": "tiny", "fingerprint": m.fingerprint}
    registry.register(tiny_adapters[0], "ad", base_model=base)
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, max_loaded=2, max_lora_rank=8,
                      dtype="fp32", max_batch_size=8)
    cfg = ServeConfig(base="tiny", max_loaded=2, max_lora_rank=8, allowed_origins=["http://ui.example"],
                      max_request_bytes=64 * 1024)
    app = create_app(cfg, engine=engine, registry=registry, base_name="tiny")
    with running_server(app) as url:
        yield url, engine, tiny_model, Path(tiny_adapters[0])
    engine.stop()
