"""Serving on CUDA (marked gpu; skipped without CUDA): a 4-bit base with LoRA adapters in the hf engine.

The engine contract suite covers the full-precision hf engine on CUDA (its ``hf-cuda`` case).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.contracts.test_engine_contract import PROMPT, run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")]


def _bnb4():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def test_4bit_base_with_adapters_matches_peft_on_the_same_4bit_base(tiny_model, tiny_adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapterhub.serving.engines.hf import HFEngine

    engine = HFEngine(tiny_model, model_id="tiny", bits=4, max_loaded=2, max_lora_rank=8, device="cuda")
    engine.start()
    try:
        assert engine.base_identity["quantization"] == "nf4"
        q = engine.model.model.layers[0].self_attn.q_proj.base
        assert type(q).__name__ == "Linear4bit" and q.weight.device.type == "cuda"
        ids = engine.encode_chat(PROMPT, None)
        engine.load_adapter("a1", tiny_adapters[1])
        base_text = run(engine, ids, max_tokens=10)[0]
        ours = run(engine, ids, "a1", max_tokens=10)[0]
    finally:
        engine.stop()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), quantization_config=_bnb4(),
                                                 device_map={"": 0})
    pm = PeftModel.from_pretrained(model, str(tiny_adapters[1])).eval()
    tok = engine.tokenizer
    out = pm.generate(input_ids=torch.tensor([ids], device="cuda"), max_new_tokens=10, do_sample=False,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ref_ids = out[0][len(ids):].tolist()
    if tok.eos_token_id in ref_ids:
        ref_ids = ref_ids[: ref_ids.index(tok.eos_token_id)]
    assert ours == tok.decode(ref_ids, skip_special_tokens=True)
    assert ours != base_text
