"""Tenants on one server (``--auth keys``): keys from the registry scoped to adapter names, rate limits,
usage, revocation and admin rights, spoken to with the official client over real HTTP."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.server import running_server

ROOT = "root-secret-key"  # the server's own --api-key: all access


@pytest.fixture(scope="module")
def tenants(tiny_model, tiny_adapters, tmp_path_factory):
    """A server on the tiny model with team-a's two adapters and team-b's one; keys for both teams."""
    m = resolve_model(str(tiny_model), Settings())
    registry = Registry(LocalStore(tmp_path_factory.mktemp("tenants-registry")), actor="ops")
    base = {"id": "tiny", "fingerprint": m.fingerprint}
    registry.register(tiny_adapters[0], "team-a-chat", base_model=base, aliases=["production"])
    registry.register(tiny_adapters[2], "team-a-code", base_model=base)
    b, _ = registry.register(tiny_adapters[1], "team-b-bot", base_model=base, aliases=["production"])
    secrets = {}
    for name, globs, kw in [("team-a", ["team-a-*"], {}), ("team-b", ["team-b-*", "tiny"], {}),
                            ("limited", ["team-a-*"], {"rpm": 5}), ("tokens", ["team-a-*"], {"tpm": 60}),
                            ("ops", ["*"], {"admin": True}), ("doomed", ["*"], {})]:
        secrets[name] = registry.keys.create(name, globs, **kw)[1]
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, max_loaded=3, max_lora_rank=8,
                      dtype="fp32", max_batch_size=8, max_waiting=512)
    cfg = ServeConfig(base="tiny", max_loaded=3, max_lora_rank=8, auth="keys", api_key=ROOT, max_waiting=512)
    app = create_app(cfg, engine=engine, registry=registry, base_name="tiny")
    with running_server(app) as url:
        yield url, registry, secrets, b
    engine.stop()


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def _post(url: str, key: str | None, path: str, body: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=120)


def _requests_for(model: str) -> list[tuple[str, dict]]:
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return [("/v1/chat/completions", chat), ("/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2}),
            ("/v1/responses", {"model": model, "input": "hi", "max_output_tokens": 2}),
            ("/tokenize", {"model": model, "prompt": "hi"}), ("/detokenize", {"model": model, "tokens": [1, 2]})]


def test_a_tenant_cannot_see_or_use_another_tenants_adapters(tenants):
    url, _, secrets, b = tenants
    a = secrets["team-a"]
    for path, body in _requests_for("team-a-chat@production"):
        assert _post(url, a, path, body).status_code == 200, path
    refs = ["team-b-bot", "team-b-bot@1", "team-b-bot@production", f"team-b-bot@sha256:{b.content_hash[:12]}",
            "tiny", "base"]
    for ref in refs:
        for path, body in _requests_for(ref):
            r = _post(url, a, path, body)
            assert r.status_code == 404, (ref, path, r.text)
            # Worded exactly as for a name that does not exist: nothing about the other tenant leaks.
            name = ref.split("@")[0]
            ghost = _post(url, a, path, {**body, "model": ref.replace(name, "ghost-x")}).json()["error"]
            assert ghost["code"] == "model_not_found"
            assert r.json()["error"] == {**ghost, "message": ghost["message"].replace("ghost-x", name)}, (ref, path)
        card = httpx.get(f"{url}/v1/models/{ref}", headers={"Authorization": f"Bearer {a}"}, timeout=30)
        assert card.status_code == 404 and card.json()["error"]["code"] == "model_not_found", ref
    # /v1/models lists only what the key may use; team-b's scope names the base model too.
    ids_a = {m.id for m in _client(url, a).models.list()}
    assert ids_a and all(i.startswith("team-a-") for i in ids_a), ids_a
    assert {"team-a-chat", "team-a-chat@1", "team-a-chat@production", "team-a-code"} <= ids_a
    ids_b = {m.id for m in _client(url, secrets["team-b"]).models.list()}
    assert ids_b == {"tiny", "team-b-bot", "team-b-bot@1", "team-b-bot@production"}, ids_b
    assert _client(url, secrets["team-b"]).chat.completions.create(
        model="tiny", max_tokens=2, messages=[{"role": "user", "content": "hi"}]).choices
    # The server's own --api-key sees everyone.
    ids_root = {m.id for m in _client(url, ROOT).models.list()}
    assert ids_a | ids_b <= ids_root


def test_missing_unknown_revoked_and_expired_keys_get_401(tenants):
    url, registry, secrets, _ = tenants
    body = {"model": "team-a-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert _post(url, None, "/v1/chat/completions", body).status_code == 401
    r = _post(url, "ahk-not-a-key", "/v1/chat/completions", body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert _post(url, secrets["doomed"], "/v1/chat/completions", body).status_code == 200
    registry.keys.revoke("doomed")
    assert _eventually_status(url, secrets["doomed"], body) == 401
    r = _post(url, secrets["doomed"], "/v1/chat/completions", body)
    assert "revoked" in r.json()["error"]["message"] and secrets["doomed"] not in r.text
    # A key created now works on the next request (an unknown secret makes the server look again).
    _, fresh = registry.keys.create("fresh", ["team-a-*"], expires_days=1.5 / 86400)
    assert _post(url, fresh, "/v1/chat/completions", body).status_code == 200
    time.sleep(1.6)
    r = _post(url, fresh, "/v1/chat/completions", body)
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def _eventually_status(url: str, key: str, body: dict, want: int = 401, within: float = 15) -> int:
    deadline = time.monotonic() + within
    while True:
        status = _post(url, key, "/v1/chat/completions", body).status_code
        if status == want or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_the_request_limit_holds_under_32_concurrent_requests(tenants):
    url, _, secrets, _ = tenants
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=secrets["limited"], max_retries=0, timeout=120)

    async def one():
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="team-a-chat", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
            return 200, raw.headers
        except openai.RateLimitError as e:
            return 429, e.response

    async def burst():
        return await asyncio.gather(*(one() for _ in range(32)))

    results = asyncio.run(burst())
    ok = [h for s, h in results if s == 200]
    refused = [r for s, r in results if s == 429]
    assert len(ok) == 5 and len(refused) == 27
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in ok) == [0, 1, 2, 3, 4]
    assert all(h["x-ratelimit-limit-requests"] == "5" for h in ok)
    for r in refused:
        err = r.json()["error"]
        assert err["code"] == "rate_limit_exceeded" and "limit 5" in err["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60 and r.headers["x-ratelimit-remaining-requests"] == "0"
    # Another key is not slowed or refused by this one's limit.
    assert _post(url, secrets["team-a"], "/v1/chat/completions", {
        "model": "team-a-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code == 200


def test_the_token_limit_reserves_the_completion_budget(tenants):
    url, _, secrets, _ = tenants
    key = secrets["tokens"]  # tpm 60
    body = {"model": "team-a-chat", "messages": [{"role": "user", "content": "hi"}]}
    r = _post(url, key, "/v1/chat/completions", {**body, "max_tokens": 100})
    assert r.status_code == 400 and "allows 60 tokens per minute" in r.json()["error"]["message"]
    prompt = _post(url, key, "/tokenize", {"model": "team-a-chat", "messages": body["messages"],
                                          "add_generation_prompt": True}).json()["count"]
    assert prompt + 20 <= 60
    # Sequential requests: each reserves prompt + 20 and is then charged what it used; the one whose
    # reservation no longer fits in what is left of the minute is refused, and nothing after it passes.
    used, statuses, expected = 0, [], []
    for _ in range(5):
        expected.append(200 if used + prompt + 20 <= 60 else 429)
        r = _post(url, key, "/v1/chat/completions", {**body, "max_tokens": 20})
        statuses.append(r.status_code)
        if r.status_code == 200:
            used += r.json()["usage"]["total_tokens"]
            assert int(r.headers["x-ratelimit-remaining-tokens"]) == 60 - (used - r.json()["usage"]["total_tokens"]) \
                - prompt - 20  # at admission: what was left minus this request's reservation
        else:
            assert r.json()["error"]["type"] == "tokens" and "tokens per min (TPM)" in r.json()["error"]["message"]
    assert statuses == expected and 429 in statuses, (statuses, prompt, used)


def test_admin_routes_need_an_admin_key_and_its_use_is_in_history(tenants):
    url, registry, secrets, _ = tenants
    load = {"model": "team-a-code"}
    r = _post(url, secrets["team-a"], "/v1/adapters/load", load)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {secrets['team-a']}"}).status_code == 403
    assert _post(url, secrets["ops"], "/v1/adapters/load", load).status_code == 200
    events = registry.keys.history("ops")
    assert [(e.action, e.detail) for e in events][-1] == ("admin", "POST /v1/adapters/load")
    metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {secrets['ops']}"}).text
    assert 'adapterhub_key_requests_total{key="team-a",status="200"}' in metrics
    assert all(s not in metrics for s in secrets.values())


def test_usage_is_metered_per_key_and_version(tenants):
    url, registry, secrets, _ = tenants
    before = {(u.key, u.model): u for u in registry.keys.usage("team-b")}
    client = _client(url, secrets["team-b"])
    answers = [client.chat.completions.create(model="team-b-bot@production", max_tokens=3,
                                              messages=[{"role": "user", "content": "hi"}]) for _ in range(3)]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = {(u.key, u.model): u for u in registry.keys.usage("team-b")}
        row, old = now.get(("team-b", "team-b-bot@1")), before.get(("team-b", "team-b-bot@1"))
        if row is not None and row.requests - (old.requests if old else 0) == 3:
            break
        time.sleep(0.2)
    assert row is not None and row.requests - (old.requests if old else 0) == 3
    assert row.completion_tokens - (old.completion_tokens if old else 0) == sum(
        a.usage.completion_tokens for a in answers)
    assert row.prompt_tokens - (old.prompt_tokens if old else 0) == sum(a.usage.prompt_tokens for a in answers)
    assert next(k for k in registry.keys.list() if k.name == "team-b").last_used_at is not None


def test_a_stored_response_is_its_tenants_only(tenants):
    url, _, secrets, _ = tenants
    resp = _client(url, secrets["team-a"]).responses.create(model="team-a-chat", input="hi", max_output_tokens=2)
    other = httpx.get(f"{url}/v1/responses/{resp.id}", headers={"Authorization": f"Bearer {secrets['team-b']}"})
    assert other.status_code == 404
    mine = httpx.get(f"{url}/v1/responses/{resp.id}", headers={"Authorization": f"Bearer {secrets['team-a']}"})
    assert mine.status_code == 200 and mine.json()["id"] == resp.id
    gone = httpx.delete(f"{url}/v1/responses/{resp.id}", headers={"Authorization": f"Bearer {secrets['team-b']}"})
    assert gone.status_code == 404 and _client(url, secrets["team-a"]).responses.retrieve(resp.id).id == resp.id


def test_without_a_key_health_says_only_ok(tenants):
    url, _, secrets, _ = tenants
    assert httpx.get(url + "/health").json() == {"status": "ok", "registry": "ok"}
    assert "engine" in httpx.get(url + "/health", headers={"Authorization": f"Bearer {secrets['team-a']}"}).json()
    assert httpx.get(url + "/openapi.json").status_code == 401
    assert httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {secrets['team-a']}"}).status_code == 200


def test_the_window_slides_and_charges_what_was_used(monkeypatch):
    """The limiter alone, on a clock the test moves: a minute-old request stops counting, a request is
    charged its actual tokens instead of its reservation, a refund counts for nothing."""
    from adapterhub.registry.keys import KeyRecord
    from adapterhub.serving import tenants
    from adapterhub.serving.metrics import Metrics

    clock = [1000.0]
    monkeypatch.setattr(tenants.time, "time", lambda: clock[0])
    ring = tenants.KeyRing(None, None, Metrics())
    caller = tenants.Caller(KeyRecord("k", ("*",), rpm=2, tpm=100))
    first = ring.admit(caller, 60)
    clock[0] += 30
    with pytest.raises(tenants.RateLimitError) as refused:  # 60 reserved + 50 > 100
        ring.admit(caller, 50)
    assert refused.value.error_type == "tokens" and refused.value.headers["retry-after"] == "30"
    ring.settle(first, "m@1", 10, 5)  # it used 15, not 60
    second = ring.admit(caller, 50)
    assert caller.headers["x-ratelimit-remaining-tokens"] == "35"
    assert caller.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(tenants.RateLimitError) as refused:
        ring.admit(caller, 1)
    assert refused.value.error_type == "requests" and refused.value.headers["retry-after"] == "30"
    ring.refund(second)
    third = ring.admit(caller, 50)
    clock[0] += 30.5  # the first request is a minute old: out of the window
    ring.admit(caller, 40)
    assert caller.headers["x-ratelimit-remaining-tokens"] == "10"  # 100 - third's 50 - 40
    assert third.counted and not first.counted
    with pytest.raises(tenants.UserInputError):
        ring.admit(caller, 101)  # alone more than the limit: a 400, not a 429 to retry forever
