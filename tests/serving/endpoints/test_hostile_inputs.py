"""Inputs that used to be 500s are 400s naming the field; numbers are ASCII digits; a grammar that fails
only when matching starts is refused before it is queued; anyone sending random paths cannot grow
/metrics. Raw JSON bodies (a lone surrogate is valid JSON: ``"\\ud800"``) through a real server."""

from __future__ import annotations

import json

import httpx
import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.builders import build_lora_adapter
from tests.server import running_server

MARK = "@LONE@"  # replaced by a lone surrogate's JSON escape in the raw body
MSG = [{"role": "user", "content": "hi"}]


def weather(description: str) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "description": description, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}


def raw(body: dict) -> str:
    """The body as JSON text, with MARK turned into ``\\ud800`` (valid JSON, not valid Unicode)."""
    return json.dumps(body).replace(MARK, "\\ud800")


def chat(**fields) -> str:
    return raw({"model": "tiny", "messages": MSG, "max_tokens": 2, **fields})


@pytest.fixture(scope="module")
def server(tiny_json_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    m = resolve_model(str(tiny_json_model), Settings())
    registry = Registry(LocalStore(root / "registry"))
    registry.register(build_lora_adapter(tiny_json_model, root / "a1", seed=1), "ad",
                      base_model={"id": "tiny", "fingerprint": m.fingerprint})
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, dtype="fp32")
    app = create_app(ServeConfig(base="tiny", tool_template="hermes"), engine=engine, registry=registry,
                     base_name="tiny")
    with running_server(app) as url:
        yield url
    engine.stop()


def post(url: str, path: str, body: str) -> httpx.Response:
    return httpx.post(url + path, content=body.encode(), headers={"content-type": "application/json"}, timeout=120)


CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "' + MARK + '"}'}}


@pytest.mark.parametrize("path,body,param,says", [
    # logit_bias keys that str.isdigit() accepts but are not token ids
    ("/v1/chat/completions", chat(logit_bias={"\u00b2": 1}), "logit_bias", "ASCII digits"),
    ("/v1/chat/completions", chat(logit_bias={"--5": 1}), "logit_bias", "token ids"),
    ("/v1/chat/completions", chat(logit_bias={"7" * 5000: 1}), "logit_bias", "token ids"),
    ("/v1/chat/completions", chat(logit_bias={"\u0663": 5}), "logit_bias", "ASCII digits"),
    # lone surrogates: in model, a /tokenize prompt, tool-call arguments, a tool description, a key
    ("/v1/chat/completions", chat(model="ti" + MARK + "ny"), None, "model"),
    ("/tokenize", raw({"model": "tiny", "prompt": "a" + MARK + "b"}), None, "prompt"),
    ("/v1/chat/completions", chat(tools=[weather("w")], messages=[
        MSG[0], {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "c1", "content": "ok"}]),
     None, "messages[1].tool_calls[0].function.arguments"),
    ("/v1/chat/completions", chat(tools=[weather(MARK)]), None, "tools[0].function.description"),
    ("/v1/chat/completions", chat(logit_bias={MARK: 1}), None, "a key"),
    ("/v1/responses", raw({"model": "tiny", "input": "x" + MARK}), None, "input"),
    ("/v1/responses", raw({"model": "tiny", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "x" + MARK}]}]}), None, "input[0].content[0].text"),
    # a schema the grammar library accepts and fails on when matching starts
    ("/v1/chat/completions", chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"$ref": "#"}}}), "response_format", "cannot use the JSON schema"),
])
def test_each_former_500_is_a_400_naming_the_field(server, path, body, param, says):
    r = post(server, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert says in err["message"], err
    if param is not None:
        assert err["param"] == param, err
    # and the server still answers
    ok = httpx.post(server + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200


def test_versions_are_ascii_digits(server):
    r = httpx.post(server + "/v1/completions", json={"model": "ad@\u0661", "prompt": "hi", "max_tokens": 2},
                   timeout=60)  # Arabic-Indic one: an alias name, not version 1
    assert r.status_code in (400, 404), r.text
    assert httpx.post(server + "/v1/completions", json={"model": "ad@1", "prompt": "hi", "max_tokens": 2},
                      timeout=60).status_code == 200


def test_a_huge_regex_is_answered_or_refused_never_a_500(server):
    body = {"model": "tiny", "prompt": "a", "max_tokens": 8, "guided_regex": "a{1000000}", "temperature": 1.0}
    r = httpx.post(server + "/v1/completions", json=body, timeout=120)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert set(r.json()["choices"][0]["text"]) <= {"a"}


def test_random_paths_do_not_grow_metrics(server):
    before = httpx.get(server + "/metrics").text.count("\n")
    for i in range(50):
        assert httpx.get(f"{server}/v1/models/random-{i}-{i * 7919}").status_code == 404
        assert httpx.post(f"{server}/v1/no-such-route-{i}", json={}).status_code == 404
    text = httpx.get(server + "/metrics").text
    assert "random-" not in text and "no-such-route" not in text
    assert text.count("\n") - before < 20, text  # one series for the route template, not one per path
    assert 'endpoint="/v1/models/{model_id}"' in text or "models/{" in text, json.dumps(text[-2000:])


def test_a_data_url_must_carry_an_image_and_detail_is_a_hint():
    from adapterhub.errors import UserInputError
    from adapterhub.serving.media import MediaPolicy, load_image
    from adapterhub.serving.protocol.requests import ImagePart

    for url in ("data:text/html;base64,PGI+aGk8L2I+", "data:;base64,aGk=", "data:application/json;base64,e30="):
        with pytest.raises(UserInputError, match="media type must be an image"):
            load_image(url, MediaPolicy(), "messages[0].content[1]")
    for detail in ("low", "high", "auto"):
        assert ImagePart.model_validate({"type": "image_url", "image_url": {"url": "data:image/png;base64,x",
                                                                          "detail": detail}})
