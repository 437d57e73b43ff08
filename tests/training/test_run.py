"""Real training runs on the tiny model: loss goes down, versions get registered with lineage,
resume continues, replay mixes at the configured ratio and is cached, metrics land in the registry."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from adapterhub.errors import ConfigError, MissingDependencyError
from adapterhub.registry import Registry
from adapterhub.settings import Settings
from adapterhub.training.config import validate_config
from tests.builders import pythonpath

DROP = object()  # an override value that removes the key


def config(tiny_model, dataset, **over):
    data = {
        "name": "tinylora", "method": "lora",
        "model": {"base": str(tiny_model), "dtype": "fp32"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"path": str(dataset), "max_length": 64},
        "train": {"max_steps": 12, "batch_size": 4, "lr": 5e-3, "warmup_ratio": 0.0, "save_steps": 6,
                  "scheduler": "constant"},
        "eval": {"inputs": ["what is red"], "every_steps": 6, "max_new_tokens": 6},
    }
    for k, v in over.items():
        node = data
        *parts, last = k.split(".")
        for p in parts:
            node = node.setdefault(p, {})
        if v is DROP:
            node.pop(last, None)
        else:
            node[last] = v
    return validate_config(data)


def test_lora_training_lowers_loss_and_registers(tiny_model, dataset, tmp_path):
    from adapterhub.training.run import train

    settings = Settings()
    result = train(config(tiny_model, dataset), settings, output=tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] * 0.7, losses
    assert any("samples" in r for r in log)  # sample answers logged during training
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert result.record is not None and result.record.ref == "tinylora@1"
    reg = Registry.open(settings)
    m = reg.manifest("tinylora@1")
    assert m.kind == "adapter" and m.lora["r"] == 8
    assert m.training["dataset_fingerprint"] and m.training["steps"] == 12
    assert m.training["final_loss"] == pytest.approx(losses[-1])
    # the curve and the last sample answers travel with the version (the console draws them)
    assert [s for s, _ in m.training["loss_curve"]] == list(range(1, 13))
    assert [loss for _, loss in m.training["loss_curve"]] == pytest.approx(losses, abs=1e-5)
    assert list(m.training["samples"]) == ["what is red"]
    assert m.chat_template and "<|im_start|>" in m.chat_template
    assert m.base_model.fingerprint == __import__("adapterhub.models", fromlist=["x"]).config_fingerprint(tiny_model)
    assert set(m.files) >= {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja"}


def test_resume_continues_from_checkpoint(tiny_model, dataset, tmp_path):
    from adapterhub.training.run import train

    settings = Settings()
    run = tmp_path / "run"
    first = train(config(tiny_model, dataset, **{"train.max_steps": 6, "train.save_steps": 3}), settings,
                  output=run, register=False)
    assert first.steps == 6 and (run / "checkpoints" / "checkpoint-6").exists()
    second = train(config(tiny_model, dataset, **{"train.max_steps": 9, "train.save_steps": 3}), settings,
                   output=run, resume=True, register=False)
    assert second.steps == 9
    steps_logged = [json.loads(line).get("step") for line in (run / "log.jsonl").read_text().splitlines()
                    if "loss" in json.loads(line)]
    assert steps_logged == list(range(1, 10))  # 1..6 from the first run, 7..9 after resuming
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(config(tiny_model, dataset), settings, output=tmp_path / "fresh", resume=True)


def test_full_finetune_registers_a_model_artifact(tiny_model, dataset, tmp_path):
    from adapterhub.training.run import train

    result = train(config(tiny_model, dataset, method="full", **{"train.max_steps": 2, "train.lr": 1e-4}),
                   Settings(), output=tmp_path / "run")
    assert result.record is not None
    m = Registry.open(Settings()).manifest(result.record.ref)
    assert m.kind == "model" and "config.json" in m.files and "model.safetensors" in m.files


def test_replay_ratio_and_cache(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapterhub.training.builtin_data import GENERAL_REPLAY
    from adapterhub.training.config import ReplaySection
    from adapterhub.training.replay import build_replay

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    kw = dict(model=model, tokenizer=tok, template=tok.chat_template, cache_dir=tmp_path, base_fingerprint="fp", seed=0)
    replay, info = build_replay(ReplaySection(ratio=0.5, max_new_tokens=8), 20, **kw)
    assert len(replay) == 10 and info["replay_cached"] is False
    assert all(c[0]["content"] in GENERAL_REPLAY for c in replay)
    assert len({c[0]["content"] for c in replay}) == 10  # no repeats until the pool is used up
    again, info2 = build_replay(ReplaySection(ratio=2.0, max_new_tokens=8), 30, **kw)
    assert info2["replay_cached"] is True and len(again) == 60
    assert len(list((tmp_path / "replay").glob("*.jsonl"))) == 1
    none, _ = build_replay(ReplaySection(ratio=0.0), 30, **kw)
    assert none == []


def test_identity_metrics_land_in_registry(tiny_model, tmp_path):
    from adapterhub.training.run import train

    cfg = validate_config({
        "name": "tinyid", "model": {"base": str(tiny_model), "dtype": "fp32"},
        "lora": {"r": 4, "alpha": 8},
        "data": {"path": "builtin:self_cognition", "variables": {"name": "Lumen", "author": "Acme Lab"},
                 "max_length": 96, "replay": {"ratio": 0.25, "max_new_tokens": 8}},
        "train": {"max_steps": 2, "batch_size": 4},
        "eval": {"identity": {"name": "Lumen", "author": "Acme Lab"}},
    })
    result = train(cfg, Settings(), output=tmp_path / "run")
    m = Registry.open(Settings()).manifest(result.record.ref)
    assert 0.0 <= m.metrics["identity"] <= 1.0 and 0.0 <= m.metrics["retention"] <= 1.0
    from adapterhub.training.builtin_data import identity_records

    n_records = len(identity_records("Lumen", "Acme Lab"))
    assert m.training["replay"] == round(n_records * 0.25) and m.training["replay_source"] == "self-distill"

    # `adapterhub eval REF` scores again (identity from the recorded training config) and stores the metrics.
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    out = subprocess.run([sys.executable, "-m", "adapterhub.cli.main", "eval", result.record.ref], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert f"{result.record.ref}: identity" in out.stdout and "held-out paraphrases" in out.stdout
    again = Registry.open(Settings()).manifest(result.record.ref)
    assert again.metrics["identity"] == pytest.approx(float(out.stdout.split("identity ")[1].split()[0]), abs=0.005)


def test_config_errors_one_per_bad_key_via_cli(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\nmethod: lora\nlorra: {r: 8}\ndata: {path: a.json, formt: alpaca}\ntrain: {lr: -1}\n")
    out = subprocess.run([sys.executable, "-m", "adapterhub.cli.main", "train", str(cfg)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": pythonpath()})
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    for part in ("unknown key 'lorra' (did you mean 'lora'?)", "unknown key 'data.formt' (did you mean 'data.format'?)",
                 "train.lr: Input should be greater than 0"):
        assert part in out.stderr


def test_data_path_typo_is_reported_before_any_model_load(tiny_model, dataset, tmp_path, monkeypatch):
    import transformers

    from adapterhub.training.run import train

    loads: list[str] = []

    def recording(*args, **kwargs):
        loads.append(str(args[0]) if args else "?")
        raise AssertionError("a model or tokenizer was loaded before the data was checked")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", recording)
    monkeypatch.setattr("adapterhub.training.stages.resolve_base", recording)
    typo = str(dataset).replace("data.json", "dta.json")
    with pytest.raises(ConfigError, match="data.path: no such file .*dta.json"):
        train(config(tiny_model, dataset, **{"data.path": typo}), Settings(), output=tmp_path / "run")
    bad_column = tmp_path / "cols.json"
    bad_column.write_text(json.dumps([{"question": "q", "answer": "a"}]))
    with pytest.raises(ConfigError):
        train(config(tiny_model, dataset, **{"data.path": str(bad_column)}), Settings(), output=tmp_path / "run2")
    assert loads == []


def test_qlora_with_zero3_is_refused_with_reason():
    with pytest.raises(ConfigError, match="ZeRO-3 shards parameters"):
        validate_config({"name": "x", "method": "qlora", "data": {"path": "a"}, "train": {"deepspeed": "zero3"}})


def test_deepspeed_configs_and_missing_dependency(tmp_path):
    from adapterhub.training.deepspeed import builtin, deepspeed_config

    stages = {s: builtin(s)["zero_optimization"] for s in ("zero1", "zero2", "zero2_offload", "zero3", "zero3_offload")}
    assert [z["stage"] for z in stages.values()] == [1, 2, 2, 3, 3]
    assert stages["zero2_offload"]["offload_optimizer"]["device"] == "cpu"
    assert stages["zero3_offload"]["offload_param"]["device"] == "cpu"
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(MissingDependencyError, match=r"adapterhub\[deepspeed\]"):
            deepspeed_config("zero2", tmp_path)
    else:
        out = deepspeed_config("zero2", tmp_path)
        assert json.loads(out.read_text())["zero_optimization"]["stage"] == 2


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_qlora_trains_and_records_quantization(tiny_model, dataset, tmp_path):
    from adapterhub.training.run import train

    result = train(config(tiny_model, dataset, method="qlora", **{"model.dtype": "bf16", "train.max_steps": 4}),
                   Settings(), output=tmp_path / "run")
    m = Registry.open(Settings()).manifest(result.record.ref)
    assert m.base_model.quantization == "nf4" and m.training["method"] == "qlora"


@pytest.mark.gpu
@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero2_offload"])
def test_deepspeed_on_gpu_trains_and_registers_full_weights(tiny_model, dataset, tmp_path, stage):
    from safetensors import safe_open

    from adapterhub.training.run import train

    result = train(config(tiny_model, dataset, **{"train.deepspeed": stage, "train.max_steps": 3,
                                                  "model.dtype": "bf16"}),
                   Settings(), output=tmp_path / "run")
    assert result.steps == 3 and result.final_loss is not None
    # ZeRO-3 partitions parameters: the saved adapter must hold the gathered, full-shape LoRA weights.
    with safe_open(str(Registry.open(Settings()).path(result.record.ref) / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes and all(len(s) == 2 and min(s) > 0 for s in shapes.values()), shapes


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_qlora_on_gpu_keeps_the_base_in_4bit_on_cuda(tiny_model, dataset, tmp_path):
    from adapterhub.training.model import load_base
    from adapterhub.training.run import train

    cfg = config(tiny_model, dataset, method="qlora", **{"model.dtype": "bf16", "train.max_steps": 4})
    model = load_base(tiny_model, cfg)
    linear = model.model.layers[0].self_attn.q_proj
    assert type(linear).__name__ == "Linear4bit" and linear.weight.device.type == "cuda"
    result = train(cfg, Settings(), output=tmp_path / "run")
    assert result.steps == 4 and result.final_loss is not None


def test_a_configs_relative_data_path_is_relative_to_the_config_file(tiny_model, dataset, tmp_path, monkeypatch):
    """A project folder holding a config next to its data trains from any current directory; a path
    typed on the command line stays relative to where it was typed."""
    import shutil

    import yaml

    from adapterhub.training.api import train_and_register
    from adapterhub.training.config import load_config

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.copy(dataset, project / "data" / "train.json")
    (project / "cfg.yaml").write_text(yaml.safe_dump({
        "name": "rel", "model": {"base": str(tiny_model), "dtype": "fp32"},
        "lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"},
        "data": {"path": "data/train.json", "max_length": 64},
        "train": {"max_steps": 1, "batch_size": 2},
    }))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config("../project/cfg.yaml").data.path == str(project.resolve() / "data" / "train.json")
    result = train_and_register("../project/cfg.yaml", register=False, output=tmp_path / "run")
    assert result.steps == 1 and result.record is None

    (elsewhere / "mine.json").write_text((project / "data" / "train.json").read_text())
    assert load_config(str(project / "cfg.yaml"), ["data.path=mine.json"]).data.path == "mine.json"
    for kept in ("builtin:self_cognition", "hf:MBZUAI/LaMini-instruction@train", str(project / "x.json")):
        other = project / "other.yaml"
        other.write_text((project / "cfg.yaml").read_text().replace("path: data/train.json", f"path: {kept}"))
        assert load_config(str(other)).data.path == kept
