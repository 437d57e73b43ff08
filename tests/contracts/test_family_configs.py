"""The built-in recipes of the source material (InternLM2-chat QLoRA self-cognition, dolly-v2-3b LoRA on
LaMini, Qwen2.5 and Llama 3) run as written on tiny random models of the same architectures: each
config's LoRA settings, template and data path are kept; only the base becomes a tiny local model, the
hub dataset a local file, and (no CUDA here) the 4-/8-bit base a full-precision one. Each trains 2 steps,
registers, and its adapter serves on the hf engine with peft's greedy text."""

from __future__ import annotations

import asyncio
import json

import pytest

from adapterhub.registry import Registry
from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
from adapterhub.settings import Settings
from tests.contracts.test_family_matrix import _build
from tests.serving.engines.test_model_families import _reference

CASES = {  # config → tiny architecture
    "internlm2_chat_1_8b_self_cognition": "remote",
    "dolly_v2_3b_lamini_lora": "gpt_neox",
    "qwen2_5_instruct_lora": "qwen2",
    "llama3_instruct_lora": "llama",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_builtin_recipe_trains_and_serves_on_a_tiny_model_of_its_architecture(name, tmp_path):
    import yaml

    from adapterhub.serving.engines.hf import HFEngine
    from adapterhub.training.config import builtin_configs, validate_config
    from adapterhub.training.run import train

    raw = yaml.safe_load(builtin_configs()[name].read_text())
    base = tmp_path / CASES[name]
    _build(CASES[name], base)
    raw["model"]["base"] = str(base)
    raw["model"].pop("bits", None)
    if raw["method"] == "qlora":
        raw["method"] = "lora"
    if raw["data"]["path"].startswith("hf:"):  # LaMini's columns, in a local file
        rows = [{"instruction": f"what is {w}", "response": f"{w} is a good day"} for w in ("red", "cat", "tree")]
        (tmp_path / "lamini.json").write_text(json.dumps(rows))
        raw["data"]["path"] = str(tmp_path / "lamini.json")
    raw["data"].pop("replay", None)
    raw["data"]["max_length"] = 128
    raw["train"].update(max_steps=2, batch_size=2, grad_accum=1, save_steps=2)
    raw["eval"] = {"inputs": []}
    raw["model"]["dtype"] = "fp32"
    cfg = validate_config(raw)
    remote = bool(cfg.model.trust_remote_code)
    result = train(cfg, Settings(), output=tmp_path / "run")
    assert result.record is not None
    adapter = Registry.open(Settings()).path(result.record.ref)
    lora = json.loads((adapter / "adapter_config.json").read_text())
    assert lora["r"] == cfg.lora.r and lora["lora_alpha"] == cfg.lora.alpha
    if name == "dolly_v2_3b_lamini_lora":
        assert lora["target_modules"] == ["query_key_value"]
    engine = HFEngine(base, model_id=name, max_lora_rank=256, dtype="fp32", trust_remote_code=remote)
    try:
        engine.load_adapter("ad", adapter)
        ids = engine.encode_chat([{"role": "user", "content": "what is red"}], result.record and
                                 Registry.open(Settings()).manifest(result.record.ref).chat_template)

        async def one() -> str:
            return "".join([d.text async for d in engine.generate(
                GenerationRequest(ids, SamplingParams(max_tokens=6), "ad"))])

        text = asyncio.run(one())
    finally:
        engine.stop()
    assert text == _reference(base, adapter, ids, 6, trust=remote)
