"""The OpenAI-compatible server on the tiny model, driven by the official openai client over HTTP."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.builders import build_lora_adapter
from tests.server import running_server

MSG = [{"role": "user", "content": "hello who are you"}]


@pytest.fixture(scope="module")
def engine(tiny_model):
    m = resolve_model(str(tiny_model), Settings())
    eng = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, max_loaded=3, max_lora_rank=8,
                   max_batch_size=8)
    yield eng
    eng.stop()


@pytest.fixture()
def server(engine, registry, tiny_adapters, tiny_model):
    base = resolve_model(str(tiny_model), Settings()).identity()
    base["id"] = "tiny"
    for i, path in enumerate(tiny_adapters):
        registry.register(path, f"ad{i}", base_model=base)
    registry.set_alias("ad0@1", "production")
    for key in list(engine.loaded_adapters()):  # the engine is shared across tests in this module
        engine.unload_adapter(key)
    cfg = ServeConfig(base="tiny", api_key="sk-test", admin_key="admin-test", max_loaded=3, max_lora_rank=8)
    app = create_app(cfg, engine=engine, registry=registry, base_name="tiny")
    with running_server(app) as url:
        yield url, registry


def client(url, key="sk-test"):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def chat(c, model, max_tokens=12, **kw):
    r = c.chat.completions.create(model=model, messages=MSG, max_tokens=max_tokens, temperature=0, **kw)
    return r.choices[0].message.content, r


def test_chat_base_and_adapters_differ(server):
    url, _ = server
    c = client(url)
    base, r = chat(c, "tiny")
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    outs = {m: chat(c, m)[0] for m in ("ad0", "ad1", "ad2")}
    assert len({base, *outs.values()}) == 4, (base, outs)
    assert chat(c, "ad0@1")[0] == outs["ad0"] == chat(c, "ad0@production")[0]


def test_streaming_matches_non_streaming_and_reports_usage(server):
    url, _ = server
    c = client(url)
    full, _ = chat(c, "ad1", max_tokens=16)
    stream = c.chat.completions.create(model="ad1", messages=MSG, max_tokens=16, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for ev in stream:
        if ev.usage:
            usage = ev.usage
        for ch in ev.choices:
            pieces.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    assert "".join(pieces) == full
    assert finish in ("stop", "length") and usage is not None and usage.completion_tokens > 0


def test_completions_and_max_tokens_length(server):
    url, _ = server
    c = client(url)
    r = c.completions.create(model="ad2", prompt="the cat", max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    s = "".join(ch.choices[0].text for ch in
                c.completions.create(model="ad2", prompt="the cat", max_tokens=5, temperature=0, stream=True)
                if ch.choices)
    assert s == r.choices[0].text


def test_stop_sequence_truncates(server):
    url, _ = server
    c = client(url)
    full, _ = chat(c, "tiny", max_tokens=20)
    stop = full[3:5]
    assert stop
    cut, r = chat(c, "tiny", max_tokens=20, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and cut == full[: full.find(stop)]


def test_seeded_sampling_is_reproducible_and_n_choices(server):
    url, _ = server
    c = client(url)
    kw = dict(model="ad0", messages=MSG, max_tokens=10, temperature=1.0, seed=7, n=2)
    a = c.chat.completions.create(**kw)
    b = c.chat.completions.create(**kw)
    assert len(a.choices) == 2
    assert [x.message.content for x in a.choices] == [x.message.content for x in b.choices]


def test_models_listing(server):
    url, _ = server
    ids = {m.id: m for m in client(url).models.list().data}
    assert "tiny" in ids and "ad0" in ids and "ad0@1" in ids and "ad0@production" in ids
    raw = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer sk-test"}).json()["data"]
    card = next(m for m in raw if m["id"] == "ad1@1")
    assert card["parent"] == "tiny" and card["version"] == 1


def test_alias_move_takes_effect_without_restart(server, tiny_model, tmp_path):
    url, registry = server
    c = client(url)
    registry.register(build_lora_adapter(tiny_model, tmp_path / "v2", seed=99, r=4), "ad0", base_model={"id": "tiny"})
    v1, _ = chat(c, "ad0@1")
    v2, _ = chat(c, "ad0@2")
    assert v1 != v2
    assert chat(c, "ad0@production")[0] == v1
    registry.set_alias("ad0@2", "production")
    assert chat(c, "ad0@production")[0] == v2
    assert chat(c, "ad0")[0] == v2  # latest


def test_errors_are_openai_shaped(server):
    url, _ = server
    c = client(url)
    with pytest.raises(openai.NotFoundError) as e:
        chat(c, "ghost")
    assert "ghost" in e.value.message and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        chat(c, "ad0@9")
    with pytest.raises(openai.AuthenticationError):
        chat(client(url, key="wrong"), "tiny")
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": MSG})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.BadRequestError) as e:
        chat(c, "tiny", max_tokens=100000)
    assert "maximum context length is 512" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=MSG, temperature=5)
    assert "temperature" in e.value.message
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"Authorization": "Bearer sk-test"})
    assert r.status_code == 400 and "error" in r.json()


def test_wrong_base_and_too_high_rank_are_refused(server, other_tiny_model, tmp_path, tiny_model):
    url, registry = server
    wrong = build_lora_adapter(other_tiny_model, tmp_path / "wrong", seed=3, r=4)
    other = resolve_model(str(other_tiny_model), Settings()).identity()
    registry.register(wrong, "wrongbase", base_model=other)
    big = build_lora_adapter(tiny_model, tmp_path / "big", seed=3, r=32)
    registry.register(big, "bigrank", base_model={"id": "tiny"})
    c = client(url)
    with pytest.raises(openai.BadRequestError) as e:
        chat(c, "wrongbase")
    assert "trained for base" in e.value.message and "q_proj is 32->32 in the adapter, 64->64 in the base" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        chat(c, "bigrank")
    assert "rank 32 exceeds this server's max LoRA rank 8" in e.value.message
    assert chat(c, "tiny")[0]  # the server still serves


def test_mixed_batch_matches_each_request_alone(server, engine):
    url, _ = server
    c = client(url)
    models = ["tiny", "ad0", "ad1", "ad2", "tiny", "ad1"]
    alone = [chat(c, m, max_tokens=16)[0] for m in models]

    async def together():
        ac = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, timeout=120)
        rs = await asyncio.gather(*(ac.chat.completions.create(model=m, messages=MSG, max_tokens=16, temperature=0)
                                    for m in models))
        return [r.choices[0].message.content for r in rs]

    engine.peak_batch = 0
    assert asyncio.run(together()) == alone
    assert engine.peak_batch > 1  # really batched together


def test_32_concurrent_streams_across_4_adapters(server):
    url, _ = server
    models = ["tiny", "ad0", "ad1", "ad2"]
    c = client(url)
    expected = {m: chat(c, m, max_tokens=8)[0] for m in models}

    async def one(ac, m):
        s = await ac.chat.completions.create(model=m, messages=MSG, max_tokens=8, temperature=0, stream=True)
        return m, "".join([ch.choices[0].delta.content or "" async for ch in s if ch.choices])

    async def run():
        ac = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, timeout=300)
        return await asyncio.gather(*(one(ac, models[i % 4]) for i in range(32)))

    results = asyncio.run(run())
    assert len(results) == 32
    assert all(text == expected[m] for m, text in results)


def test_lru_eviction_and_admin_endpoints(server):
    url, _ = server
    c = client(url)
    admin = {"Authorization": "Bearer admin-test"}
    for m in ("ad0", "ad1", "ad2", "ad3"):  # max_loaded=3 → one eviction
        chat(c, m, max_tokens=2)
    loaded = httpx.get(url + "/v1/adapters", headers=admin).json()["data"]
    assert [x["id"] for x in loaded] == ["ad1@1", "ad2@1", "ad3@1"]
    assert httpx.get(url + "/v1/adapters", headers={"Authorization": "Bearer sk-test"}).status_code == 401
    r = httpx.post(url + "/v1/adapters/load", json={"model": "ad0", "pin": True}, headers=admin)
    assert r.status_code == 200 and r.json()["loaded"] == "ad0@1"
    r = httpx.post(url + "/v1/adapters/unload", json={"model": "ad2"}, headers=admin)
    assert r.json()["unloaded"] == ["ad2@1"]
    ids = [x["id"] for x in httpx.get(url + "/v1/adapters", headers=admin).json()["data"]]
    assert "ad2@1" not in ids and "ad0@1" in ids
    r = httpx.post(url + "/v1/adapters/unload", json={"model": "ghost"}, headers=admin)
    assert r.status_code == 404


def test_concurrent_first_requests_load_once(server, engine):
    url, _ = server
    calls = []
    orig = engine.load_adapter
    engine.load_adapter = lambda key, path: (calls.append(key), orig(key, path))[1]
    try:
        async def run():
            ac = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, timeout=120)
            await asyncio.gather(*(ac.chat.completions.create(model="ad3", messages=MSG, max_tokens=2)
                                   for _ in range(6)))
        asyncio.run(run())
    finally:
        engine.load_adapter = orig
    assert len(calls) == 1


def test_health_and_metrics(server):
    url, _ = server
    chat(client(url), "ad0", max_tokens=3)
    # with --api-key: anyone gets ok / not ok, the details and the metrics need the key
    assert httpx.get(url + "/health").json() == {"status": "ok", "registry": "ok"}
    auth = {"Authorization": "Bearer sk-test"}
    assert httpx.get(url + "/health", headers=auth).json()["engine"] == "hf"
    for path in ("/metrics", "/openapi.json", "/docs", "/redoc"):
        assert httpx.get(url + path).status_code == 401, path
        assert httpx.get(url + path, headers=auth).status_code == 200, path
    r = httpx.get(url + "/v1/chat/completions", headers=auth)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    text = httpx.get(url + "/metrics", headers=auth).text
    assert 'adapterhub_requests_total{endpoint="chat",name="ad0",status="200",version="1"} 1.0' in text
    assert "adapterhub_loaded_adapters 1.0" in text and "adapterhub_queue_depth" in text
    assert 'adapterhub_completion_tokens_total{name="ad0",version="1"} 3.0' in text


def test_client_disconnect_cancels_generation(server, engine):
    import time

    url, _ = server
    before = engine.cancelled
    with httpx.stream("POST", url + "/v1/chat/completions", headers={"Authorization": "Bearer sk-test"},
                      json={"model": "tiny", "messages": MSG, "max_tokens": 480, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
    deadline = time.time() + 20
    while engine.cancelled == before:
        assert time.time() < deadline, "generation kept running after the client left"
        time.sleep(0.05)


def test_max_lora_rank_is_derived_from_the_adapters_served(registry, tiny_model, tmp_path):
    from adapterhub.serving.api import build_engine

    base = resolve_model(str(tiny_model), Settings()).identity()
    registry.register(build_lora_adapter(tiny_model, tmp_path / "big", r=32), "big", base_model=base)
    engine, _ = build_engine(ServeConfig(base=str(tiny_model), adapters=["big"]), Settings(), registry)
    assert engine.capabilities.max_lora_rank == 32
    engine, _ = build_engine(ServeConfig(base=str(tiny_model)), Settings(), registry)
    assert engine.capabilities.max_lora_rank == 16
    engine, _ = build_engine(ServeConfig(base=str(tiny_model), adapters=["big"], max_lora_rank=8), Settings(), registry)
    assert engine.capabilities.max_lora_rank == 8  # set explicitly: the manager then refuses "big" with the reason
    registry.register(tiny_model, "whole", kind="model", base_model=base)
    engine, _ = build_engine(ServeConfig(base=str(tiny_model), adapters=["whole"]), Settings(), registry)
    assert engine.capabilities.max_lora_rank == 16  # not an adapter: no rank; pinning it says "serve it with --merged"
