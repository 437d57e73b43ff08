"""LoRA variants and training options on the tiny model: each trains, registers with the option in its
manifest, loads in peft, and is served by our engine with peft's greedy text (or refused with the reason
where the engine cannot apply it: DoRA)."""

from __future__ import annotations

import json

import pytest
import torch

from adapterhub.errors import ConfigError, IncompatibleAdapterError
from adapterhub.registry import Registry
from adapterhub.settings import Settings
from tests.contracts.test_engine_contract import PROMPT, reference, run
from tests.training.test_run import config

VARIANTS = {
    "rslora": {"lora.use_rslora": True},
    "pissa": {"lora.init": "pissa"},
    "olora": {"lora.init": "olora"},
    "gaussian": {"lora.init": "gaussian"},
    "loraplus": {"lora.loraplus_lr_ratio": 16.0},
    "neftune": {"train.neftune_alpha": 5.0},
    "dora": {"lora.use_dora": True},
}


@pytest.fixture(scope="module")
def engine(tiny_model):
    from adapterhub.serving.engines.hf import HFEngine

    eng = HFEngine(tiny_model, model_id="tiny", max_loaded=2, max_lora_rank=16, dtype="fp32")
    eng.start()
    yield eng
    eng.stop()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_trains_registers_and_serves(variant, tiny_model, dataset, tmp_path, engine):
    from adapterhub.serving.adapters import engine_problems
    from adapterhub.training.run import train

    over = {"train.max_steps": 6, "lora.r": 4, "lora.alpha": 8, "eval.inputs": [], **VARIANTS[variant]}
    result = train(config(tiny_model, dataset, **over), Settings(), output=tmp_path / "run")
    reg = Registry.open(Settings())
    m = reg.manifest(result.record.ref)
    recorded = m.training["config"]
    for key, value in VARIANTS[variant].items():
        section, name = key.split(".")
        assert recorded[section][name] == value
    adapter_cfg = json.loads((reg.path(result.record) / "adapter_config.json").read_text())
    if variant in ("pissa", "olora"):  # converted to a plain LoRA on the unmodified base
        assert adapter_cfg["r"] == 8 and adapter_cfg["init_lora_weights"] is True
    if variant == "rslora":
        assert adapter_cfg["use_rslora"] and m.lora["use_rslora"]
    path = reg.path(result.record)
    ids = engine.encode_chat(PROMPT, None)
    if variant == "dora":
        assert m.lora["use_dora"]
        problems = engine_problems(path, engine)
        assert any("DoRA" in p and "adapterhub merge" in p for p in problems), problems
        return
    assert engine_problems(path, engine) == []
    engine.load_adapter(variant, path)
    try:
        assert run(engine, ids, variant, max_tokens=10)[0] == reference(tiny_model, path, ids, 10)
    finally:
        engine.unload_adapter(variant)


def test_pissa_saved_adapter_reproduces_the_trained_model_on_the_original_base(tiny_model, tmp_path):
    """The conversion is what makes PiSSA usable: the trained adapter (which lives on a modified base)
    saved as a rank-2r LoRA on the original base gives the same logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapterhub.training.model import add_lora, save_initial_adapter

    cfg = config(tiny_model, tmp_path, **{"lora.init": "pissa", "lora.r": 4, "lora.alpha": 4})
    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), cfg)
    save_initial_adapter(model, cfg, tmp_path / "init")
    with torch.no_grad():  # "training": move every LoRA weight
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.05)
    ids = torch.tensor([[1, 5, 9, 23, 42, 7]])
    want = model(input_ids=ids).logits
    model.save_pretrained(str(tmp_path / "out"), path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    fresh = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                      str(tmp_path / "out"))
    assert torch.allclose(fresh(input_ids=ids).logits, want, atol=1e-4)


def test_dora_is_refused_by_the_server_with_the_reason(tiny_model, dataset, tmp_path):
    from adapterhub.serving.api import build_service
    from adapterhub.serving.config import ServeConfig
    from adapterhub.training.run import train

    train(config(tiny_model, dataset, **{"train.max_steps": 2, "lora.use_dora": True, "eval.inputs": []}),
          Settings(), output=tmp_path / "run")
    stack = build_service(ServeConfig(base=str(tiny_model), max_lora_rank=8))
    with pytest.raises(IncompatibleAdapterError, match="DoRA"):
        stack.manager._check(stack.registry.resolve("tinylora"))


@pytest.mark.parametrize("over, message", [
    ({"lora.loraplus_lr_ratio": 16.0, "train.optimizer": "adafactor"}, "train.optimizer must be adamw_torch"),
    ({"lora.init": "loftq"}, "lora.init"),
    ({"lora.init": "pissa", "method": "full"}, "not full"),
    ({"train.report_to": "comet"}, "train.report_to"),
])
def test_option_conflicts_are_config_errors(tiny_model, dataset, over, message):
    with pytest.raises(ConfigError, match=message):
        config(tiny_model, dataset, **over)


def test_tensorboard_logs_land_in_the_run_dir(tiny_model, dataset, tmp_path):
    pytest.importorskip("tensorboard")
    from adapterhub.training.run import train

    train(config(tiny_model, dataset, **{"train.max_steps": 3, "train.report_to": "tensorboard",
                                         "eval.inputs": []}), Settings(), output=tmp_path / "run")
    events = list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == 3


def test_missing_tracker_is_named(tiny_model, dataset, tmp_path, monkeypatch):
    import importlib.util

    from adapterhub.errors import MissingDependencyError
    from adapterhub.training.run import train

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(MissingDependencyError, match="wandb"):
        train(config(tiny_model, dataset, **{"train.report_to": "wandb"}), Settings(), output=tmp_path / "run")
