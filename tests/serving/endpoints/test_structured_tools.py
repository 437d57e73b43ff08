"""Structured output and tool calling through a real server, with the official ``openai`` client and
``langchain-openai``: every sampled output under a schema parses and validates, forced tool calls always
parse and validate, mixed constrained/free batches keep each row's text, bad schemas get 400."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Annotated, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from adapterhub.templates import TEMPLATES
from tests.builders import build_lora_adapter, build_tiny_model
from tests.server import running_server

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["red", "blue", "green"]}, "maxItems": 3},
    },
    "required": ["city", "days", "ok", "tags"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CONVERT = {"type": "function", "function": {
    "name": "convert_currency", "description": "Convert an amount.",
    "parameters": {"type": "object", "properties": {"amount": {"type": "integer", "minimum": 0, "maximum": 999},
                                                    "to": {"enum": ["eur", "usd"]}},
                   "required": ["amount", "to"], "additionalProperties": False}}}
TOOLS = [WEATHER, CONVERT]
ARGS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MSG = [{"role": "user", "content": "what is the weather in paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server on a tiny model whose tokenizer can write JSON; "agent" is an adapter recorded as trained
    with the hermes tool template, "plain" one without."""
    root = tmp_path_factory.mktemp("structured")
    model_dir = build_tiny_model(root / "tiny-json", json_vocab=True, context=2048)
    m = resolve_model(str(model_dir), Settings())
    registry = Registry(LocalStore(root / "registry"))
    base = {"id": "tiny", "fingerprint": m.fingerprint}
    registry.register(build_lora_adapter(model_dir, root / "a1", seed=1), "agent", base_model=base,
                      chat_template=TEMPLATES["hermes"], training={"tool_parser": "hermes"})
    registry.register(build_lora_adapter(model_dir, root / "a2", seed=2), "plain", base_model=base)
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, max_loaded=2, max_lora_rank=8,
                      dtype="fp32", max_batch_size=8)
    app = create_app(ServeConfig(base="tiny", max_loaded=2, max_lora_rank=8), engine=engine, registry=registry,
                     base_name="tiny")
    with running_server(app) as url:
        yield url, engine
    engine.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 80, **body},
                      timeout=120)


def test_json_schema_samples_all_parse_and_validate(server):
    url, _ = server
    r = client(url).chat.completions.create(
        model="plain", messages=MSG, temperature=1.0, n=50, seed=7, max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA, "strict": True}})
    texts = [c.message.content for c in r.choices]
    assert len(texts) == 50 and len(set(texts)) > 10  # sampled, not one answer repeated
    for c in r.choices:
        assert c.finish_reason == "stop", c.message.content
        jsonschema.validate(json.loads(c.message.content), SCHEMA)


def test_parse_with_a_pydantic_model_json_object_and_vllm_fields(server):
    url, _ = server

    class Weather(BaseModel):  # bounded: a random model would otherwise write one string until max_tokens
        city: str = Field(max_length=10)
        days: int = Field(ge=1, le=9)

    c = client(url)
    parsed = c.chat.completions.parse(model="tiny", messages=MSG, response_format=Weather, max_tokens=200,
                                      temperature=0)
    assert isinstance(parsed.choices[0].message.parsed, Weather)
    obj = c.chat.completions.create(model="tiny", messages=MSG, response_format={"type": "json_object"},
                                    max_tokens=200, temperature=0)
    text = obj.choices[0].message.content
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # the random model may write one long string: then it is still a JSON object's beginning
        assert text.startswith("{") and text.count('"') % 2 == 1, text
    choice = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=20,
                                       extra_body={"guided_choice": ["paris", "berlin"]}, temperature=1.0, n=8)
    assert {ch.message.content for ch in choice.choices} <= {"paris", "berlin"}
    regex = c.completions.create(model="tiny", prompt="the number", max_tokens=20,
                                 extra_body={"guided_regex": "[0-9]{3}-[a-c]{2}"}, temperature=1.0, n=8)
    assert all(__import__("re").fullmatch("[0-9]{3}-[a-c]{2}", ch.text) for ch in regex.choices)
    so = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=20, temperature=1.0,
                                   extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert so.choices[0].message.content in ("yes", "no")


@pytest.mark.parametrize("body,param,reason", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}},
     "response_format", "Invalid type"),
    ({"guided_regex": "a("}, "guided_regex", "unclosed group"),
    ({"guided_grammar": "start: undefined_rule"}, "guided_grammar", "undefined_rule"),
    ({"guided_choice": []}, "guided_choice", "empty"),
    ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice", "cannot be combined"),
])
def test_constraints_the_library_cannot_compile_get_400_with_its_reason(server, body, param, reason):
    r = post(server[0], body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and reason in err["message"], err


def test_constrained_and_free_rows_on_different_adapters_share_a_batch(server):
    url, engine = server
    jobs = [("agent", {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}}),
            ("plain", {}), ("tiny", {"guided_choice": ["paris", "berlin", "river"]}), ("agent", {}),
            ("plain", {"response_format": {"type": "json_object"}}), ("tiny", {})]

    def run(model: str, extra: dict) -> str:
        r = post(url, {"model": model, "temperature": 0, "max_tokens": 60, **extra})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    solo = [run(m, e) for m, e in jobs]
    out: list[str | None] = [None] * len(jobs)
    engine.peak_batch = 0

    def worker(i: int) -> None:
        out[i] = run(*jobs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.peak_batch > 1
    assert out == solo
    jsonschema.validate(json.loads(solo[0]), SCHEMA)
    assert solo[2] in ("paris", "berlin", "river")


def test_forced_tool_calls_always_parse_and_validate(server):
    url, _ = server
    c = client(url)
    # one call each (a random model, allowed parallel calls, may go on calling until max_tokens)
    r = c.chat.completions.create(model="agent", messages=MSG, tools=TOOLS, tool_choice="required", temperature=1.0,
                                  n=20, seed=3, max_tokens=150, parallel_tool_calls=False)
    assert len({ch.message.tool_calls[0].function.arguments for ch in r.choices}) > 5  # sampled
    assert {ch.message.tool_calls[0].function.name for ch in r.choices} == {"get_weather", "convert_currency"}
    for ch in r.choices:
        assert ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1, ch.message
        for call in ch.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), ARGS[call.function.name])
            assert call.id.startswith("call_")
    named = c.chat.completions.create(model="agent", messages=MSG, tools=TOOLS, temperature=1.0, n=10, seed=4,
                                      tool_choice={"type": "function", "function": {"name": "convert_currency"}},
                                      parallel_tool_calls=False, max_tokens=150)
    for ch in named.choices:
        assert [t.function.name for t in ch.message.tool_calls] == ["convert_currency"]
        jsonschema.validate(json.loads(ch.message.tool_calls[0].function.arguments), ARGS["convert_currency"])


def test_streamed_tool_calls_and_the_round_trip(server):
    url, _ = server
    c = client(url)
    calls: dict[int, dict] = {}
    reasons = []
    for chunk in c.chat.completions.create(model="agent", messages=MSG, tools=TOOLS, tool_choice="required",
                                           stream=True, temperature=0, max_tokens=150, parallel_tool_calls=False):
        for ch in chunk.choices:
            reasons.append(ch.finish_reason)
            assert not ch.delta.content  # a forced call streams no prose
            for tc in ch.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"name": "", "arguments": "", "id": None})
                entry["id"] = entry["id"] or tc.id
                entry["name"] += tc.function.name or ""
                entry["arguments"] += tc.function.arguments or ""
    assert reasons[-1] == "tool_calls" and calls
    full = c.chat.completions.create(model="agent", messages=MSG, tools=TOOLS, tool_choice="required",
                                     temperature=0, max_tokens=150, parallel_tool_calls=False)
    first = full.choices[0].message.tool_calls[0]
    assert (calls[0]["name"], json.loads(calls[0]["arguments"])) == (first.function.name,
                                                                     json.loads(first.function.arguments))
    # the call and the tool's result go back in the next request; the template renders both
    follow = MSG + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": first.id, "type": "function", "function": {"name": first.function.name,
                                                          "arguments": first.function.arguments}}]},
        {"role": "tool", "tool_call_id": first.id, "content": '{"temp": 21}'}]
    again = c.chat.completions.create(model="agent", messages=follow, tools=TOOLS, max_tokens=8, temperature=0)
    assert again.choices[0].finish_reason in ("stop", "length", "tool_calls")
    tok = httpx.post(url + "/tokenize", json={"model": "agent", "messages": follow}).json()
    rendered = httpx.post(url + "/detokenize", json={"model": "agent", "tokens": tok["tokens"]}).json()["prompt"]
    assert f'"name": "{first.function.name}", "arguments": ' in rendered and '{"temp": 21}' in rendered


def test_tools_need_a_template_that_renders_them(server):
    url, _ = server
    r = post(url, {"tools": TOOLS})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert "--tool-template" in r.json()["error"]["message"]
    assert post(url, {"tools": TOOLS, "tool_choice": "none", "max_tokens": 2}).status_code == 200
    bad = post(url, {"model": "agent", "tools": TOOLS, "tool_choice": {"type": "function",
                                                                      "function": {"name": "nope"}}})
    assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]
    both = post(url, {"model": "agent", "tools": TOOLS, "tool_choice": "required",
                      "response_format": {"type": "json_object"}})
    assert both.status_code == 400 and "cannot be combined" in both.json()["error"]["message"]
    legacy = post(url, {"functions": [{"name": "f"}]})
    assert legacy.status_code == 400 and legacy.json()["error"]["param"] == "functions"


def test_langchain_bind_tools_and_with_structured_output(server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    url, _ = server

    @tool
    def convert_currency(amount: Annotated[int, Field(ge=0, le=999)], to: Literal["eur", "usd"]) -> str:
        """Convert an amount of money to a currency."""
        return f"{amount} {to}"

    llm = ChatOpenAI(base_url=url + "/v1", api_key="x", model="agent", temperature=0, max_tokens=120, max_retries=0)
    msg = llm.bind_tools([convert_currency], tool_choice="convert_currency", strict=True,
                         parallel_tool_calls=False).invoke("convert 5 to eur")
    assert [c["name"] for c in msg.tool_calls] == ["convert_currency"], (msg, msg.response_metadata)
    assert set(msg.tool_calls[0]["args"]) == {"amount", "to"} and isinstance(msg.tool_calls[0]["args"]["amount"], int)

    class City(BaseModel):
        name: str = Field(max_length=12)
        population: int = Field(ge=0, le=10**6)

    city = llm.with_structured_output(City, method="json_schema").invoke("a city, as JSON")
    assert isinstance(city, City)


def test_tool_template_option_serves_tools_on_a_base_without_tool_support(tmp_path):
    model_dir = build_tiny_model(tmp_path / "tiny-json", json_vocab=True, context=2048)
    m = resolve_model(str(model_dir), Settings())
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, dtype="fp32")
    app = create_app(ServeConfig(base="tiny", tool_template="hermes", tool_parser="hermes"), engine=engine,
                     registry=Registry(LocalStore(tmp_path / "reg")), base_name="tiny")
    try:
        with running_server(app) as url:
            r = client(url).chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, tool_choice="required",
                                                    temperature=0, max_tokens=150, parallel_tool_calls=False)
            assert r.choices[0].message.tool_calls
    finally:
        engine.stop()
    with pytest.raises(Exception, match="neither a named template"):
        create_app(ServeConfig(base="tiny", tool_template=str(Path(tmp_path / "missing.jinja"))), engine=engine,
                   registry=Registry(LocalStore(tmp_path / "reg")), base_name="tiny")


def test_openai_agents_sdk_runs_one_tool_loop(server):
    agents = pytest.importorskip("agents")
    from openai import AsyncOpenAI

    url, _ = server
    agents.set_tracing_disabled(True)
    calls: list[tuple[str, str]] = []

    @agents.function_tool
    def get_weather(city: Annotated[str, Field(max_length=12)], unit: Literal["c", "f"]) -> str:
        """Current weather of a city."""
        calls.append((city, unit))
        return f"21 degrees {unit} in {city}"

    model = agents.OpenAIChatCompletionsModel(model="agent", openai_client=AsyncOpenAI(
        base_url=url + "/v1", api_key="x", max_retries=0))
    agent = agents.Agent(name="weather", instructions="Use tools.", model=model, tools=[get_weather],
                         model_settings=agents.ModelSettings(tool_choice="required", temperature=0, max_tokens=60,
                                                             parallel_tool_calls=False))
    result = agents.Runner.run_sync(agent, "weather in paris?", max_turns=3)
    # the forced call ran our tool with valid arguments; then (tool_choice reset to auto) the model answered
    assert len(calls) == 1 and calls[0][1] in ("c", "f") and len(calls[0][0]) <= 12
    assert isinstance(result.final_output, str)
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item"


def test_parallel_tool_calls_false_keeps_one_call_in_auto_mode():
    """A model in auto mode may write two calls; with parallel_tool_calls false the client gets one."""
    from adapterhub.serving.endpoints.chat.serving import ChatService, ToolPlan
    from adapterhub.tools import get_parser

    two = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris", "unit": "c"}}\n</tool_call>\n'
           '<tool_call>\n{"name": "convert_currency", "arguments": {"amount": 5, "to": "eur"}}\n</tool_call>')
    for parallel, n in ((True, 2), (False, 1)):
        plan = ToolPlan(get_parser("hermes"), set(ARGS), "auto", TOOLS, parallel)
        message, reason = ChatService.message(two, "stop", plan)
        assert reason == "tool_calls" and len(message.tool_calls or []) == n
        assert message.tool_calls[0].function.name == "get_weather"
    # a strict function's call whose arguments do not validate is not returned as a call, in auto mode
    bad = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "paris", "unit": "kelvin"}}\n</tool_call>'
    strict = [dict(WEATHER, function={**WEATHER["function"], "strict": True}), CONVERT]
    message, reason = ChatService.message(bad, "stop", ToolPlan(get_parser("hermes"), set(ARGS), "auto", strict))
    assert reason == "stop" and message.tool_calls is None and message.content == bad
    loose, _ = ChatService.message(bad, "stop", ToolPlan(get_parser("hermes"), set(ARGS), "auto", TOOLS))
    assert loose.tool_calls is not None  # without strict the parsed call is returned as written


def test_a_call_cut_by_max_tokens_is_still_a_call_with_finish_reason_length(server):
    """The README's rule for a cut answer: its complete calls are returned and finish_reason stays "length"
    (`make demo-agent` printed raw `<tool_call>` markup when the cut fell inside `</tool_call>`)."""
    url, _ = server
    c = client(url)
    kw = dict(model="agent", messages=MSG, tools=TOOLS, temperature=0,
              tool_choice={"type": "function", "function": {"name": "get_weather"}})
    full = c.chat.completions.create(max_tokens=150, **kw)
    (call,) = full.choices[0].message.tool_calls
    n = full.usage.completion_tokens
    for limit in (n - 1, n - 2, n - 3):  # the cut falls in or just before the end marker
        r = c.chat.completions.create(max_tokens=limit, **kw)
        assert r.choices[0].finish_reason == "length", (limit, r)
        got = r.choices[0].message.tool_calls
        assert got and (got[0].function.name, json.loads(got[0].function.arguments)) == \
            (call.function.name, json.loads(call.function.arguments)), (limit, r.choices[0].message)
        assert r.choices[0].message.content is None
    reasons, names = [], []
    for chunk in c.chat.completions.create(max_tokens=n - 2, stream=True, **kw):
        for ch in chunk.choices:
            reasons += [ch.finish_reason] if ch.finish_reason else []
            names += [tc.function.name for tc in ch.delta.tool_calls or [] if tc.function.name]
    assert reasons == ["length"] and names == [call.function.name]
