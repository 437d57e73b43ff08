"""The line of sequences waiting to start is bounded in requests (--max-waiting) and in prompt tokens
(--max-waiting-tokens): past either a request is refused with 503 and Retry-After, never queued; one that
alone needs more than the bound is a 400 naming it; what waits is not disturbed and is answered once the
engine has room. The engine's worker is held at its decode step (an event, not a timing), so who waits is
known exactly. Real server, official client."""

from __future__ import annotations

import threading

import openai
import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.serving.engines.hf import batch as batching
from adapterhub.settings import Settings
from tests.server import running_server

BOUND = 100  # prompt tokens that may wait


@pytest.fixture()
def held(tiny_json_model, tmp_path, monkeypatch):
    """A server whose one batch row is held at its decode step until ``gate`` is set."""
    m = resolve_model(str(tiny_json_model), Settings())
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, dtype="fp32", max_batch_size=1,
                      max_waiting=8, max_waiting_tokens=BOUND)
    gate, decoding = threading.Event(), threading.Event()
    decode = batching.decode_step

    def held_step(model, lora, batch, device):
        decoding.set()
        assert gate.wait(120), "the test never opened the gate"
        return decode(model, lora, batch, device)

    monkeypatch.setattr(batching, "decode_step", held_step)
    app = create_app(ServeConfig(base="tiny", max_waiting=8, max_waiting_tokens=BOUND), engine=engine,
                     registry=Registry(LocalStore(tmp_path / "reg")), base_name="tiny")
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        try:
            yield client, engine, gate, decoding
        finally:
            gate.set()
            engine.stop()


def until(cond, what: str) -> None:
    ev = threading.Event()
    for _ in range(1200):
        if cond():
            return
        ev.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_prompt_tokens_past_the_bound_get_503_and_the_waiting_are_answered(held):
    client, engine, gate, decoding = held
    answers: dict[str, openai.types.Completion] = {}

    def send(name: str, n_tokens: int) -> threading.Thread:
        def run() -> None:
            answers[name] = client.completions.create(model="tiny", prompt=[7] * n_tokens, max_tokens=4,
                                                      extra_body={"ignore_eos": True})
        t = threading.Thread(target=run)
        t.start()
        return t

    threads = [send("running", 5)]
    assert decoding.wait(60)  # in the batch, not waiting
    threads.append(send("long", 60))
    until(lambda: (engine.queue_depth(), engine.line.tokens) == (1, 60), "the 60-token prompt to wait")

    with pytest.raises(openai.InternalServerError) as busy:  # 60 + 50 > 100
        client.completions.create(model="tiny", prompt=[7] * 50, max_tokens=4)
    assert busy.value.status_code == 503 and busy.value.response.headers["retry-after"] == "1"
    assert "prompt tokens waiting" in busy.value.message and "--max-waiting-tokens 100" in busy.value.message

    with pytest.raises(openai.BadRequestError) as never:  # more than the whole line holds
        client.completions.create(model="tiny", prompt=[7] * 101, max_tokens=4)
    assert "101 tokens" in never.value.message and "--max-waiting-tokens" in never.value.message

    threads.append(send("fits", 40))  # 60 + 40 = 100: waits
    until(lambda: (engine.queue_depth(), engine.line.tokens) == (2, 100), "the 40-token prompt to wait")

    gate.set()
    for t in threads:
        t.join(120)
    assert sorted(answers) == ["fits", "long", "running"]
    assert all(a.usage.completion_tokens == 4 for a in answers.values())
    assert engine.prefills == 3  # one row per batch: the three admitted ran, the two refused never did
    assert (engine.queue_depth(), engine.line.tokens) == (0, 0)
    again = client.completions.create(model="tiny", prompt=[7] * 50, max_tokens=4)  # room again
    assert again.usage.prompt_tokens == 50 and again.usage.completion_tokens == 4


def test_requests_past_max_waiting_get_503_while_tokens_remain(held):
    client, engine, gate, decoding = held
    done: list[int] = []

    def one() -> None:
        done.append(client.completions.create(model="tiny", prompt=[7] * 2, max_tokens=2).usage.completion_tokens)

    threads = [threading.Thread(target=one) for _ in range(9)]  # one runs, eight wait
    threads[0].start()
    assert decoding.wait(60)
    for t in threads[1:]:
        t.start()
    until(lambda: engine.queue_depth() == 8, "eight requests to wait")
    with pytest.raises(openai.InternalServerError) as busy:
        client.completions.create(model="tiny", prompt=[7] * 2, max_tokens=2)
    assert "too many requests waiting (8 sequences)" in busy.value.message
    gate.set()
    for t in threads:
        t.join(120)
    assert done == [2] * 9 and engine.queue_depth() == 0
