"""Tool-use training data: OpenAI messages with tool calls and ShareGPT function-calling records are
rendered with their tools; loss falls on the assistant's calls and answers only; the version records
the tool-call format and the tool-use scores."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from adapterhub.errors import ConfigError
from adapterhub.evaluation.tools import AGENT_TOOLS
from adapterhub.templates import TEMPLATES
from adapterhub.training.config import DataSection
from adapterhub.training.data import IGNORE, read_dataset, tokenize_conversation

CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
RECORD = {"tools": AGENT_TOOLS, "messages": [
    {"role": "user", "content": "weather in paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 21}'},
    {"role": "assistant", "content": "It is 21 degrees."}]}
SHAREGPT = {"tools": json.dumps(AGENT_TOOLS), "conversations": [
    {"from": "human", "value": "weather in paris?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
    {"from": "observation", "value": '{"temperature": 21}'},
    {"from": "gpt", "value": "It is 21 degrees."}]}


@pytest.fixture(scope="module")
def tok(tiny_json_model):
    return AutoTokenizer.from_pretrained(tiny_json_model)


def supervised(tok, sample) -> str:
    return tok.decode([i for i, label in zip(sample.input_ids, sample.labels) if label != IGNORE])


@pytest.mark.parametrize("record", [RECORD, SHAREGPT], ids=["messages", "sharegpt"])
def test_tool_records_supervise_calls_and_answers_only(tok, tmp_path, record):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record))
    raw = read_dataset(DataSection(path=str(path)))
    conv = raw.conversations[0]
    assert conv.tools and conv.tools[0]["function"]["name"] == "get_weather"
    sample = tokenize_conversation(tok, conv, TEMPLATES["hermes"], 2048)
    text = tok.decode(sample.input_ids)
    assert "<tools>" in text and '"convert_currency"' in text  # the tools are in the prompt
    assert supervised(tok, sample) == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                                       '</tool_call><|im_end|>\nIt is 21 degrees.<|im_end|>\n')


def test_tool_data_needs_a_template_that_renders_tools(tok, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(RECORD))
    conv = read_dataset(DataSection(path=str(path))).conversations[0]
    with pytest.raises(ConfigError, match="tool template"):
        tokenize_conversation(tok, conv, None, 2048)
    bad = dict(RECORD, messages=[RECORD["messages"][0], {"role": "assistant", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": "{city"}}]}])
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="record 0: the arguments of tool call 'get_weather' are not valid JSON"):
        read_dataset(DataSection(path=str(path)))


def test_agent_training_records_parser_and_tool_scores(tiny_json_model, tmp_path):
    from adapterhub.registry import Registry
    from adapterhub.settings import Settings
    from adapterhub.training.run import train
    from tests.training.test_run import config

    cfg = config(tiny_json_model, "builtin:agent_tools", **{
        "name": "agent", "model.template": "hermes", "data.max_length": 2048, "train.max_steps": 2,
        "eval.tools": True, "eval.inputs": []})
    result = train(cfg, Settings(), output=tmp_path / "run")
    m = Registry.open(Settings()).manifest("agent@1")
    assert m.training["tool_parser"] == "hermes" and "tools" in (m.chat_template or "")
    for k in ("tool_call", "no_call", "tool_result"):
        assert 0.0 <= m.metrics[k] <= 1.0 and result.metrics[k] == m.metrics[k]
    with pytest.raises(Exception, match="tool_parser 'nope'"):
        config(tiny_json_model, "builtin:agent_tools", **{"model.tool_parser": "nope"})


def test_model_card_names_the_tool_format_and_the_vllm_flags():
    import time

    from adapterhub.hub.model_card import render_model_card
    from adapterhub.registry.manifest import FileEntry, Manifest

    m = Manifest(name="agent", version=1, content_hash="0" * 64, files={"a": FileEntry(sha256="0" * 64, size=1)},
                 base_model={"id": "smollm2-135m-instruct", "fingerprint": "f"}, lora={"r": 16, "alpha": 32},
                 training={"method": "lora", "tool_parser": "internlm2"}, metrics={"tool_call": 0.9},
                 created_at=time.time())
    card = render_model_card(m, "acme/agent")
    assert "| tool-call format | internlm2 |" in card and '"tool_call": 0.9' in card
    assert "--enable-auto-tool-choice --tool-call-parser internlm\n" in card  # vLLM names it internlm
