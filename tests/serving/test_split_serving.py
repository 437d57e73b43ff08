"""A weighted rollout as a client sees it, over HTTP on the tiny model: sticky per-user routing at the
configured share, the answering version named in the response, per-version Prometheus metrics with the
right counts, residency moving with loads and evictions, shadow evaluation over HTTP, ``adapterhub stats``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapterhub.loading.bases import resolve_model
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.builders import pythonpath
from tests.server import running_server


@pytest.fixture()
def rollout(registry, tiny_adapters, tiny_model):
    m = resolve_model(str(tiny_model), Settings())
    base = {"id": "tiny", "fingerprint": m.fingerprint}
    registry.register(tiny_adapters[0], "lumen", base_model=base)
    registry.register(tiny_adapters[1], "lumen", base_model=base)
    registry.register(tiny_adapters[2], "other", base_model=base)
    registry.set_split("lumen", "production", {1: 90, 2: 10})
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, max_loaded=2, max_lora_rank=8,
                      dtype="fp32", max_batch_size=8)
    app = create_app(ServeConfig(base="tiny", max_loaded=2, max_lora_rank=8), engine=engine, registry=registry,
                     base_name="tiny")
    with running_server(app) as url:
        yield url, registry
    engine.stop()


def _samples(url: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _value(samples, metric, **labels) -> float:
    return sum(s.value for s in samples.get(metric, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_weighted_split_is_sticky_and_observable(rollout):
    url, registry = rollout
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    users = [f"user-{i % 200}" for i in range(1000)]

    def ask(user: str) -> tuple[str, str]:
        r = client.chat.completions.create(model="lumen@production", user=user, max_tokens=1, temperature=0,
                                           messages=[{"role": "user", "content": "hello"}])
        return user, r.model

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, users))
    served: dict[str, set[str]] = {}
    for user, model in answers:
        served.setdefault(user, set()).add(model)
    assert all(len(models) == 1 for models in served.values()), "a user got more than one version"
    assert {m for ms in served.values() for m in ms} == {"lumen@1", "lumen@2"}  # the response names the version
    share = sum(ms == {"lumen@2"} for ms in served.values()) / len(served)
    assert 0.07 <= share <= 0.13, share
    # the same stickiness through X-Session-Id when there is no user field
    via_header = {httpx.post(url + "/v1/chat/completions", headers={"X-Session-Id": "s-7"}, json={
        "model": "lumen@production", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}).json()["model"]
        for _ in range(5)}
    assert len(via_header) == 1

    m = _samples(url)
    per_version = Counter(model for _, model in answers)
    for version in ("1", "2"):
        n = per_version[f"lumen@{version}"]
        assert _value(m, "adapterhub_requests_total", name="lumen", version=version, status="200",
                      endpoint="chat") == n + (1 if f"lumen@{version}" in via_header else 0) * 5
        assert _value(m, "adapterhub_split_served_total", name="lumen", alias="production", version=version) == \
            n + (5 if f"lumen@{version}" in via_header else 0)
        assert _value(m, "adapterhub_time_to_first_token_seconds_count", name="lumen", version=version) > 0
        assert _value(m, "adapterhub_completion_tokens_total", name="lumen", version=version) >= n
        assert _value(m, "adapterhub_adapter_resident", name="lumen", version=version) == 1
    assert _value(m, "adapterhub_adapter_loads_total", name="lumen") == 2

    # a third adapter evicts the least recently used one (max_loaded=2): residency follows
    client.chat.completions.create(model="other", max_tokens=2, temperature=0, messages=[{"role": "user", "content": "x"}])
    m = _samples(url)
    assert _value(m, "adapterhub_adapter_resident", name="other", version="1") == 1
    assert _value(m, "adapterhub_adapter_evictions_total") == 1
    assert sum(_value(m, "adapterhub_adapter_resident", name="lumen", version=v) for v in ("1", "2")) == 1
    # errors are counted too, by status
    httpx.post(url + "/v1/chat/completions", json={"model": "lumen@9", "messages": [{"role": "user", "content": "x"}]})
    assert _value(_samples(url), "adapterhub_requests_total", status="404") == 1

    out = subprocess.run([sys.executable, "-m", "adapterhub.cli.main", "stats", "--url", url], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": pythonpath(), "COLUMNS": "200"}, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "lumen" in line]
    assert len(lines) == 2 and all("@production" in line and "%" in line for line in lines)


def test_shadow_evaluation_over_http_writes_metrics(rollout):
    url, registry = rollout
    from adapterhub.evaluation.served import evaluate_served

    scores = evaluate_served(registry, "lumen@2", url, name="Lumen", author="Acme Lab")
    m = registry.manifest("lumen@2").metrics
    assert m["identity"] == scores["identity"] and m["retention"] == scores["retention"]
    from adapterhub.evaluation.identity import IDENTITY_PROMPTS

    assert m["eval_source"] == url and scores["identity_n"] == len(IDENTITY_PROMPTS)
