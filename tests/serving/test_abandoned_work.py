"""What one client can do to the others: work that is refused or abandoned stops at once (its sequences
leave the queue and the batch, counted as cancelled, never as 200), and a huge prompt is tokenized off the
event loop while another client's stream keeps flowing. Real server, real engine; the assertions are
about what happened (queue emptied, rows dropped, chunks kept arriving), with deadlines only so a
failure ends."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.server import running_server

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def server(tiny_json_model, tmp_path_factory):
    m = resolve_model(str(tiny_json_model), Settings())
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, dtype="fp32", max_waiting=8,
                      max_batch_size=4)
    app = create_app(ServeConfig(base="tiny", max_waiting=8), engine=engine,
                     registry=Registry(LocalStore(tmp_path_factory.mktemp("reg"))), base_name="tiny")
    with running_server(app) as url:
        yield url, engine
    engine.stop()


def wait_until(cond, what: str, limit_s: float = 60) -> None:
    deadline = time.time() + limit_s
    while not cond():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_a_request_bigger_than_the_queue_is_refused_before_anything_is_queued(server):
    url, engine = server
    r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": ["a", "b", "c"], "n": 3,
                                                  "max_tokens": 100, "ignore_eos": True}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "n" and "needs 9 sequences" in err["message"] and "at most 8" in err["message"]
    assert engine.queue_depth() == 0
    small = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3}, timeout=60)
    assert small.status_code == 200


def test_an_abandoned_non_streamed_request_is_cancelled_and_not_counted_as_200(server):
    url, engine = server
    before = engine.cancelled
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after a second
        httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "n": 4, "max_tokens": 1500,
                                                  "ignore_eos": True}, timeout=httpx.Timeout(60, read=1.0))
    wait_until(lambda: engine.cancelled >= before + 4, "the abandoned choices kept running")
    assert engine.queue_depth() == 0
    metrics = httpx.get(url + "/metrics").text
    assert 'status="cancelled"' in metrics and 'endpoint="completions"' in metrics
    done = [line for line in metrics.splitlines() if line.startswith("adapterhub_requests_total")
            and 'status="cancelled"' in line]
    assert done and float(done[0].rsplit(" ", 1)[1]) >= 1
    # the server answers the next client at once
    small = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3}, timeout=60)
    assert small.status_code == 200


def test_a_huge_prompt_does_not_stop_another_clients_stream(server):
    url, _ = server
    arrivals: list[float] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=120, json={
                "model": "tiny", "messages": MSG, "max_tokens": 400, "ignore_eos": True, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                    arrivals.append(time.monotonic())
                    started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(60)
    huge = "paris " * 700_000  # 4.2 MB: seconds of tokenizing, then too long for the context
    t0 = time.monotonic()
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": huge}], "max_tokens": 2}, timeout=120)
    t1 = time.monotonic()
    t.join(120)
    assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"], r.text[:300]
    during = [a for a in arrivals if t0 < a < t1]
    # the other stream kept getting tokens while the huge prompt was parsed and tokenized
    assert len(during) >= 3, (len(during), t1 - t0)
