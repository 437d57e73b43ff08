"""Two servers on one shared registry (a real PostgreSQL and moto's S3 on 127.0.0.1), each with its own
connection and key cache, as two machines: a key revoked or re-scoped with the CLI's library call is
refused by both on their next requests, and a request limit holds across them."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.server import running_server


@pytest.fixture()
def two_servers(shared_registry, tiny_model, tiny_adapters, tmp_path):
    m = resolve_model(str(tiny_model), Settings())
    ops = Registry.open(Settings(home=tmp_path / "ops"))
    ops.register(tiny_adapters[0], "team-a-chat", base_model={"id": "tiny", "fingerprint": m.fingerprint})
    with contextlib.ExitStack() as stack:
        urls = []
        for i in range(2):
            engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, max_loaded=2, max_lora_rank=8,
                              dtype="fp32", max_batch_size=4)
            stack.callback(engine.stop)
            app = create_app(ServeConfig(base="tiny", max_loaded=2, max_lora_rank=8, auth="keys"), engine=engine,
                             registry=Registry.open(Settings(home=tmp_path / f"replica-{i}")), base_name="tiny")
            urls.append(stack.enter_context(running_server(app)))
        yield urls, ops


def _chat(url: str, key: str, model: str = "team-a-chat") -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                      json={"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})


def _until(check, within: float = 15.0) -> float:
    """Seconds until ``check()`` held (polling); fails past ``within``."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < within, "not seen in time"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_revocation_and_scope_changes_reach_every_server(two_servers):
    urls, ops = two_servers
    _, secret = ops.keys.create("team-a", ["team-a-*"])
    assert [_chat(u, secret).status_code for u in urls] == [200, 200]
    ops.keys.update("team-a", models=["team-b-*"])  # re-scoped: team-a-chat is now someone else's
    for u in urls:
        _until(lambda u=u: _chat(u, secret).status_code == 404)
    ops.keys.revoke("team-a")
    for u in urls:
        _until(lambda u=u: _chat(u, secret).status_code == 401)
    assert [e.action for e in ops.keys.history("team-a")] == ["created", "updated", "revoked"]


def test_a_request_limit_holds_across_servers(two_servers):
    urls, ops = two_servers
    _, secret = ops.keys.create("limited", ["team-a-*"], rpm=6)
    assert [_chat(urls[0], secret).status_code for _ in range(4)] == [200] * 4
    time.sleep(1.5)  # > 2 refresh rounds: the second server has read the first one's counts
    statuses = [_chat(urls[1], secret).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429], statuses
    # And usage from both servers adds up in the registry.
    _until(lambda: sum(u.requests for u in ops.keys.usage("limited")) == 6)
