"""Data formats → the exact tokens that carry loss (decoded), templates, packing, fingerprints."""

from __future__ import annotations

import csv
import json

import pytest
from transformers import AutoTokenizer

from adapterhub.errors import ConfigError
from adapterhub.training.config import DataSection
from adapterhub.training.data import (
    IGNORE,
    detect_format,
    pack,
    prepare,
    tokenize_conversation,
    tokenize_text,
)


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def supervised(tok, sample) -> str:
    return tok.decode([i for i, label in zip(sample.input_ids, sample.labels) if label != IGNORE])


def write_json(path, records, lines=False):
    path.write_text("\n".join(json.dumps(r) for r in records) if lines else json.dumps(records))
    return path


CASES = {
    "alpaca": ({"instruction": "name a color", "input": "one word", "output": "red"}, "data.json"),
    "messages": ({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                               {"role": "assistant", "content": "hello world"}, {"role": "user", "content": "and?"},
                               {"role": "assistant", "content": "good day"}]}, "data.jsonl"),
    "sharegpt": ({"conversations": [{"from": "human", "value": "who"}, {"from": "gpt", "value": "the cat"},
                                    {"from": "human", "value": "where"}, {"from": "gpt", "value": "the tree"}]},
                 "data.json"),
    "xtuner": ({"conversation": [{"system": "sys", "input": "one", "output": "two"},
                                 {"input": "three", "output": "four"}]}, "data.json"),
}
EXPECTED = {
    "alpaca": "red<|im_end|>\n",
    "messages": "hello world<|im_end|>\ngood day<|im_end|>\n",
    "sharegpt": "the cat<|im_end|>\nthe tree<|im_end|>\n",
    "xtuner": "two<|im_end|>\nfour<|im_end|>\n",
}


@pytest.mark.parametrize("fmt", list(CASES))
def test_each_format_supervises_only_assistant_tokens(fmt, tok, tmp_path):
    record, fname = CASES[fmt]
    path = write_json(tmp_path / fname, [record], lines=fname.endswith("l"))
    section = DataSection(path=str(path))
    data = prepare(section, tok, tok.chat_template)
    assert data.format == fmt and len(data.samples) == 1
    s = data.samples[0]
    assert supervised(tok, s) == EXPECTED[fmt]
    full = tok.decode(s.input_ids)
    assert full.startswith("<|im_start|>") and "<|im_start|>assistant" in full


def test_table_csv_and_xlsx_with_column_mapping(tok, tmp_path):
    rows = [{"Question": "what is red", "Answer": "a color", "Extra": "x"}]
    with open(tmp_path / "qa.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(list(rows[0]))
    ws.append(list(rows[0].values()))
    wb.save(tmp_path / "qa.xlsx")
    for name in ("qa.csv", "qa.xlsx"):
        section = DataSection(path=str(tmp_path / name), format="table",
                              columns={"instruction": "Question", "output": "Answer"}, system="you help")
        s = prepare(section, tok, tok.chat_template).samples[0]
        assert supervised(tok, s) == "a color<|im_end|>\n"
        assert "you help" in tok.decode(s.input_ids) and "what is red" in tok.decode(s.input_ids)
    bad = DataSection(path=str(tmp_path / "qa.csv"), format="table", columns={"instruction": "Q", "output": "Answer"})
    with pytest.raises(ConfigError, match=r"column\(s\) \['Q'\] not in the table"):
        prepare(bad, tok, tok.chat_template)


def test_pretrain_text_supervises_everything_with_bos_eos(tok, tmp_path):
    (tmp_path / "c.txt").write_text("the cat sat.\n\nthe dog ran.\n")
    data = prepare(DataSection(path=str(tmp_path / "c.txt"), mode="pretrain"), tok, None)
    assert len(data.samples) == 2
    for s in data.samples:
        assert s.labels == s.input_ids
        assert s.input_ids[0] == tok.bos_token_id and s.input_ids[-1] == tok.eos_token_id


def test_packing_concatenates_up_to_max_length(tok):
    samples = [tokenize_text(tok, "the cat and the dog", 64) for _ in range(10)]
    packed = pack(samples, 32)
    assert sum(len(p.input_ids) for p in packed) == sum(len(s.input_ids) for s in samples)
    assert all(len(p.input_ids) <= 32 for p in packed) and len(packed) < len(samples)


def test_truncation_drops_samples_without_answer(tok, tmp_path):
    path = write_json(tmp_path / "d.json", [{"instruction": "the " * 100, "output": "red"},
                                            {"instruction": "hi", "output": "red"}])
    data = prepare(DataSection(path=str(path), max_length=32), tok, tok.chat_template)
    assert len(data.samples) == 1 and data.dropped == 1


def test_fingerprint_changes_with_content(tok, tmp_path):
    a = write_json(tmp_path / "a.json", [{"instruction": "a", "output": "b"}])
    b = write_json(tmp_path / "b.json", [{"instruction": "a", "output": "c"}])
    fa = prepare(DataSection(path=str(a)), tok, tok.chat_template).fingerprint
    assert fa == prepare(DataSection(path=str(a)), tok, tok.chat_template).fingerprint
    assert fa != prepare(DataSection(path=str(b)), tok, tok.chat_template).fingerprint


def test_bad_data_is_clear(tok, tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        prepare(DataSection(path=str(tmp_path / "missing.json")), tok, tok.chat_template)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        prepare(DataSection(path=str(tmp_path / "x.json")), tok, tok.chat_template)
    with pytest.raises(ConfigError, match="cannot detect the data format"):
        detect_format({"foo": 1})


def test_named_template_for_base_without_one(tok):
    from adapterhub.templates import get_template

    s = tokenize_conversation(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "red"}],
                              get_template("alpaca"), 128)
    assert supervised(tok, s).startswith("red")
    with pytest.raises(ConfigError, match="unknown chat template"):
        get_template("nope")


@pytest.mark.parametrize("name", ["chatml", "llama3", "llama3_chat", "alpaca", "internlm2_chat", "qwen_chat",
                                  "llama2_chat", "mistral", "zephyr", "dolly"])
def test_every_named_template_supervises_exactly_the_answers(tok, name):
    """Multi-turn with a system message: loss on each answer and its end marker, nothing else; the
    generation prompt is what the answer follows (so serving prompts the model the way it was trained)."""
    from adapterhub.templates import get_template
    from adapterhub.training.data import render

    template = get_template(name)
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"},
            {"role": "assistant", "content": "red cat"}, {"role": "user", "content": "and now"},
            {"role": "assistant", "content": "blue dog"}]
    s = tokenize_conversation(tok, conv, template, 512)
    text = supervised(tok, s)
    assert "red cat" in text and "blue dog" in text
    for user_text in ("hi there", "and now", "be brief"):
        assert user_text not in text
    full = render(tok, conv, template, generation_prompt=False)
    assert "be brief" in full  # the system message is rendered, not dropped
    prompt = render(tok, conv[:2], template, generation_prompt=True)
    assert full.startswith(prompt) and full[len(prompt):].lstrip().startswith("red cat")
