"""More adapters requested than there are slots: requests wait in line instead of failing, first come first
served, and a popular adapter cannot keep its slot while others wait (it stops taking new requests, drains,
and is evicted; its new requests queue behind). Only a full line is a 503, with Retry-After. Real engine,
registry and adapters; the assertions are about order and completion, never time."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from adapterhub.errors import OverloadedError
from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.adapters import AdapterManager
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.builders import build_lora_adapter
from tests.server import running_server


@pytest.fixture(scope="module")
def six(tiny_model, tmp_path_factory):
    """A registry with six adapters (ad0…ad5) for the tiny model, and the model's identity."""
    root = tmp_path_factory.mktemp("slots")
    m = resolve_model(str(tiny_model), Settings())
    registry = Registry(LocalStore(root / "registry"))
    for i in range(6):
        registry.register(build_lora_adapter(tiny_model, root / f"a{i}", seed=20 + i), f"ad{i}",
                          base_model={"id": "tiny", "fingerprint": m.fingerprint})
    return m, registry


def _engine(m, slots: int) -> HFEngine:
    return HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, dtype="fp32", max_loaded=slots,
                    max_lora_rank=8)


async def _settle() -> None:
    for _ in range(50):  # let every task run to its next wait (loads run on threads)
        await asyncio.sleep(0.02)


def test_waiting_requests_get_slots_in_arrival_order_and_a_busy_adapter_drains(six):
    m, registry = six
    engine = _engine(m, 2)
    order: list[str] = []

    async def scenario():
        mgr = AdapterManager(engine, registry, base_name="tiny", max_slot_waiters=3)
        held = {name: await mgr.acquire(name) for name in ("ad0", "ad1")}  # both slots busy

        async def want(name: str):
            lease = await mgr.acquire(name)
            order.append(name)
            return lease

        waiting = []
        for name in ("ad2", "ad3", "ad4"):
            waiting.append(asyncio.create_task(want(name)))
            await _settle()
        assert mgr.slot_waiting == 3 and not order
        assert mgr.waiting() == {("ad2", "1"): 1, ("ad3", "1"): 1, ("ad4", "1"): 1}  # per version, for /metrics
        # the line is full: the next request is refused, not queued
        with pytest.raises(OverloadedError, match="already waiting"):
            await mgr.acquire("ad5")
        # ad0 and ad1 are draining (one per waiter, as many as there are slots): a new ad0 request waits too
        late_ad0 = asyncio.create_task(want("ad0"))
        await _settle()
        assert not late_ad0.done()
        mgr.release(held.pop("ad0"))  # ad0 finishes: evicted, and the first in line (ad2) gets its slot
        await _settle()
        assert order == ["ad2"]
        mgr.release(held.pop("ad1"))
        await _settle()
        assert order == ["ad2", "ad3"]
        mgr.release(waiting[0].result())  # one slot frees: ad4 was in line before the late ad0
        await _settle()
        assert order == ["ad2", "ad3", "ad4"]
        mgr.release(waiting[1].result())
        await _settle()
        assert order == ["ad2", "ad3", "ad4", "ad0"]
        mgr.release(waiting[2].result())
        mgr.release(late_ad0.result())
        assert mgr.slot_waiting == 0 and mgr.waiting() == {}

    try:
        asyncio.run(scenario())
    finally:
        engine.stop()


def test_a_waiting_request_that_is_cancelled_leaves_the_line(six):
    m, registry = six
    engine = _engine(m, 1)

    async def scenario():
        mgr = AdapterManager(engine, registry, base_name="tiny")
        held = await mgr.acquire("ad0")
        gone = asyncio.create_task(mgr.acquire("ad1"))
        await _settle()
        assert mgr.slot_waiting == 1
        gone.cancel()  # the client went away
        await _settle()
        assert mgr.slot_waiting == 0
        nxt = asyncio.create_task(mgr.acquire("ad2"))
        await _settle()
        mgr.release(held)
        lease = await asyncio.wait_for(nxt, 60)
        assert lease.name == "ad2"
        mgr.release(lease)

    try:
        asyncio.run(scenario())
    finally:
        engine.stop()


def test_six_adapters_on_two_slots_all_answer_through_the_server(six):
    """The user's view: requests for six adapters sent at once to a server with two slots all get 200
    (before: 503 "all 2 adapter slots are pinned or in use")."""
    m, registry = six
    engine = _engine(m, 2)
    app = create_app(ServeConfig(base="tiny", max_loaded=2, max_lora_rank=8), engine=engine, registry=registry,
                     base_name="tiny")

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as c:
            return list(await asyncio.gather(*(
                c.post(url + "/v1/completions", json={"model": f"ad{i % 6}", "prompt": "hello", "max_tokens": 6,
                                                      "temperature": 0}) for i in range(12))))

    try:
        with running_server(app) as url:
            answers = asyncio.run(burst(url))
            assert [r.status_code for r in answers] == [200] * 12, [r.text for r in answers if r.status_code != 200]
            assert {r.json()["model"] for r in answers} == {f"ad{i}" for i in range(6)}
            alone = httpx.post(url + "/v1/completions", json={"model": "ad3", "prompt": "hello", "max_tokens": 6,
                                                              "temperature": 0}, timeout=60).json()
            assert alone["choices"][0]["text"] == answers[3].json()["choices"][0]["text"]  # its own adapter
            metrics = httpx.get(url + "/metrics").text
            assert 'adapterhub_slot_waiting 0.0' in metrics
            # every request's wait for its version is counted, per version: 12 + 1 requests over six versions
            waits = {line.split('name="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                     for line in metrics.splitlines() if line.startswith("adapterhub_adapter_wait_seconds_count")}
            assert waits == {f"ad{i}": 2.0 + (i == 3) for i in range(6)}
    finally:
        engine.stop()


def test_all_slots_pinned_is_a_503_with_retry_after(six):
    m, registry = six
    engine = _engine(m, 1)
    app = create_app(ServeConfig(base="tiny", max_loaded=1, max_lora_rank=8, adapters=["ad0"]), engine=engine,
                     registry=registry, base_name="tiny")
    try:
        with running_server(app) as url:
            r = httpx.post(url + "/v1/completions", json={"model": "ad1", "prompt": "hi", "max_tokens": 2}, timeout=60)
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert "pinned" in r.json()["error"]["message"]
    finally:
        engine.stop()


def test_requests_in_flight_per_version_are_a_gauge(six):
    m, registry = six
    engine = _engine(m, 2)
    app = create_app(ServeConfig(base="tiny", max_loaded=2, max_lora_rank=8), engine=engine, registry=registry,
                     base_name="tiny")
    try:
        with running_server(app) as url:
            seen = []
            with httpx.stream("POST", url + "/v1/completions", timeout=120, json={
                    "model": "ad2", "prompt": "hi", "max_tokens": 480, "n": 8, "ignore_eos": True,
                    "stream": True}) as r:
                for line in r.iter_lines():  # scrape while the answer streams (it holds ad2 until it ends)
                    if line.startswith("data: {") and not seen:
                        text = httpx.get(url + "/metrics").text
                        seen = [x for x in text.splitlines() if x.startswith("adapterhub_requests_in_flight{")]
                assert seen == ['adapterhub_requests_in_flight{name="ad2",version="1"} 1.0'], seen
            text = ""
            for _ in range(100):  # the stream was closed: the request leaves
                text = httpx.get(url + "/metrics").text
                if 'adapterhub_requests_in_flight{name="ad2"' not in text:
                    break
                time.sleep(0.05)
            assert 'adapterhub_requests_in_flight{name="ad2"' not in text
    finally:
        engine.stop()


def test_an_adapter_drained_for_a_waiter_served_otherwise_takes_requests_again(six):
    """ad0 is marked to drain for the waiting ad2, but ad1 frees first and ad2 takes its slot: ad0 must not
    stay closed to new requests (it did: its new requests waited forever)."""
    m, registry = six
    engine = _engine(m, 2)

    async def scenario():
        mgr = AdapterManager(engine, registry, base_name="tiny")
        a0 = await mgr.acquire("ad0")
        a1 = await mgr.acquire("ad1")
        w2 = asyncio.create_task(mgr.acquire("ad2"))
        await _settle()
        assert not w2.done()
        mgr.release(a1)  # ad1 frees first: ad2 takes its slot
        lease2 = await asyncio.wait_for(w2, 60)
        again = await asyncio.wait_for(mgr.acquire("ad0"), 60)  # ad0 serves new requests again
        assert again.name == "ad0"
        for lease in (a0, again, lease2):
            mgr.release(lease)

    try:
        asyncio.run(scenario())
    finally:
        engine.stop()


def test_a_slot_being_emptied_is_not_counted_free(six, monkeypatch):
    """The engine frees an evicted adapter's slot at its next step; a second request arriving meanwhile waits
    for a slot instead of finding the engine full (before: 503 "all 1 adapter slots are in use")."""
    import threading

    m, registry = six
    engine = _engine(m, 1)
    gate = threading.Event()
    unload = engine.unload_adapter

    def slow_unload(key: str) -> None:  # the engine is mid-step: the slot is freed when the gate opens
        gate.wait(60)
        unload(key)

    monkeypatch.setattr(engine, "unload_adapter", slow_unload)

    async def scenario():
        mgr = AdapterManager(engine, registry, base_name="tiny")
        mgr.release(await mgr.acquire("ad0"))
        first = asyncio.create_task(mgr.acquire("ad1"))  # evicts ad0; its slot is not free yet
        await _settle()
        second = asyncio.create_task(mgr.acquire("ad2"))
        await _settle()
        assert not first.done() and not second.done()
        gate.set()
        mgr.release(await asyncio.wait_for(first, 60))
        lease = await asyncio.wait_for(second, 60)
        assert lease.name == "ad2"
        mgr.release(lease)

    try:
        asyncio.run(scenario())
    finally:
        engine.stop()
