"""Tool-call formats: parsing finished text, the grammars that force a call, and stream splitting."""

from __future__ import annotations

import json

import pytest

from adapterhub.templates import TEMPLATES
from adapterhub.tools import PARSERS, StreamSplitter, get_parser, supports_tools, template_messages

NAMES = {"get_weather", "convert_currency"}
CALLS = {
    "hermes": 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "convert_currency", "arguments": {"amount": 5}}\n</tool_call>',
    "llama3_json": '{"name": "get_weather", "parameters": {"city": "Paris"}}; '
                   '{"name": "convert_currency", "parameters": {"amount": 5}}',
    "mistral": 'Let me check.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
               '{"name": "convert_currency", "arguments": {"amount": 5}}]',
    "internlm2": 'Let me check.<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Paris"}}'
                 '<|action_end|><|action_start|><|plugin|>\n{"name": "convert_currency", "parameters": {"amount": 5}}'
                 '<|action_end|>',
}


@pytest.mark.parametrize("fmt", sorted(PARSERS))
def test_each_format_parses_its_calls_and_leaves_prose_alone(fmt):
    p = get_parser(fmt)
    content, calls = p.parse(CALLS[fmt], NAMES)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                                  ("convert_currency", {"amount": 5})]
    assert content == (None if fmt == "llama3_json" else "Let me check.")
    assert p.parse("Paris is sunny today.", NAMES) == ("Paris is sunny today.", [])
    # an unknown function or broken JSON is not a call: the text stays content
    unknown = CALLS[fmt].replace("get_weather", "rm_rf")
    assert p.parse(unknown, NAMES) == (unknown, [])


@pytest.mark.parametrize("fmt", sorted(PARSERS))
def test_stream_splitter_holds_back_calls_and_sends_prose(fmt):
    text = CALLS[fmt]
    split = StreamSplitter(get_parser(fmt), NAMES, forced=False)
    sent = "".join(split.feed(text[i:i + 3]) for i in range(0, len(text), 3))
    rest, calls = split.finish()
    assert len(calls) == 2
    assert (sent + rest).strip() == ("" if fmt == "llama3_json" else "Let me check.")
    plain = StreamSplitter(get_parser(fmt), NAMES, forced=False)
    prose = "Sunny, 21 degrees <b>warm</b> {not a call}"
    out = "".join(plain.feed(prose[i:i + 2]) for i in range(0, len(prose), 2))
    rest, calls = plain.finish()
    assert out + rest == prose and not calls


def test_unknown_parser_and_template_detection():
    with pytest.raises(Exception, match="unknown tool parser 'nope'"):
        get_parser("nope")
    assert supports_tools(TEMPLATES["hermes"]) and not supports_tools(TEMPLATES["chatml"])
    msgs = template_messages([{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}])
    assert msgs[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1}


@pytest.mark.parametrize("fmt", ["hermes", "llama3_json", "internlm2"])
def test_an_answer_cut_by_max_tokens_keeps_its_complete_calls(fmt):
    p = get_parser(fmt)
    cut = CALLS[fmt][: -20]  # the second call is unfinished (its JSON too)
    content, calls = p.parse(cut, NAMES, truncated=True)
    assert [c.name for c in calls] == ["get_weather"]
    assert p.parse(cut, NAMES) == (cut, [])  # a finished answer is all or nothing


@pytest.mark.parametrize("fmt", ["hermes", "internlm2"])
@pytest.mark.parametrize("keep", [1, 5, -1])
def test_a_call_whose_end_marker_was_cut_is_still_a_call(fmt, keep):
    """`make demo-agent`: the answer stopped one token before `</tool_call>` ended (finish_reason length).
    Its JSON is complete, so the call is returned (as the response's finish_reason says, it was cut)."""
    p = get_parser(fmt)
    one = CALLS[fmt].split(p.end)[0]  # "...<tool_call>\n{...}\n"
    cut = one + p.end[:keep]
    content, calls = p.parse(cut, NAMES, truncated=True)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert content == "Let me check."
    assert p.parse(cut, NAMES) == (cut, [])  # not cut by max_tokens: a malformed answer stays text
    broken = one.replace('"Paris"}}', '"Par') + p.end[:keep]  # JSON unfinished too: no call
    assert p.parse(broken, NAMES, truncated=True)[1] == []
    split = StreamSplitter(p, NAMES, False)
    sent = "".join(split.feed(ch) for ch in cut)
    rest, streamed = split.finish(truncated=True)
    assert [c.name for c in streamed] == ["get_weather"] and p.start not in sent + rest


@pytest.mark.parametrize("fmt", ["hermes", "internlm2"])
def test_an_argument_holding_the_end_marker_does_not_cut_its_call(fmt):
    """A sampled forced call on the demo model wrote `"to_currency": "…'}()}</tool_call>]])} "`: valid JSON under
    the grammar, so it is a call (the parser read up to the first end marker and returned it as text)."""
    p = get_parser(fmt)
    text = (f'{p.start}\n{{"name": "convert_currency", "arguments": {{"amount": 1, "to": "X{p.end}]])}} "}}}}\n'
            f'{p.end}\n{p.start}\n{{"name": "get_weather", "arguments": {{"city": "Rome"}}}}\n{p.end}')
    content, calls = p.parse(text, NAMES)
    assert [c.name for c in calls] == ["convert_currency", "get_weather"], (content, calls)
    assert json.loads(calls[0].arguments)["to"] == f"X{p.end}]])}} "
    junk = text.replace(f'}}}}\n{p.end}\n{p.start}', f'}}}} trailing words\n{p.end}\n{p.start}', 1)
    assert p.parse(junk, NAMES) == (junk, [])  # text between a call's JSON and its end: no calls
