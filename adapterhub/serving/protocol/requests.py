"""OpenAI API request models (plus vLLM's sampling extras), strict about what they accept.

* Types are strict: ``max_tokens: "10"`` or ``true`` is a 400, not a coerced value.
* Every field either changes the output as OpenAI / vLLM document it, or is in :data:`NO_EFFECT` (fields
  that never change output, such as ``user``). Anything else — an unknown field, or a known one this
  server cannot honour — is refused with a 400 naming it (:meth:`BaseRequest.unsupported`), never
  silently ignored.
* Text must be valid Unicode (a lone surrogate is a 400, not a tokenizer crash).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

# Fields accepted although they never change the output (OpenAI bookkeeping).
NO_EFFECT = frozenset({"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"})
# Reasons given for fields people send that this server does not implement yet.
NOT_YET = {
    "functions": "the legacy 'functions' API is not supported: use 'tools'",
    "function_call": "the legacy 'function_call' API is not supported: use 'tool_choice'",
    "suffix": "insertion (suffix) is not supported",
    "tools": "tools are only supported on /v1/chat/completions",
    "tool_choice": "tools are only supported on /v1/chat/completions",
}
MAX_SEED, MIN_SEED = 2**64 - 1, -(2**63)
_TOKEN_ID = re.compile(r"-?[0-9]{1,10}")  # what torch.Generator.manual_seed accepts
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def _integral(v: Any) -> Any:
    """JSON's integers: 10 and 10.0 (JSON Schema calls both an integer); never "10" or true."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


StrictInt = Annotated[int, BeforeValidator(_integral)]  # with the models' strict mode: no bools, no strings


def valid_text(s: str, what: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (it contains a lone surrogate)") from None
    return s


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string under ``value`` that is not valid Unicode, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _lone_surrogate(k, path) is not None:
                return (path + " (a key)") if path else "a key"
            found = _lone_surrogate(v, sub)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _lone_surrogate(v, f"{path}[{i}]")
            if found is not None:
                return found
    return None


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class BaseRequest(StrictModel):
    # Unknown fields are kept (to be refused by name); the schema still says they are not part of the API.
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"additionalProperties": False})

    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        """Every string in the body, keys included, must be valid Unicode (JSON allows a lone surrogate,
        "\\ud800"; tokenizers, grammars and loggers do not)."""
        where = _lone_surrogate(data, "")
        if where is not None:
            raise ValueError(f"{where or 'the body'} is not valid Unicode (it contains a lone surrogate)")
        return data

    def unsupported(self) -> list[tuple[str, str]]:
        """``(field, reason)`` for every field this server cannot honour (the service refuses them)."""
        out = []
        for key in sorted(self.model_extra or {}):
            if key not in NO_EFFECT:
                out.append((key, NOT_YET.get(key, f"'{key}' is not a parameter of this endpoint")))
        return out


class TextPart(StrictModel):
    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return valid_text(v, "text")


class ImageURL(StrictModel):
    url: str = Field(description="data:image/...;base64,... or an http(s) URL of an allowed domain.")
    detail: Literal["auto", "low", "high"] | None = Field(
        None, description="A hint OpenAI's models use; here the model's own processor always sets the resolution, "
                          "so low, high and auto give the same answer.")


class ImagePart(StrictModel):
    type: Literal["image_url"]
    image_url: ImageURL


class FunctionCallIn(StrictModel):
    name: str
    arguments: str


class ToolCallIn(StrictModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(BaseRequest):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart | ImagePart | dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, description="An assistant turn's tool calls (sent back).")
    tool_call_id: str | None = Field(None, description="The call a tool message answers.")

    @field_validator("content")
    @classmethod
    def _content(cls, v: Any) -> Any:
        if isinstance(v, str):
            return valid_text(v, "message content")
        for part in v or []:
            if isinstance(part, dict):
                kind = part.get("type")
                if kind == "image_url":
                    raise ValueError("an image_url part needs image_url.url (and detail, if any, 'auto')")
                raise ValueError(f"content parts of type {kind!r} are not supported (text and image_url only)")
        return v

    def images(self) -> list[ImagePart]:
        return [p for p in self.content or [] if isinstance(p, ImagePart)] if isinstance(self.content, list) else []

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class FunctionDef(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON schema of the arguments.")
    strict: StrictBool | None = None


class Tool(StrictModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(StrictModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(StrictModel):
    """vLLM's ``structured_outputs`` (one of the fields)."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: StrictBool | None = None


class StreamOptions(StrictModel):
    include_usage: StrictBool = False
    continuous_usage_stats: StrictBool = False


class SamplingRequest(BaseRequest):
    model: str = Field(description="Base name, 'base', an adapter 'name', 'name@3', 'name@alias' or 'name@sha256:…'.")
    user: str | None = Field(None, description="Accepted; no effect on the output.")
    metadata: dict[str, str] | None = Field(None, description="Accepted; no effect on the output.")
    store: StrictBool | None = Field(None, description="Accepted; nothing is stored.")
    service_tier: str | None = Field(None, description="Accepted; no effect on the output.")
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: FiniteFloat = Field(1.0, ge=0.0, le=2.0, description="Below 1e-5 sampling is greedy.")
    top_p: FiniteFloat = Field(1.0, gt=0.0, le=1.0)
    top_k: StrictInt = Field(0, ge=-1, description="Keep the k most likely tokens (0 or -1: all).")
    min_p: FiniteFloat = Field(0.0, ge=0.0, le=1.0, description="Drop tokens below min_p × the top probability.")
    n: StrictInt = Field(1, ge=1, le=128)
    seed: StrictInt | None = Field(None, ge=MIN_SEED, le=MAX_SEED)
    stop: str | list[str] | None = None
    stop_token_ids: list[StrictInt] = Field(default_factory=list, max_length=64)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: FiniteFloat = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: FiniteFloat = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: FiniteFloat = Field(1.0, ge=0.01, le=10.0)
    logit_bias: dict[str, FiniteFloat] | None = Field(None, description="Token id (as a string) → bias in [-100, 100].")
    min_tokens: StrictInt = Field(0, ge=0)
    ignore_eos: StrictBool = False
    include_stop_str_in_output: StrictBool = False
    skip_special_tokens: StrictBool = True
    response_format: ResponseFormat | None = Field(None, description="json_object or json_schema: output that parses.")
    structured_outputs: StructuredOutputs | None = Field(None, description="vLLM: json, regex, choice or grammar.")
    guided_json: dict[str, Any] | str | None = Field(None, description="vLLM (older): a JSON schema.")
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = Field(None, description="Lark or GBNF grammar.")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        for s in [v] if isinstance(v, str) else v or []:
            valid_text(s, "stop")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k, b in (v or {}).items():
            if not _TOKEN_ID.fullmatch(k):  # ASCII digits only: "²" and "٣" pass str.isdigit, not int()'s meaning
                raise ValueError(f"keys must be token ids (ASCII digits), got {k[:20]!r}")
            if not -100 <= b <= 100:
                raise ValueError(f"bias for token {k} must be within [-100, 100], got {b}")
        return v

    def stop_list(self) -> tuple[str, ...]:
        """The stop strings; empty strings stop nothing (they are dropped)."""
        if self.stop is None:
            return ()
        return tuple(s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s)

    def logit_bias_ids(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), float(b)) for k, b in (self.logit_bias or {}).items())
