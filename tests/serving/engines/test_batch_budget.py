"""The hf engine's batch admission: rows are left-padded to the longest, so a request joins the running batch
only while rows × the longest row stays within ``max_batch_tokens``. A long prompt waits for room (and runs
alone at worst) instead of making every row's KV cache that long; it is not overtaken for ever, and a request
cancelled while it waits leaves at once."""

from __future__ import annotations

import asyncio

import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.serving.config import HF_MAX_BATCH, ServeConfig
from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.serving.engines.hf import batch as batching
from adapterhub.settings import Settings

BUDGET = 96


@pytest.fixture()
def engine(tiny_model, monkeypatch):
    m = resolve_model(str(tiny_model), Settings())
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, dtype="fp32", max_batch_size=8,
                      max_batch_tokens=BUDGET)
    engine.forwards = []  # (rows, padded width) of every batch a forward pass ran on
    decode = batching.decode_step

    def recording(model, lora, batch, device):
        engine.forwards.append((len(batch.rows), batch.mask.shape[1] + 1, [r.req.request_id for r in batch.rows]))
        return decode(model, lora, batch, device)

    monkeypatch.setattr(batching, "decode_step", recording)
    yield engine
    engine.stop()


def prompt(engine: HFEngine, words: int) -> list[int]:
    return engine.encode_chat([{"role": "user", "content": " ".join(["word"] * words)}], None)


async def until(cond, what: str, limit_s: float = 30) -> None:
    for _ in range(int(limit_s / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def answer(engine: HFEngine, ids: list[int], name: str, tokens: int = 12) -> str:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    return "".join([d.text async for d in engine.generate(GenerationRequest(ids, params, None, name))])


def test_a_long_prompt_waits_for_room_and_the_budget_holds_at_every_join(engine):
    short = prompt(engine, 4)
    long = prompt(engine, 60)
    assert 2 * len(short) + 12 < BUDGET < 2 * len(long)  # two short rows fit together; the long one only alone

    async def main() -> dict[str, str]:
        names = ["s0", "s1", "long", "s2", "s3"]
        tasks = {}
        for n in names:
            tasks[n] = asyncio.create_task(answer(engine, long if n == "long" else short, n))
            await asyncio.sleep(0.01)
        return {n: await t for n, t in tasks.items()}

    texts = asyncio.run(main())
    assert all(texts.values())  # everyone got an answer, the long prompt included
    with_long = [f for f in engine.forwards if "long" in f[2]]
    assert with_long and all(rows == 1 for rows, _, _ in with_long)  # it never made others' cache that long
    # Every batch that some request joined fitted the budget when it joined (it grows by a column per step).
    first_seen: dict[str, tuple[int, int]] = {}
    for rows, width, ids in engine.forwards:
        for i in ids:
            first_seen.setdefault(i, (rows, width))
    assert all(rows == 1 or rows * (width - 1) <= BUDGET for rows, width in first_seen.values())
    # First come, first served: the short requests sent after it did not start before it did.
    order = list(first_seen)
    assert order.index("long") < order.index("s2") and order.index("long") < order.index("s3")


def test_a_request_cancelled_while_it_waits_for_room_leaves_before_the_batch_ends(engine):
    short, long = prompt(engine, 4), prompt(engine, 60)

    async def main() -> tuple[bool, int, int]:
        running = asyncio.create_task(answer(engine, short, "running", tokens=200))
        await until(lambda: engine.forwards, "the first decode step")
        waiting = GenerationRequest(long, SamplingParams(max_tokens=4, ignore_eos=True), None, "waiting")
        stream = engine.generate(waiting)
        first = asyncio.create_task(stream.__anext__())
        # held: taken from the queue, but no room beside the running batch
        await until(lambda: engine.queue_depth() == 1 and not engine._queue.qsize(), "the long prompt to be held")
        first.cancel()
        waiting.cancel()  # what the server does when the client goes away
        await until(lambda: not engine.queue_depth(), "the cancelled request to leave")
        still_running, steps_then = not running.done(), len(engine.forwards)
        await running
        return still_running, steps_then, len(engine.forwards)

    still_running, steps_then, total = asyncio.run(main())
    assert engine.cancelled == 1
    assert still_running and steps_then < total  # it left while the 200-token row was still decoding
    assert not any("waiting" in f[2] for f in engine.forwards)


def test_batch_options_reach_each_engine_or_are_refused():
    assert ServeConfig().batch_limit == HF_MAX_BATCH
    assert ServeConfig(engine="vllm", max_batch_size=64).engine_args()["max_num_seqs"] == "64"
    assert "max_num_seqs" not in ServeConfig(engine="vllm").engine_args()  # vLLM keeps its own default
    with pytest.raises(ValueError, match="--max-batch-tokens is an hf engine option"):
        ServeConfig(engine="vllm", max_batch_tokens=4096)
    with pytest.raises(ValueError, match="--deterministic decodes one request at a time"):
        ServeConfig(deterministic=True, max_batch_tokens=4096)
