"""``/v1/responses`` through a real server with the official ``openai`` client (``responses.create`` /
``.stream`` / ``.parse``), the OpenAI Agents SDK on its default (Responses) model, and every response and
streamed event validated against the Open Responses spec's published types (``openresponses-types``).

The Open Responses compliance suite (openresponses/openresponses ``bin/compliance-test.ts``) is a
TypeScript program run against a server URL; it cannot be fetched here (no GitHub access), so its six
scenarios are tests of our own below: basic text, streaming, system prompt, tool calling, image input
(on a tiny LLaVA) and multi-turn."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Annotated, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field, TypeAdapter

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

ort = pytest.importorskip("openresponses_types")

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather of a city.", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                           "unit": {"enum": ["c", "f"]}},
                          "required": ["city", "unit"], "additionalProperties": False}}
_RESOURCE = TypeAdapter(ort.ResponseResource)


class RESOURCE:  # noqa: N801 - used like the TypeAdapter it wraps
    """The spec's ResponseResource. One quirk of the generated package: its JsonSchemaResponseFormat types
    ``schema`` as null only, where the spec's JSON (schema/components/schemas/JsonSchemaResponseFormat.json)
    says object or null, and OpenAI's API echoes the schema; the schema's shape is checked here instead."""

    @staticmethod
    def validate_python(data: dict) -> None:
        fmt = (data.get("text") or {}).get("format") or {}
        if fmt.get("type") == "json_schema":
            assert isinstance(fmt["schema"], dict) or fmt["schema"] is None
            data = {**data, "text": {**data["text"], "format": {**fmt, "schema": None}}}
        _RESOURCE.validate_python(data)
EVENTS = {
    "response.created": ort.ResponseCreatedStreamingEvent, "response.in_progress": ort.ResponseInProgressStreamingEvent,
    "response.completed": ort.ResponseCompletedStreamingEvent, "response.failed": ort.ResponseFailedStreamingEvent,
    "response.incomplete": ort.ResponseIncompleteStreamingEvent,
    "response.output_item.added": ort.ResponseOutputItemAddedStreamingEvent,
    "response.output_item.done": ort.ResponseOutputItemDoneStreamingEvent,
    "response.content_part.added": ort.ResponseContentPartAddedStreamingEvent,
    "response.content_part.done": ort.ResponseContentPartDoneStreamingEvent,
    "response.output_text.delta": ort.ResponseOutputTextDeltaStreamingEvent,
    "response.output_text.done": ort.ResponseOutputTextDoneStreamingEvent,
    "response.function_call_arguments.delta": ort.ResponseFunctionCallArgumentsDeltaStreamingEvent,
    "response.function_call_arguments.done": ort.ResponseFunctionCallArgumentsDoneStreamingEvent,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tiny model that writes JSON; "agent" (two versions, alias production → 1) trained with the hermes
    tool template."""
    root = tmp_path_factory.mktemp("responses")
    model_dir = build_tiny_model(root / "tiny-json", json_vocab=True, context=2048)
    m = resolve_model(str(model_dir), Settings())
    registry = Registry(LocalStore(root / "registry"))
    base = {"id": "tiny", "fingerprint": m.fingerprint}
    for seed in (1, 2):
        registry.register(build_lora_adapter(model_dir, root / f"a{seed}", seed=seed), "agent", base_model=base,
                          chat_template=TEMPLATES["hermes"], training={"tool_parser": "hermes"})
    registry.set_alias("agent@1", "production")
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, max_loaded=2, max_lora_rank=8,
                      dtype="fp32", max_batch_size=8)
    app = create_app(ServeConfig(base="tiny", max_loaded=2, max_lora_rank=8), engine=engine, registry=registry,
                     base_name="tiny")
    with running_server(app) as url:
        yield url, registry
    engine.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def raw_events(url: str, body: dict) -> list[dict]:
    """The SSE stream as sent: every event's ``event:`` line matches its ``type``."""
    events = []
    with httpx.stream("POST", url + "/v1/responses", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert data["type"] == name, (name, data)
                events.append(data)
    return events


def check_events(events: list[dict]) -> dict:
    """Every event validates against the spec, numbered 0, 1, 2…; returns the final response."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    for e in events:
        if "response" in e:
            RESOURCE.validate_python(e["response"])
            e = {**e, "response": {**e["response"], "text": {"format": {"type": "text"}}}}  # checked just above
        EVENTS[e["type"]].model_validate(e)
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    return events[-1]["response"]


# ------------------------------------------------------------------ the six compliance scenarios
def test_basic_text_response_is_stored_and_can_be_read_listed_and_deleted(server):
    url, _ = server
    c = client(url)
    r = c.responses.create(model="tiny", input="hello, who are you?", max_output_tokens=12, temperature=0,
                           metadata={"team": "a"})
    RESOURCE.validate_python(r.model_dump())
    assert r.status in ("completed", "incomplete") and r.output[0].type == "message"
    assert r.output_text and r.output_text == r.output[0].content[0].text
    assert r.usage.input_tokens > 5 and 0 < r.usage.output_tokens <= 12
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.metadata == {"team": "a"} and r.model == "tiny" and r.id.startswith("resp_")
    got = c.responses.retrieve(r.id)
    assert got.output_text == r.output_text and got.usage == r.usage
    items = c.responses.input_items.list(r.id)
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [("message", "user", "hello, who are you?")]
    assert c.responses.delete(r.id) is None
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    unstored = c.responses.create(model="tiny", input="hi", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(unstored.id)


CHOICE = {"format": {"type": "json_schema", "name": "pick", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"enum": ["paris", "berlin"]}}, "required": ["city"],
    "additionalProperties": False}}}


def test_streaming_events_are_typed_numbered_and_add_up(server):
    url, _ = server
    # a bounded format, so the random model's answer completes (the client's stream helper wants
    # response.completed; a cut answer ends with response.incomplete, tested below)
    events = raw_events(url, {"model": "agent", "input": "tell me about paris", "max_output_tokens": 40,
                              "temperature": 0, "text": CHOICE})
    final = check_events(events)
    types = [e["type"] for e in events]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert deltas == done["text"] == final["output"][0]["content"][0]["text"]
    # the same answer as without streaming, and the official client's stream helper agrees
    assert final["status"] == "completed" and json.loads(deltas)["city"] in ("paris", "berlin")
    whole = client(url).responses.create(model="agent", input="tell me about paris", max_output_tokens=40,
                                         temperature=0, text=CHOICE)
    assert whole.output_text == deltas
    with client(url).responses.stream(model="agent", input="tell me about paris", max_output_tokens=40,
                                      temperature=0, text=CHOICE) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        assert stream.get_final_response().output_text == text == deltas


def test_system_prompt_instructions_reach_the_template(server):
    url, _ = server
    c = client(url)
    plain = c.responses.create(model="tiny", input="hi", max_output_tokens=4, temperature=0)
    with_sys = c.responses.create(model="tiny", input="hi", instructions="you are lumen, made by acme lab",
                                  max_output_tokens=4, temperature=0)
    as_item = c.responses.create(model="tiny", max_output_tokens=4, temperature=0, input=[
        {"role": "developer", "content": "you are lumen, made by acme lab"}, {"role": "user", "content": "hi"}])
    assert with_sys.instructions == "you are lumen, made by acme lab"
    assert with_sys.usage.input_tokens > plain.usage.input_tokens
    assert with_sys.usage.input_tokens == as_item.usage.input_tokens and with_sys.output_text == as_item.output_text


def test_tool_calling_round_trip_and_the_stored_conversation(server):
    url, _ = server
    c = client(url)
    first = c.responses.create(model="agent", input="what is the weather in paris?", tools=[WEATHER],
                               tool_choice="required", temperature=0, max_output_tokens=80,
                               parallel_tool_calls=False)
    RESOURCE.validate_python(first.model_dump())
    calls = [o for o in first.output if o.type == "function_call"]
    assert first.status == "completed" and len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])
    second = c.responses.create(model="agent", previous_response_id=first.id, temperature=0, max_output_tokens=8,
                                input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                        "output": "21 degrees c"}], tools=[WEATHER], tool_choice="none")
    assert second.previous_response_id == first.id and second.output[0].type == "message"
    # the conversation was resent: the prompt holds the first turn, its call and the tool's output
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # the same conversation sent in full, without previous_response_id, gives the same prompt and answer
    again = c.responses.create(model="agent", temperature=0, max_output_tokens=8, tools=[WEATHER], tool_choice="none",
                               input=[{"role": "user", "content": "what is the weather in paris?"},
                                      {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                                       "arguments": calls[0].arguments},
                                      {"type": "function_call_output", "call_id": calls[0].call_id,
                                       "output": "21 degrees c"}])
    assert again.usage.input_tokens == second.usage.input_tokens and again.output_text == second.output_text
    # streamed forced call: the typed function-call events
    events = raw_events(url, {"model": "agent", "input": "weather in berlin?", "tools": [WEATHER],
                              "tool_choice": "required", "temperature": 0, "max_output_tokens": 80,
                              "parallel_tool_calls": False})
    final = check_events(events)
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["name"] == "get_weather" and json.loads(done["arguments"])["city"]
    assert final["output"][-1]["type"] == "function_call" and final["output"][-1]["arguments"] == done["arguments"]


def test_image_input_on_a_llava_model(tmp_path):
    from PIL import Image

    from tests.builders import build_tiny_llava

    llava = build_tiny_llava(tmp_path / "llava")
    m = resolve_model(str(llava), Settings())
    engine = HFEngine(m.path, model_id="llava", fingerprint=m.fingerprint, dtype="fp32")
    app = create_app(ServeConfig(base="llava"), engine=engine, registry=Registry(LocalStore(tmp_path / "reg")),
                     base_name="llava")
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="PNG")
    url_data = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    try:
        with running_server(app) as url:
            c = client(url)
            content = [{"type": "input_text", "text": "what colour"}, {"type": "input_image", "image_url": url_data}]
            r = c.responses.create(model="llava", input=[{"role": "user", "content": content}], max_output_tokens=6,
                                   temperature=0)
            RESOURCE.validate_python(r.model_dump())
            chat = c.chat.completions.create(model="llava", max_tokens=6, temperature=0, messages=[
                {"role": "user", "content": [{"type": "text", "text": "what colour"},
                                             {"type": "image_url", "image_url": {"url": url_data}}]}])
            assert r.output_text == chat.choices[0].message.content  # the image reached the model
            assert r.usage.input_tokens == chat.usage.prompt_tokens
            text_only = c.responses.create(model="llava", input="what colour", max_output_tokens=6, temperature=0)
            assert text_only.usage.input_tokens < r.usage.input_tokens  # the image's tokens are in the prompt
    finally:
        engine.stop()


def test_multi_turn_continues_on_the_version_it_started_on(server):
    url, registry = server
    c = client(url)
    first = c.responses.create(model="agent@production", input="hello", max_output_tokens=6, temperature=0)
    assert first.model == "agent@production"
    registry.set_alias("agent@2", "production")
    try:
        second = c.responses.create(model="agent@production", previous_response_id=first.id, input="and then?",
                                    max_output_tokens=6, temperature=0)
        assert second.model == "agent@1"  # the alias moved to 2; the conversation stays on 1
        on_one = c.responses.create(model="agent@1", max_output_tokens=6, temperature=0, input=[
            {"role": "user", "content": "hello"}, {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "and then?"}])
        assert second.output_text == on_one.output_text and second.usage.input_tokens == on_one.usage.input_tokens
        fresh = c.responses.create(model="agent@production", input="hello", max_output_tokens=6, temperature=0)
        assert c.responses.create(model="agent@2", input="hello", max_output_tokens=6,
                                  temperature=0).output_text == fresh.output_text
    finally:
        registry.set_alias("agent@1", "production")
    with pytest.raises(openai.NotFoundError, match="no stored response"):
        c.responses.create(model="agent", previous_response_id="resp_missing", input="hi", max_output_tokens=4)


# ------------------------------------------------------------------ clients
def test_parse_with_a_pydantic_model_and_json_modes(server):
    url, _ = server

    class Weather(BaseModel):
        city: str = Field(max_length=10)
        days: int = Field(ge=1, le=9)

    c = client(url)
    parsed = c.responses.parse(model="tiny", input="weather?", text_format=Weather, max_output_tokens=120,
                               temperature=1.0)
    assert isinstance(parsed.output_parsed, Weather)
    obj = c.responses.create(model="tiny", input="json please", text={"format": {"type": "json_object"}},
                             max_output_tokens=200, temperature=0)
    RESOURCE.validate_python(obj.model_dump())
    if obj.status == "completed":
        assert isinstance(json.loads(obj.output_text), dict)
    else:  # cut by max_output_tokens: still an object's beginning
        assert obj.incomplete_details.reason == "max_output_tokens" and obj.output_text.startswith("{")


def test_max_output_tokens_makes_an_incomplete_response(server):
    url, _ = server
    r = client(url).responses.create(model="tiny", input="write a long story", max_output_tokens=3, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and r.output[0].status == "incomplete"
    events = raw_events(url, {"model": "tiny", "input": "write a long story", "max_output_tokens": 3,
                              "temperature": 0})
    assert check_events(events)["status"] == "incomplete" and events[-1]["type"] == "response.incomplete"


def test_responses_are_counted_as_responses_in_metrics(server):
    url, _ = server

    def served() -> tuple[float, float]:
        text = httpx.get(url + "/metrics").text
        def count(endpoint: str) -> float:
            line = f'adapterhub_requests_total{{endpoint="{endpoint}",name="tiny",status="200",version="base"}}'
            return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))
        return count("responses"), count("chat")

    before = served()
    client(url).responses.create(model="tiny", input="hi", max_output_tokens=2)
    raw_events(url, {"model": "tiny", "input": "hi", "max_output_tokens": 2})
    after = served()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 0)


def test_openai_agents_sdk_on_its_default_responses_model(server):
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

    model = agents.OpenAIResponsesModel(model="agent", openai_client=AsyncOpenAI(
        base_url=url + "/v1", api_key="x", max_retries=0))
    class Answer(BaseModel):  # a bounded final answer (text.format json_schema), so the random model ends it
        unit: Literal["c", "f"]

    agent = agents.Agent(name="weather", instructions="Use tools.", model=model, tools=[get_weather],
                         output_type=Answer,
                         model_settings=agents.ModelSettings(tool_choice="required", temperature=0, max_tokens=60,
                                                             parallel_tool_calls=False),
                         reset_tool_choice=True)
    result = agents.Runner.run_sync(agent, "weather in paris?", max_turns=3)
    assert len(calls) == 1 and calls[0][1] in ("c", "f")  # the tool ran once with valid arguments
    kinds = [type(i).__name__ for i in result.new_items]
    assert kinds[:2] == ["ToolCallItem", "ToolCallOutputItem"] and kinds[-1] == "MessageOutputItem", kinds
    assert isinstance(result.final_output, Answer)


# ------------------------------------------------------------------ what it refuses
@pytest.mark.parametrize("extra,param,reason", [
    ({"tools": [{"type": "web_search"}]}, "tools", "built-in tool 'web_search' is not supported"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools", "built-in tool 'file_search'"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools", "'code_interpreter'"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "http://x"}]}, "tools", "'mcp'"),
    ({"tools": [{"type": "computer_use_preview", "display_width": 1, "display_height": 1,
                 "environment": "linux"}]}, "tools", "'computer_use_preview'"),
    ({"reasoning": {"effort": "low"}}, "reasoning", "no separate reasoning"),
    ({"background": True}, "background", "not supported"),
    ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
    ({"truncation": "auto"}, "truncation", "only truncation 'disabled'"),
    ({"frobnicate": 1}, "frobnicate", "not a parameter"),
    ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice", "not in tools"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "frob"}}}}, "text.format",
     "Invalid type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input", "input_file"),
])
def test_what_it_cannot_do_is_a_400_naming_it(server, extra, param, reason):
    url, _ = server
    r = httpx.post(url + "/v1/responses", json={"model": "tiny", "input": "hi", "max_output_tokens": 4, **extra},
                   timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"].startswith(param) and reason in err["message"], err


def test_stored_responses_are_shared_through_the_registry_database(server, tmp_path):
    """Another connection to the same registry database (what a second replica opens) reads what this server
    stored; expired records are never returned."""
    url, registry = server
    first = client(url).responses.create(model="tiny", input="hi", max_output_tokens=4, temperature=0)
    record = Registry(LocalStore(registry.store.root)).store.get_response(first.id)
    assert record["response"]["id"] == first.id and record["pinned"] == "tiny"
    store = registry.store
    store.put_response("resp_old", {"response": {}}, expires_at=time.time() - 1)
    assert store.get_response("resp_old") is None and store.delete_response("resp_old") is False
