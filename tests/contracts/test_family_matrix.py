"""The whole path for every model family: train 5 steps with ``adapterhub train``'s pipeline → register →
serve on the hf engine (greedy text equals peft's for a base row and an adapter row in one batch) →
merge (the parity check passes) → chat answers. Tiny random models of Llama, Qwen2, Mistral, Gemma2,
Phi-3 (fused projections), GPT-NeoX, GPT-2 (Conv1D), Qwen2-MoE (LoRA on attention, shared expert and
router linears; peft's expert-tensor LoRA is refused by the engine) and a ``trust_remote_code`` model
written here."""

from __future__ import annotations

import asyncio
import io
import json
import shutil

import pytest
import torch

from adapterhub.registry import Registry
from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
from adapterhub.settings import Settings
from tests.builders import build_tokenizer
from tests.serving.engines.test_model_families import FAMILIES, _config, _reference
from tests.serving.engines.test_remote_code import make_remote

MATRIX = [*FAMILIES, "qwen2_moe", "remote"]


def _build(family: str, out) -> None:
    import transformers as t

    tok = build_tokenizer(out)
    torch.manual_seed(0)
    if family == "qwen2_moe":
        cfg = t.Qwen2MoeConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                               shared_expert_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                               max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    else:
        cfg = _config("llama" if family == "remote" else family, tok)
    model = t.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
    model.save_pretrained(str(out))
    if family == "remote":
        make_remote(out)


@pytest.mark.parametrize("family", MATRIX)
def test_train_register_serve_merge_chat(family, dataset, tmp_path):
    from adapterhub.export.merge import merge
    from adapterhub.serving.api import chat
    from adapterhub.serving.engines.hf import HFEngine
    from adapterhub.training.run import train
    from tests.training.test_run import config

    base = tmp_path / family
    _build(family, base)
    remote = family == "remote"
    cfg = config(base, dataset, **{"name": f"m-{family}", "train.max_steps": 5, "train.lr": 2e-2,
                                   "eval.inputs": [], "model.trust_remote_code": remote})
    result = train(cfg, Settings(), output=tmp_path / "run")
    assert result.record is not None and result.steps == 5
    registry = Registry.open(Settings())
    ref = result.record.ref
    adapter = registry.path(ref)
    targets = set(json.loads((adapter / "adapter_config.json").read_text())["target_modules"])

    engine = HFEngine(base, model_id=family, max_loaded=2, max_lora_rank=8, dtype="fp32", max_batch_size=4,
                      trust_remote_code=remote)
    engine.start()
    try:
        engine.load_adapter("ad", adapter)
        ids = engine.encode_chat([{"role": "user", "content": "what is red"}], None)

        async def both():
            async def one(key):
                return "".join([d.text async for d in engine.generate(
                    GenerationRequest(ids, SamplingParams(max_tokens=8), key))])

            return await asyncio.gather(one(None), one("ad"))  # one batch: a base row and an adapter row

        base_text, adapter_text = asyncio.run(both())
    finally:
        engine.stop()
    assert base_text == _reference(base, None, ids, 8, trust=remote)
    assert adapter_text == _reference(base, adapter, ids, 8, trust=remote), (family, sorted(targets))
    assert adapter_text != base_text

    merged = merge(registry, Settings(), ref, tmp_path / "merged", dtype="fp32", trust_remote_code=remote)
    assert merged.parity["exact_match"] == 1.0, merged.parity

    out = io.StringIO()
    turns = chat(str(base), adapter=ref, stdin=io.StringIO("what is red\n/exit\n"), stdout=out, max_tokens=8,
                 trust_remote_code=remote)
    assert turns == 1 and adapter_text.strip() in out.getvalue()
    shutil.rmtree(tmp_path / "merged")


def test_lora_on_moe_expert_tensors_is_refused_with_the_reason(tmp_path):
    """peft's LoRA on MoE expert parameters (``target_parameters``) cannot be applied per request."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapterhub.serving.adapters import engine_problems
    from adapterhub.serving.engines.hf import HFEngine

    base = tmp_path / "moe"
    _build("qwen2_moe", base)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"],
                                                  target_parameters=["mlp.experts.gate_up_proj"]))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    engine = HFEngine(base, model_id="moe", max_lora_rank=8, dtype="fp32")
    problems = engine_problems(tmp_path / "adapter", engine)
    assert any("mlp.experts.gate_up_proj" in p and "merge it" in p for p in problems), problems
    # the registry keeps it (it is a valid peft adapter), the server says why it cannot serve it
    from adapterhub.registry.validation import validate_adapter_dir

    info = validate_adapter_dir(tmp_path / "adapter", base=str(base))
    assert any(m.endswith("q_proj") for m in info.modules)
