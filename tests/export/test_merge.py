"""Merge: LoRA parity, QLoRA merged through dequantization (better than a naive merge), base mismatch
refused, and the merged artifact served by name."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from adapterhub.errors import UserInputError
from adapterhub.export.merge import merge
from adapterhub.loading.bases import resolve_model
from adapterhub.settings import Settings
from adapterhub.training.config import validate_config

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")


def test_lora_merge_matches_adapter_mode(registry, tiny_adapters, tiny_model, tmp_path):
    base = resolve_model(str(tiny_model), Settings()).identity()
    registry.register(tiny_adapters[1], "ad", base_model=base)
    result = merge(registry, Settings(), "ad@1", tmp_path / "merged", dtype="fp32", register_as="ad-merged")
    p = result.parity
    assert p["exact_match"] == 1.0 and p["max_logit_diff"] < 1e-3 and p["passed"]
    saved = json.loads((tmp_path / "merged" / "parity.json").read_text())
    assert saved["exact_match"] == 1.0 and saved["adapter"] == "ad@1"
    assert (tmp_path / "merged" / "model.safetensors").exists() and (tmp_path / "merged" / "tokenizer.json").exists()
    m = registry.manifest(result.record)
    assert m.kind == "model" and m.lineage["merged_from"] == "ad@1"

    from adapterhub.serving.api import build_engine
    from adapterhub.serving.config import ServeConfig

    engine, name = build_engine(ServeConfig(merged="ad-merged@1", dtype="fp32"), Settings(), registry)
    assert name == "ad-merged"
    ids = engine.encode_chat([{"role": "user", "content": "hello"}], None)
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([ids], device=engine.device)).logits.cpu()  # cuda on a GPU
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(tiny_adapters[1]))
    with torch.no_grad():
        assert torch.allclose(logits, ref(input_ids=torch.tensor([ids])).logits, atol=1e-3)


def test_base_mismatch_is_refused(registry, tiny_adapters, tiny_model, tmp_path):
    registry.register(tiny_adapters[0], "ad", base_model={"id": str(tiny_model), "fingerprint": "0123456789abcdef"})
    with pytest.raises(UserInputError, match="fingerprint 0123456789abcdef"):
        merge(registry, Settings(), "ad", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parity_threshold_fails_loudly(registry, tiny_adapters, tiny_model, tmp_path):
    from adapterhub.export.merge import ParityError

    registry.register(tiny_adapters[1], "ad", base_model=resolve_model(str(tiny_model), Settings()).identity())
    with pytest.raises(ParityError, match="threshold 101%"):
        merge(registry, Settings(), "ad", tmp_path / "out", dtype="fp32", threshold=1.01)
    assert (tmp_path / "out" / "parity.json").exists()  # the report is kept for inspection


@needs_bnb
def test_qlora_merge_dequantizes_and_beats_naive_merge(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapterhub.export.merge import _load_base
    from adapterhub.registry import Registry
    from adapterhub.training.run import train

    recs = [{"instruction": f"what is {w}", "output": f"{w} is a good day"} for w in ("red", "blue", "cat", "dog")]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    cfg = validate_config({"name": "q", "method": "qlora", "model": {"base": str(tiny_model), "dtype": "bf16"},
                           "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "data": {"path": str(tmp_path / "d.json")},
                           "train": {"max_steps": 6, "batch_size": 4, "lr": 1e-2}})
    settings = Settings()
    train(cfg, settings, output=tmp_path / "run")
    registry = Registry.open(settings)
    result = merge(registry, settings, "q@1", tmp_path / "merged", dtype="fp32", threshold=0.5)
    p = result.parity
    assert p["dequantized_from"] == "nf4" and p["passed"]

    # A naive merge into the original full-precision weights ignores what the adapter was trained on.
    naive = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                      str(registry.path("q@1"))).merge_and_unload()
    reference = PeftModel.from_pretrained(_load_base(tiny_model, True, torch.float32), str(registry.path("q@1")))
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    ids = torch.tensor([[5, 17, 42, 9, 77, 3]])
    with torch.no_grad():
        ref = reference(input_ids=ids.to(reference.device)).logits.float().cpu()  # the 4-bit base is on the GPU if any
        diff_ours = (ours(input_ids=ids).logits - ref).abs().max()
        diff_naive = (naive(input_ids=ids).logits - ref).abs().max()
    assert diff_ours < diff_naive


@needs_bnb
def test_merge_bits_writes_a_servable_4bit_variant(registry, tiny_adapters, tiny_model, tmp_path):
    registry.register(tiny_adapters[0], "ad", base_model=resolve_model(str(tiny_model), Settings()).identity())
    result = merge(registry, Settings(), "ad", tmp_path / "m", dtype="fp32", bits=4, threshold=0.0)
    qdir = result.quantized_dir
    assert qdir is not None and json.loads((qdir / "config.json").read_text())["quantization_config"]["load_in_4bit"]
    from adapterhub.serving.engines.hf import HFEngine

    engine = HFEngine(qdir, model_id="q4")
    assert engine.base_identity["quantization"] == "nf4"
    assert engine.encode_chat([{"role": "user", "content": "hi"}], None)


def test_default_merge_falls_back_to_fp32_when_bf16_loses_the_adapter(registry, tiny_model, tmp_path):
    """A LoRA whose delta is small next to the weights: bf16 rounding changes greedy answers (the demo
    model's 67%), so the default (bf16) merge keeps fp32 and says so, with every dtype's parity."""
    from tests.builders import build_lora_adapter

    adapter = build_lora_adapter(tiny_model, tmp_path / "small", seed=5, scale=0.02,
                                 targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    registry.register(adapter, "small", base_model=resolve_model(str(tiny_model), Settings()).identity())
    result = merge(registry, Settings(), "small@1", tmp_path / "merged", threshold=1.0)
    p = result.parity
    saved = json.loads((tmp_path / "merged" / "parity.json").read_text())
    assert saved["requested_dtype"] == "bf16" and set(saved["tried"]) == {"bf16", "fp32"}
    assert saved["tried"]["bf16"]["exact_match"] < 1.0 and saved["tried"]["fp32"]["exact_match"] == 1.0
    assert p["dtype"] == saved["dtype"] == "fp32" and p["passed"] and "saved in fp32" in p["note"]
    cfg = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "float32"
