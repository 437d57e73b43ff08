"""Structured output and forced tool calls on the tokenizers users bring: byte-level BPE with and without a
prefix space, SentencePiece in Llama-2 style (``▁`` word prefix, byte fallback; as transformers converts it
and as Llama 2's tokenizer.json on the Hub spells it), and a vocabulary that has no ``{``. Every request
of every kind, greedy and sampled, is valid, or (only where the vocabulary cannot write what is asked) a
400 that says which character is missing; never a 500. Each tokenizer is built offline in the test."""

from __future__ import annotations

import json
import re
from functools import partial

import httpx
import jsonschema
import openai
import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.builders import build_bpe_tokenizer, build_sentencepiece_tokenizer, build_tiny_model
from tests.server import running_server

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 9},
                                           "unit": {"enum": ["c", "f"]}},
          "required": ["city", "days", "unit"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                         "parameters": SCHEMA}}
MSG = [{"role": "user", "content": "what is the weather in paris?"}]
REGEX = "[0-9]{3}-(red|blue)"
CHOICES = ["paris", "berlin", "new york"]

TOKENIZERS = {
    "bpe-prefix-space": partial(build_bpe_tokenizer, prefix_space=True),
    "bpe": partial(build_bpe_tokenizer, prefix_space=False),
    "sentencepiece": build_sentencepiece_tokenizer,
    "sentencepiece-hub-json": partial(build_sentencepiece_tokenizer, hub_style=True),
    "bpe-without-braces": partial(build_bpe_tokenizer, prefix_space=False, without="{}"),
}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def server(request, tmp_path_factory):
    pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp(request.param)
    model_dir = build_tiny_model(root / "model", context=2048, tokenizer=TOKENIZERS[request.param])
    m = resolve_model(str(model_dir), Settings())
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, dtype="fp32", max_batch_size=8)
    app = create_app(ServeConfig(base="tiny", tool_template="hermes", tool_parser="hermes"), engine=engine,
                     registry=Registry(LocalStore(root / "registry")), base_name="tiny")
    with running_server(app) as url:
        yield request.param, url
    engine.stop()


def _requests() -> dict[str, dict]:
    return {
        "json_schema": {"response_format": {"type": "json_schema",
                                            "json_schema": {"name": "w", "schema": SCHEMA, "strict": True}}},
        "json_object": {"response_format": {"type": "json_object"}},
        "guided_choice": {"guided_choice": CHOICES},
        "regex": {"guided_regex": REGEX},
        "tool_call": {"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False},
    }


def _check(kind: str, choice: dict) -> None:
    msg = choice["message"]
    if kind == "tool_call":
        assert choice["finish_reason"] == "tool_calls" and len(msg["tool_calls"]) == 1, msg
        call = msg["tool_calls"][0]["function"]
        assert call["name"] == "get_weather"
        jsonschema.validate(json.loads(call["arguments"]), SCHEMA)
        return
    text = msg["content"]
    if kind == "json_object":  # a random model may write one long string: then it is still an object's start
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(text), dict), text
        else:
            assert text.startswith("{"), text
    elif kind == "json_schema":
        assert choice["finish_reason"] == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)
    elif kind == "guided_choice":
        assert text in CHOICES, text
    else:
        assert re.fullmatch(REGEX, text), text


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("kind", list(_requests()))
def test_every_constraint_is_valid_or_a_400_naming_the_missing_character(server, kind, temperature):
    name, url = server
    body = {"model": "tiny", "messages": MSG, "max_tokens": 120, "temperature": temperature, "seed": 1,
            "n": 1 if temperature == 0 else 4, **_requests()[kind]}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
    needs_braces = kind in ("json_schema", "json_object", "tool_call")
    if name == "bpe-without-braces" and needs_braces:
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert "has no token that writes '{'" in err["message"], err
        assert err["param"] in ("response_format", "tools"), err
        return
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        _check(kind, choice)


def test_the_official_client_parses_a_schema_on_a_prefix_space_tokenizer(server):
    name, url = server
    if name != "bpe-prefix-space":
        pytest.skip("one tokenizer is enough for the client round trip")
    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        city: str = Field(max_length=10)
        days: int = Field(ge=1, le=9)

    c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    parsed = c.chat.completions.parse(model="tiny", messages=MSG, response_format=Weather, max_tokens=120,
                                      temperature=1.0, seed=3)
    assert isinstance(parsed.choices[0].message.parsed, Weather)
