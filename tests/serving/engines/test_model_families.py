"""The hf engine serves LoRA adapters on any causal LM transformers builds, not only Llama-named
modules: tiny random models of several families (fused projections, GPT-NeoX names, GPT-2's Conv1D),
each with a peft LoRA on ``all-linear``, served in one mixed batch with a base row; every row's greedy
text must equal plain transformers / peft."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
from tests.builders import build_tokenizer


def _config(family: str, tok):
    import transformers as t

    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=256, **ids)
    return {
        "llama": lambda: t.LlamaConfig(num_key_value_heads=1, tie_word_embeddings=False, **small),
        "qwen2": lambda: t.Qwen2Config(num_key_value_heads=1, tie_word_embeddings=False, **small),
        "mistral": lambda: t.MistralConfig(num_key_value_heads=1, tie_word_embeddings=False, **small),
        "gemma2": lambda: t.Gemma2Config(num_key_value_heads=1, head_dim=32, **small),
        "phi3": lambda: t.Phi3Config(num_key_value_heads=2, tie_word_embeddings=False, **small),
        "gpt_neox": lambda: t.GPTNeoXConfig(tie_word_embeddings=False, **small),
        "gpt2": lambda: t.GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=256, **ids),
    }[family]()


FAMILIES = ["llama", "qwen2", "mistral", "gemma2", "phi3", "gpt_neox", "gpt2"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp(request.param)
    tok = build_tokenizer(root / "base")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(request.param, tok))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(str(root / "base"))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights=False))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(str(root / "adapter"))
    cfg = json.loads((root / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(root / "base")
    (root / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    return request.param, root / "base", root / "adapter", sorted(cfg["target_modules"])


def _reference(base, adapter, ids, n, trust=False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, trust_remote_code=trust)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    gen = out[0][len(ids):].tolist()
    if tok.eos_token_id in gen:
        gen = gen[: gen.index(tok.eos_token_id)]
    return tok.decode(gen, skip_special_tokens=True)


def test_mixed_batch_matches_peft_for_every_family(family):
    from adapterhub.serving.adapters import engine_problems
    from adapterhub.serving.engines.hf import HFEngine

    name, base, adapter, targets = family
    engine = HFEngine(base, model_id=name, max_loaded=2, max_lora_rank=8, dtype="fp32", max_batch_size=4)
    engine.start()
    try:
        assert engine_problems(adapter, engine) == []
        engine.load_adapter("ad", adapter)
        ids = engine.encode("the cat and the dog")

        async def both():
            async def one(key):
                parts = []
                async for d in engine.generate(GenerationRequest(ids, SamplingParams(max_tokens=10), key)):
                    parts.append(d.text)
                return "".join(parts)

            return await asyncio.gather(one(None), one("ad"))  # one batch: a base row and an adapter row

        base_text, adapter_text = asyncio.run(both())
        assert base_text == _reference(base, None, ids, 10)
        assert adapter_text == _reference(base, adapter, ids, 10), (name, targets)
        assert adapter_text != base_text
    finally:
        engine.stop()


def test_untargeted_layers_hold_no_lora_memory(family):
    from adapterhub.serving.engines.hf import HFEngine

    name, base, adapter, _ = family
    engine = HFEngine(base, model_id=name, max_loaded=2, max_lora_rank=8, dtype="fp32")
    assert all(layer.A is None for layer in engine.slots.layers.values())
    engine.load_adapter("ad", adapter)
    used = {n for n, layer in engine.slots.layers.items() if layer.A is not None}
    assert used and used == {n for n, layer in engine.slots.layers.items() if layer.users}
    engine.unload_adapter("ad")
    assert all(layer.A is None for layer in engine.slots.layers.values())
