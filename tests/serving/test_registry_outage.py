"""Serving while the shared registry's database stalls: the base model, versions already known by number or
hash, aliases within their staleness bound and /health keep answering; what cannot be answered from
memory is a bounded 503, never a hang; when the database is back, everything is as before. A real
PostgreSQL behind a TCP proxy the test pauses (packets stop, no error), moto's S3 server over HTTP."""

from __future__ import annotations

from urllib.parse import urlparse

import httpx

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.registry.remote import RemoteStore
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.server import running_server
from tests.services import PausableProxy


def test_a_stalled_database_does_not_stop_serving(shared_registry, tiny_model, tiny_adapters, tmp_path):
    db_url, artifacts = shared_registry
    u = urlparse(db_url)
    proxy = PausableProxy(u.hostname, u.port)
    via_proxy = db_url.replace(f":{u.port}/", f":{proxy.port}/")
    m = resolve_model(str(tiny_model), Settings())
    base = {"id": "tiny", "fingerprint": m.fingerprint}
    registry = Registry(RemoteStore(via_proxy, artifacts, tmp_path / "cache"))
    registry.register(tiny_adapters[0], "ad", base_model=base)
    registry.register(tiny_adapters[1], "ad", base_model=base)
    registry.set_alias("ad@1", "production")
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, dtype="fp32", max_loaded=2, max_lora_rank=8)
    config = ServeConfig(base="tiny", max_loaded=2, max_lora_rank=8, registry_timeout_s=2.0)
    app = create_app(config, engine=engine, registry=registry, base_name="tiny")

    def ask(url: str, model: str) -> httpx.Response:
        return httpx.post(url + "/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 3,
                                                         "temperature": 0}, timeout=30)

    try:
        with running_server(app) as url:
            before = {model: ask(url, model).json()["choices"][0]["text"] for model in ("ad@1", "ad@production")}
            assert httpx.get(url + "/health").json()["registry"] == "ok"
            proxy.pause()  # the database stops answering; connections stay open
            # known by number: from memory, the same answer
            assert ask(url, "ad@1").json()["choices"][0]["text"] == before["ad@1"]
            assert ask(url, "tiny").status_code == 200  # the base never needs the registry
            # an alias: its last known target (within the staleness bound), after the lookup's time limit
            r = ask(url, "ad@production")
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == before["ad@production"]
            health = httpx.get(url + "/health", timeout=5)
            assert health.status_code == 200 and health.json()["registry"] == "degraded"
            # never seen: a bounded 503 naming the registry, not a hang
            r = ask(url, "ad@2")
            assert r.status_code == 503 and r.json()["error"]["code"] == "registry_unavailable", r.text
            assert httpx.get(url + "/v1/models", timeout=30).status_code == 503
            proxy.resume()
            r = ask(url, "ad@2")
            assert r.status_code == 200, r.text
            assert httpx.get(url + "/health").json()["registry"] == "ok"
            assert httpx.get(url + "/v1/models").status_code == 200
    finally:
        proxy.resume()
        engine.stop()
        proxy.close()
