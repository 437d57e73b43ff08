"""``adapterhub serve --ray`` on a local Ray cluster started here: 2 engine replicas of the tiny model behind one
ingress. The API is the single server's (same OpenAPI paths, same error bodies), streams pass through, each
adapter sticks to one replica, an alias move is followed on the next request, /metrics covers both replicas,
and a killed replica costs a clean error to what was in flight on it and nothing to what comes after."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import time
from collections import defaultdict

import httpx
import openai
import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.serving.config import ServeConfig
from adapterhub.settings import Settings

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray[serve] not installed")]
HEADER = "x-adapterhub-replica"
_PROBE_DEADLINE = "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tiny_model, **kw) -> ServeConfig:
    return ServeConfig(base=str(tiny_model), served_name="tiny", max_loaded=4, max_lora_rank=8, dtype="fp32",
                       replicas=2, replica_cpus=0.5, **kw)


@pytest.fixture(scope="module")
def cluster(tiny_model, tiny_adapters, tmp_path_factory):
    """(url, registry): ad0 (versions 1 and 2, @production on 1), ad1..ad3 and st behind 2 replicas."""
    import ray
    from ray import serve

    from adapterhub.deploy.ray.app import build_app

    home = tmp_path_factory.mktemp("ray-home")
    registry = Registry.open(Settings(home=home))
    base = resolve_model(str(tiny_model), Settings(home=home)).identity()
    for i, path in enumerate(tiny_adapters):
        registry.register(path, f"ad{i}", base_model=base)
    registry.register(tiny_adapters[1], "ad0", base_model=base)  # ad0@2: other weights than ad0@1
    registry.set_alias("ad0@1", "production")
    # the streaming test's own adapter: its back-to-back requests may load it on both replicas before Ray's
    # router learns where it went, which must not leak into the stickiness test's adapters
    registry.register(tiny_adapters[2], "st", base_model=base)
    # Ray's router asks a replica its queue length before sending; if the answer takes longer than this deadline
    # (0.1 s by default, easily missed on a busy 2-core CI machine) it falls back to the replica holding the
    # fewest adapters, loading the adapter there too. Ray's processes inherit this from the driver.
    saved = os.environ.get(_PROBE_DEADLINE)
    os.environ[_PROBE_DEADLINE] = "1.0"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"ADAPTERHUB_HOME": str(home), "HF_HUB_OFFLINE": "1"}})
    port = _port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(_config(tiny_model), home=str(home)), name="adapterhub", route_prefix="/")
        yield f"http://127.0.0.1:{port}", registry
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop(_PROBE_DEADLINE) if saved is None else os.environ.__setitem__(_PROBE_DEADLINE, saved)


def _wait_until_ray_knows(ref: str, timeout_s: float = 60) -> None:
    """Wait until a replica's report of its loaded routing keys (``name@version#hash``), which Ray's routers
    follow, lists version ``ref``.

    Replicas report every 0.1 s to the Serve controller, which broadcasts to the routers; a fixed sleep was not
    enough on a busy CI machine. The controller's view is read through Ray's test hook; if this Ray lacks it,
    fall back to waiting 3 s."""
    import ray
    from ray.serve._private.common import DeploymentID
    from ray.serve.context import _get_global_client

    try:
        controller = _get_global_client()._controller
        dump = controller._dump_replica_states_for_testing
    except AttributeError:
        time.sleep(3)
        return
    deployment = DeploymentID(name="EngineReplica", app_name="adapterhub")
    deadline = time.monotonic() + timeout_s
    while True:
        replicas = ray.get(dump.remote(deployment)).get()
        known = [k for r in replicas for k in r.multiplexed_model_ids]
        if any(k.startswith(ref + "#") for k in known):
            time.sleep(0.5)  # the controller's broadcast to the routers
            return
        assert time.monotonic() < deadline, f"no replica reported {ref} in {timeout_s} s, only {known}"
        time.sleep(0.1)


def _chat(c: httpx.Client, url: str, model: str, **kw) -> httpx.Response:
    body = {"model": model, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "hello"}], **kw}
    return c.post(url + "/v1/chat/completions", json=body)


def _single_server(tiny_model):
    from adapterhub.serving.api import create_app
    from adapterhub.serving.engines.hf import HFEngine

    m = resolve_model(str(tiny_model), Settings())
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, max_loaded=4, max_lora_rank=8, dtype="fp32")
    return create_app(_config(tiny_model), engine=engine, registry=None, base_name="tiny")


def test_the_api_is_the_single_servers(cluster, tiny_model):
    url, _ = cluster
    from starlette.testclient import TestClient

    with httpx.Client(timeout=120) as c, TestClient(_single_server(tiny_model)) as single:
        assert sorted(c.get(url + "/openapi.json").json()["paths"]) == sorted(single.get("/openapi.json").json()["paths"])
        for body in ({"model": "ghost", "messages": [{"role": "user", "content": "hi"}]},
                     {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
                     {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "best_of": 2}):
            ray_r, single_r = c.post(url + "/v1/chat/completions", json=body), single.post("/v1/chat/completions", json=body)
            assert ray_r.status_code == single_r.status_code and ray_r.status_code in (400, 404)
            if body["model"] != "ghost":  # (the single server here runs without a registry: its 404 differs)
                assert ray_r.json() == single_r.json()
        r = c.post(url + "/v1/chat/completions", content=b"x" * (17 * 2**20))
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert c.get(url + "/v1/models").json()["data"][0]["id"] == "tiny"
        assert c.get(url + "/ui/").status_code == 200  # the console comes along


def test_streaming_passes_through_and_a_disconnect_cancels(cluster):
    url, _ = cluster
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    whole = client.chat.completions.create(model="st", messages=[{"role": "user", "content": "hello"}], max_tokens=12,
                                           temperature=0).choices[0].message.content
    chunks = list(client.chat.completions.create(model="st", messages=[{"role": "user", "content": "hello"}],
                                                 max_tokens=12, temperature=0, stream=True))
    assert len(chunks) > 3 and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    # Read the first event of a long stream, then hang up: the replica counts the request as cancelled.
    with httpx.Client(timeout=120) as c:
        with c.stream("POST", url + "/v1/chat/completions", json={
                "model": "st", "max_tokens": 400, "ignore_eos": True, "stream": True,
                "messages": [{"role": "user", "content": "hello"}]}) as r:
            assert r.headers[HEADER] and r.headers["content-type"].startswith("text/event-stream")
            next(r.iter_lines())
        deadline = time.monotonic() + 30
        while 'status="cancelled"' not in (text := c.get(url + "/metrics").text):
            assert time.monotonic() < deadline, "the abandoned stream was never cancelled"
            time.sleep(0.5)
        line = next(x for x in text.splitlines() if 'status="cancelled"' in x and "adapterhub_requests_total" in x)
        assert 'replica="' in line and 'name="st"' in line


def test_each_adapter_sticks_to_one_replica_and_metrics_cover_both(cluster):
    url, _ = cluster
    served_by: dict[str, set[str]] = defaultdict(set)
    answers: dict[str, set[str]] = defaultdict(set)
    with httpx.Client(timeout=120) as c:
        for i in range(4):  # the first request per adapter loads it on the replica holding the fewest
            assert _chat(c, url, f"ad{i}").status_code == 200
            _wait_until_ray_knows("ad0@2" if i == 0 else f"ad{i}@1")  # …as Ray's router knows once reported
        for _ in range(10):
            for i in range(4):
                r = _chat(c, url, f"ad{i}")
                assert r.status_code == 200, r.text
                assert r.json()["model"] == f"ad{i}"  # the client sees the name it asked for
                served_by[f"ad{i}"].add(r.headers[HEADER])
                answers[f"ad{i}"].add(r.json()["choices"][0]["message"]["content"])
        assert all(len(replicas) == 1 for replicas in served_by.values()), dict(served_by)
        assert len(set().union(*served_by.values())) == 2  # …and the adapters are spread over both replicas
        assert all(len(a) == 1 for a in answers.values())
        # spellings of one version share its routing key, hence its replica: ad0 is ad0@2 (the latest)
        assert {_chat(c, url, "ad0@2").headers[HEADER]} == served_by["ad0"]
        first = _chat(c, url, "ad0@1").headers[HEADER]  # loads ad0@1 somewhere…
        _wait_until_ray_knows("ad0@1")  # …which Ray's router learns from the replica's next report
        assert {_chat(c, url, m).headers[HEADER] for m in ("ad0@1", "ad0@production", "ad0@1")} == {first}
        metrics = c.get(url + "/metrics").text
    replicas = {line.split('replica="')[1].split('"')[0] for line in metrics.splitlines() if 'replica="' in line}
    assert replicas == set().union(*served_by.values())
    assert sum(1 for line in metrics.splitlines() if line.startswith("# TYPE adapterhub_requests_total")) == 1


def test_an_alias_move_is_followed_on_the_next_request(cluster):
    url, registry = cluster
    with httpx.Client(timeout=120) as c:
        v1, v2 = (_chat(c, url, f"ad0@{v}").json()["choices"][0]["message"]["content"] for v in (1, 2))
        assert v1 != v2
        assert _chat(c, url, "ad0@production").json()["choices"][0]["message"]["content"] == v1
        registry.set_alias("ad0@2", "production")
        assert _chat(c, url, "ad0@production").json()["choices"][0]["message"]["content"] == v2
        registry.set_alias("ad0@1", "production")


def test_a_killed_replica_ends_its_stream_cleanly_and_the_next_requests_succeed(cluster):
    import ray

    url, _ = cluster
    actors = {n["name"].rsplit("#", 1)[-1]: n for n in ray.util.list_named_actors(all_namespaces=True)
              if "EngineReplica" in n["name"]}
    assert len(actors) == 2
    with httpx.Client(timeout=120) as c:
        with c.stream("POST", url + "/v1/chat/completions", json={
                "model": "ad2", "max_tokens": 400, "ignore_eos": True, "stream": True,
                "messages": [{"role": "user", "content": "hello"}]}) as r:
            lines = r.iter_lines()
            first = next(lines)
            victim = actors[r.headers[HEADER]]
            ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
            rest = [line for line in lines if line]
        assert first.startswith("data: ")
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2].removeprefix("data: "))
        assert error["error"]["code"] == "replica_unavailable"
        statuses = [_chat(c, url, f"ad{i % 4}").status_code for i in range(20)]
        assert statuses == [200] * 20
