"""The engine contract: every engine passes this suite (hf on CPU always, on CUDA when there is a GPU;
vLLM when installed — ``make test-vllm``).

Reference outputs come from plain transformers / peft ``generate`` on the same tiny model, so the
suite checks our batched LoRA math, not just self-consistency.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading

import pytest
import torch

from adapterhub.serving.engines.base import GenerationRequest, SamplingParams

PROMPT = [{"role": "user", "content": "hello who are you"}]


def _hf(tiny_model, device="cpu"):
    from adapterhub.serving.engines.hf import HFEngine

    return HFEngine(tiny_model, model_id="tiny", max_loaded=2, max_lora_rank=8, dtype="fp32", device=device)


def _hf_cuda(tiny_model):
    return _hf(tiny_model, "cuda")


def _vllm(tiny_model):
    from adapterhub.serving.engines.vllm import VLLMEngine

    return VLLMEngine(tiny_model, model_id="tiny", max_loaded=2, max_lora_rank=8, dtype="fp32")


ENGINES = [pytest.param(_hf, id="hf"),
           pytest.param(_hf_cuda, id="hf-cuda", marks=pytest.mark.gpu),
           pytest.param(_vllm, id="vllm", marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                                                   reason="vllm not installed"))]


@pytest.fixture(params=ENGINES)
def engine(request, tiny_model):
    eng = request.param(tiny_model)
    eng.start()
    yield eng
    eng.stop()


def run(engine, prompt_ids, key=None, **params):
    async def go():
        parts, last = [], None
        async for d in engine.generate(GenerationRequest(prompt_ids, SamplingParams(**params), key)):
            parts.append(d.text)
            last = d
        return "".join(parts), last

    return asyncio.run(go())


def reference(tiny_model, adapter_dir, prompt_ids, n):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ids = out[0][len(prompt_ids):].tolist()
    if tok.eos_token_id in ids:
        ids = ids[: ids.index(tok.eos_token_id)]
    return tok.decode(ids, skip_special_tokens=True)


def test_base_greedy_matches_transformers(engine, tiny_model):
    ids = engine.encode_chat(PROMPT, None)
    text, last = run(engine, ids, max_tokens=12)
    assert text == reference(tiny_model, None, ids, 12)
    assert last.finish_reason in ("stop", "length") and last.completion_tokens > 0


def test_adapter_greedy_matches_peft(engine, tiny_model, tiny_adapters):
    ids = engine.encode_chat(PROMPT, None)
    engine.load_adapter("a1", tiny_adapters[1])  # rank 8: the engine's max
    engine.load_adapter("a3", tiny_adapters[3])  # rank 2: zero-padded inside the slot
    assert sorted(engine.loaded_adapters()) == ["a1", "a3"]
    assert run(engine, ids, "a1", max_tokens=12)[0] == reference(tiny_model, tiny_adapters[1], ids, 12)
    assert run(engine, ids, "a3", max_tokens=12)[0] == reference(tiny_model, tiny_adapters[3], ids, 12)


def test_unload_then_new_adapter_does_not_reuse_state(engine, tiny_model, tiny_adapters):
    ids = engine.encode_chat(PROMPT, None)
    engine.load_adapter("x", tiny_adapters[1])
    engine.unload_adapter("x")
    assert "x" not in engine.loaded_adapters()
    engine.load_adapter("y", tiny_adapters[3])  # reuses the freed slot; rank 2 < 8 leaves no trace of x
    assert run(engine, ids, "y", max_tokens=12)[0] == reference(tiny_model, tiny_adapters[3], ids, 12)


def test_length_and_stop(engine):
    ids = engine.encode("the cat")
    text, last = run(engine, ids, max_tokens=6)
    assert last.finish_reason == "length" and last.completion_tokens == 6
    stop = text[2:4]
    cut, last = run(engine, ids, max_tokens=6, stop=(stop,))
    assert last.finish_reason == "stop" and cut == text[: text.find(stop)]


def test_capabilities(engine):
    caps = engine.capabilities
    assert caps.max_lora_rank == 8 and caps.context_length == 512
    assert {"q_proj", "v_proj", "down_proj"} <= caps.target_modules
    assert caps.module_shapes["q_proj"] == (64, 64)


def test_request_arriving_mid_decode_joins_the_running_batch(engine, tiny_adapters):
    """Continuous batching: a short request (on an adapter) sent while a long one (base) decodes
    finishes first, and both get exactly the text they get alone."""
    engine.load_adapter("a1", tiny_adapters[1])
    long_ids, short_ids = engine.encode("the cat"), engine.encode("hello who are you")
    long_alone, last = run(engine, long_ids, max_tokens=200)
    assert last.completion_tokens == 200  # really long: no early end of sequence
    short_alone = run(engine, short_ids, "a1", max_tokens=4)[0]
    assert short_alone != run(engine, short_ids, max_tokens=4)[0]  # the adapter changes it

    async def go():
        order, started = [], asyncio.Event()

        async def collect(ids, n, name, key=None, wait=None):
            if wait is not None:
                await wait.wait()
            parts = []
            async for d in engine.generate(GenerationRequest(ids, SamplingParams(max_tokens=n), key)):
                parts.append(d.text)
                started.set()
            order.append(name)
            return "".join(parts)

        texts = await asyncio.gather(collect(long_ids, 200, "long"), collect(short_ids, 4, "short", "a1", started))
        return texts, order

    texts, order = asyncio.run(go())
    assert texts == [long_alone, short_alone]
    assert order == ["short", "long"]  # it did not wait for the long request to finish


def test_a_caller_whose_event_loop_closes_does_not_fail_the_others(engine):
    ids = engine.encode("the cat")
    alone = run(engine, ids, max_tokens=120)[0]
    result = {}
    other = threading.Thread(target=lambda: result.update(text=run(engine, ids, max_tokens=120)[0]))
    other.start()

    async def leave_after_first_delta():
        async for _ in engine.generate(GenerationRequest(engine.encode("hello who are you"),
                                                         SamplingParams(max_tokens=120))):
            break  # asyncio.run then finalizes the stream and closes this loop while the batch runs on

    asyncio.run(leave_after_first_delta())
    other.join(timeout=300)
    assert result.get("text") == alone
