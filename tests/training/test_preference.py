"""Preference training (TRL's DPO / ORPO / KTO) on the tiny model: trains, registers with lineage to
its SFT parent, the policy moves toward the chosen answers, and the adapter loads in peft and our engine."""

from __future__ import annotations

import json

import pytest
import torch

from adapterhub.errors import ConfigError
from adapterhub.registry import Registry
from adapterhub.settings import Settings
from adapterhub.training.config import validate_config
from tests.contracts.test_engine_contract import PROMPT, reference, run
from tests.training.test_run import config

pytest.importorskip("trl")


@pytest.fixture()
def pairs(tmp_path):
    recs = [{"prompt": f"what is {w}", "chosen": f"{w} is a good day", "rejected": f"{w} is terrible"}
            for w in ("red", "blue", "green", "cat", "dog", "tree", "river", "mountain")]
    p = tmp_path / "pairs.json"
    p.write_text(json.dumps(recs))
    return p


def _pref_config(tiny_model, data, kind, **over):
    return config(tiny_model, data, **{"preference": {"method": kind, "beta": 0.1}, "train.max_steps": 6,
                                       "train.lr": 5e-3, "eval.inputs": [], **over})


def _margin(path, tiny_model, tok_pairs):
    """Mean log-prob margin chosen - rejected of the adapter at ``path`` over the pairs."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    if path is not None:
        model = PeftModel.from_pretrained(model, str(path))
    model.eval()

    def logp(prompt, answer):
        p = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids_p = tok(p, add_special_tokens=False)["input_ids"]
        ids = ids_p + tok(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
        tgt = torch.tensor(ids[1:])
        return float(lp[torch.arange(len(tgt)), tgt][len(ids_p) - 1:].sum())

    return sum(logp(r["prompt"], r["chosen"]) - logp(r["prompt"], r["rejected"]) for r in tok_pairs) / len(tok_pairs)


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_preference_method_trains_registers_and_prefers_chosen(method, tiny_model, dataset, pairs, tmp_path):
    from adapterhub.training.run import train

    settings = Settings()
    sft = train(config(tiny_model, dataset, **{"train.max_steps": 4, "eval.inputs": []}), settings,
                output=tmp_path / "sft")
    assert sft.record.ref == "tinylora@1"
    result = train(_pref_config(tiny_model, pairs, method, **{"model.adapter": "tinylora@1", "lora": {}}),
                   settings, output=tmp_path / "pref")
    assert result.record.ref == "tinylora@2"
    reg = Registry.open(settings)
    m = reg.manifest("tinylora@2")
    assert m.parent == 1 and m.lineage["parent"] == "tinylora@1" and m.lineage["parent_hash"] == sft.record.content_hash
    assert m.training["method"] == f"lora+{method}" and m.training["config"]["preference"]["method"] == method
    records = json.loads(pairs.read_text())
    before, after = _margin(reg.path("tinylora@1"), tiny_model, records), _margin(reg.path("tinylora@2"), tiny_model,
                                                                                  records)
    assert after > before + 0.25, (before, after)  # the policy moved toward the chosen answers (nats)
    files = set(m.files)
    assert "adapter_model.safetensors" in files and not any(f.startswith("ref/") for f in files)
    from adapterhub.serving.engines.hf import HFEngine

    engine = HFEngine(tiny_model, model_id="tiny", max_loaded=1, max_lora_rank=8, dtype="fp32")
    engine.start()
    try:
        engine.load_adapter("pref", reg.path("tinylora@2"))
        ids = engine.encode_chat(PROMPT, None)
        assert run(engine, ids, "pref", max_tokens=8)[0] == reference(tiny_model, reg.path("tinylora@2"), ids, 8)
    finally:
        engine.stop()


def test_fresh_lora_dpo_and_bad_pairs(tiny_model, pairs, tmp_path):
    from adapterhub.training.run import train

    result = train(_pref_config(tiny_model, pairs, "dpo"), Settings(), output=tmp_path / "fresh")
    assert result.record.ref == "tinylora@1" and Registry.open(Settings()).manifest("tinylora@1").parent is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "a", "chosen": "b"}, {"chosen": [{"role": "user", "content": "x"}],
                                                                "rejected": [{"role": "user", "content": "y"}]}]))
    with pytest.raises(ConfigError, match=r"record 0: needs 'prompt', 'chosen' and 'rejected'.*record 1: 'chosen' "
                                          r"and 'rejected' must share every turn but the last, which is an assistant turn"):
        train(_pref_config(tiny_model, bad, "dpo"), Settings(), output=tmp_path / "bad")


@pytest.mark.parametrize("over, message", [
    ({"method": "full"}, "not full"),
    ({"data.packing": "padding_free"}, "no data.packing"),
    ({"model.adapter": "x@1", "lora.r": 4}, "leave the lora section out"),
])
def test_preference_conflicts_are_config_errors(tiny_model, pairs, over, message):
    with pytest.raises(ConfigError, match=message):
        _pref_config(tiny_model, pairs, "dpo", **over)


def test_adapter_without_preference_is_refused(tiny_model, dataset):
    with pytest.raises(ConfigError, match="preference training only"):
        config(tiny_model, dataset, **{"model.adapter": "lumen@1"})


def test_builtin_dpo_config_validates():
    from adapterhub.training.config import load_config

    cfg = load_config("self_cognition_lumen_dpo")
    assert cfg.preference.method == "dpo" and cfg.model.adapter == "lumen"


@pytest.mark.parametrize("over, label", [({}, None), ({"method": "qlora"}, "nf4"),
                                         ({"model.bits": 8}, "int8")])
def test_every_method_records_the_same_quantisation_of_its_base(tiny_model, pairs, over, label, tmp_path):
    """SFT and preference runs end in one stage, so the label a version's base carries is the same rule for
    both (they had disagreed: a preference run on an 8-bit base was recorded as unquantised)."""
    from adapterhub.settings import Settings
    from adapterhub.training import stages

    for preference in (None, {"method": "dpo"}):
        data = {"name": "q", "model": {"base": str(tiny_model)}, "data": {"path": str(pairs)},
                "preference": preference}
        for k, v in over.items():
            if "." in k:
                data["model"]["bits"] = v
            else:
                data[k] = v
        ctx = stages.start(validate_config(data), Settings(), output=tmp_path / "r", resume=False,
                           register=False, registry=None, console=None)
        assert ctx.quantization == label
