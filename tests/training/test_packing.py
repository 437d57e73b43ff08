"""Padding-free packing: whole samples in one row keep their own positions and attention, so a packed
batch gives each sample exactly the loss it has alone; training with it registers a working adapter."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapterhub.registry import Registry
from adapterhub.settings import Settings
from adapterhub.training.config import DataSection
from adapterhub.training.data import IGNORE, Collator, FlatCollator, pack_padding_free, prepare


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture()
def mixed(tmp_path):
    words = ["red", "blue", "green", "cat", "dog", "tree", "river", "mountain", "sun", "moon"]
    recs = [{"instruction": f"tell me about {w} " + "and more " * (i * 3), "output": f"{w} is " + "nice " * (i + 1)}
            for i, w in enumerate(words)]
    p = tmp_path / "mixed.json"
    p.write_text(json.dumps(recs))
    return p


def _per_sample_losses(logits: torch.Tensor, labels: torch.Tensor, bounds: list[tuple[int, int]]) -> list[float]:
    out = []
    for a, b in bounds:
        lg, lb = logits[a:b - 1], labels[a + 1:b]
        out.append(float(torch.nn.functional.cross_entropy(lg, lb, ignore_index=IGNORE)))
    return out


def test_packed_batch_gives_each_sample_its_solo_loss(tiny_model, tok, mixed):
    data = prepare(DataSection(path=str(mixed), max_length=128), tok, tok.chat_template)
    samples = data.samples
    blocks = pack_padding_free(samples, 128)
    assert sum(len(b.lengths) for b in blocks) == len(samples) and len(blocks) < len(samples)
    assert all(len(b.input_ids) <= 128 and sum(b.lengths) == len(b.input_ids) for b in blocks)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    batch = FlatCollator()([{"input_ids": b.input_ids, "labels": b.labels, "lengths": b.lengths} for b in blocks])
    assert set(batch) == {"input_ids", "labels", "position_ids", "use_cache"} and batch["input_ids"].shape[0] == 1
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
    bounds, start = [], 0
    for b in blocks:
        for n in b.lengths:
            bounds.append((start, start + n))
            start += n
    flat = [s for b in blocks for s in _split(b)]
    got = _per_sample_losses(packed, batch["labels"][0], bounds)
    want = []
    with torch.no_grad():
        for ids, labels in flat:
            solo = model(input_ids=torch.tensor([ids])).logits[0]
            want.append(_per_sample_losses(solo, torch.tensor(labels), [(0, len(ids))])[0])
    assert len(got) == len(samples)
    assert max(abs(g - w) for g, w in zip(got, want, strict=True)) < 1e-4, (got, want)
    # Without the per-sample positions (plain concatenation) the later samples' losses change: the check bites.
    with torch.no_grad():
        concat = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    leaked = _per_sample_losses(concat, batch["labels"][0], bounds)
    assert max(abs(g - w) for g, w in zip(leaked, want, strict=True)) > 1e-2
    # Same supervised tokens as the padded batch would train on (bar each sample's first, never predicted).
    padded = Collator(tok.pad_token_id)([{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    assert int((batch["labels"] != IGNORE).sum()) == int((padded["labels"][:, 1:] != IGNORE).sum())


def _split(block):
    start = 0
    for n in block.lengths:
        yield block.input_ids[start:start + n], block.labels[start:start + n]
        start += n


def test_padding_free_training_registers_and_records_it(tiny_model, mixed, tmp_path):
    from adapterhub.training.run import train
    from tests.training.test_run import config

    cfg = config(tiny_model, mixed, **{"data.packing": "padding_free", "data.max_length": 128, "train.batch_size": 2,
                                       "train.max_steps": 8})
    result = train(cfg, Settings(), output=tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    m = Registry.open(Settings()).manifest(result.record.ref)
    assert m.training["config"]["data"]["packing"] == "padding_free"
