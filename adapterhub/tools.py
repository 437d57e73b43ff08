"""Tool calling: the formats models write tool calls in, parsed back to OpenAI ``tool_calls``.

A :class:`ToolParser` knows one format: where a call starts in generated text (so a stream can hold
those characters back), how to parse calls out of the finished text, and the Lark grammar that makes
the model write a valid call (``tool_choice: required`` or a named function: the arguments are then
generated under the function's JSON schema, so they always parse and validate).

Formats (``--tool-parser`` / recorded with an adapter trained on tool data):

* ``hermes`` — Hermes / Qwen 2.5: ``<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>``
* ``llama3_json`` — Llama 3.1+: a JSON object ``{"name": …, "parameters": {…}}`` (several: ``; ``)
* ``mistral`` — ``[TOOL_CALLS][{"name": …, "arguments": {…}}, …]``
* ``internlm2`` — ``<|action_start|><|plugin|>\\n{"name": …, "parameters": {…}}<|action_end|>``
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from adapterhub.errors import UserInputError


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text


def _all_or_none(calls: list[ParsedCall | None]) -> list[ParsedCall]:
    """Every call, or none when one of them is not a valid call of a known function (then it is prose)."""
    return [] if any(c is None for c in calls) else [c for c in calls if c is not None]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# JSON as json.dumps (and the templates' tojson) writes it: ", " and ": ", no other whitespace, so a
# sampled call cannot wander into whitespace until max_tokens.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _call_schema(name: str, params: dict[str, Any] | None, args_key: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": name},
                                             args_key: params or {"type": "object"}},
            "required": ["name", args_key], "additionalProperties": False, "x-guidance": JSON_STYLE}


def _lark_str(s: str) -> str:
    return json.dumps(s)


class ToolParser:
    name = ""
    start: str = ""  # the text that begins a call
    end: str = ""  # the text that ends one ("" for formats without an end marker)
    args_key = "arguments"
    special_tokens = False  # markers are special tokens: decode with skip_special_tokens=False

    # ------------------------------------------------------------------ parsing
    def call_start(self, text: str) -> int | None:
        """Index where the first call starts in ``text``, or None."""
        i = text.find(self.start)
        return i if i >= 0 else None

    def held_back(self, text: str) -> int:
        """How many trailing characters of ``text`` might be the beginning of a call marker (stream)."""
        for k in range(min(len(self.start) - 1, len(text)), 0, -1):
            if self.start.startswith(text[-k:]):
                return k
        return 0

    def _partial_end(self, text: str) -> int:
        """How many trailing characters of ``text`` are a proper beginning of the end marker (after a call
        start), 0 when none are."""
        if self.call_start(text) is None:
            return 0
        stripped = text.rstrip()
        for k in range(len(self.end) - 1, 0, -1):
            if stripped.endswith(self.end[:k]):
                return len(text) - len(stripped) + k
        return 0

    def complete_part(self, text: str) -> str:
        """``text`` up to the end of its last complete call (for an answer cut by max_tokens)."""
        if not self.end:
            return text
        j = text.rfind(self.end)
        return text[:j + len(self.end)] if j >= 0 else text

    def parse(self, text: str, names: set[str], *, truncated: bool = False) -> tuple[str | None, list[ParsedCall]]:
        """``(content, calls)``; text that is not a valid call of a known function stays content. With
        ``truncated`` (the answer was cut by max_tokens) an unfinished last call is dropped; a last call
        whose JSON is whole but whose end marker was cut (``…}\n</tool_call``) is a call: its arguments are
        complete, so it is returned (the response keeps ``finish_reason: "length"``, as every cut answer)."""
        if truncated and self.end:
            cut = self._partial_end(text)
            if cut:
                content, calls = self.parse(text[:-cut] + self.end, names)
                if calls:
                    return content, calls
        if truncated:
            whole = self.complete_part(text)
            if whole != text:
                content, calls = self.parse(whole, names)
                if calls:
                    return content, calls
        i = self.call_start(text)
        if i is None:
            return (text or None), []
        calls = self._calls(text[i:], names)
        if not calls:
            return (text or None), []
        content = text[:i].strip()
        return (content or None), calls

    def _calls(self, text: str, names: set[str]) -> list[ParsedCall]:
        """Each ``start JSON end`` in ``text``. The JSON is read as JSON (not up to the first end marker), so
        an argument that contains the end marker (``"…</tool_call>…"``, seen in sampled forced calls) does not
        cut its call; text between the JSON and the end marker makes the answer no call."""
        decoder = json.JSONDecoder()
        found: list[ParsedCall | None] = []
        pos = text.find(self.start)
        while pos >= 0:
            j = pos + len(self.start)
            while j < len(text) and text[j].isspace():
                j += 1
            try:
                obj, k = decoder.raw_decode(text, j)
            except json.JSONDecodeError:
                return []
            found.append(self._from_obj(obj, names))
            rest = text[k:].lstrip()
            if not rest:
                break
            if not rest.startswith(self.end):
                return []
            pos = text.find(self.start, len(text) - len(rest) + len(self.end))
        return _all_or_none(found)

    def _one(self, blob: str, names: set[str]) -> ParsedCall | None:
        try:
            obj = json.loads(blob)
        except json.JSONDecodeError:
            return None
        return self._from_obj(obj, names)

    def _from_obj(self, obj: Any, names: set[str]) -> ParsedCall | None:
        if not isinstance(obj, dict) or obj.get("name") not in names:
            return None
        args = obj.get(self.args_key, obj.get("arguments", obj.get("parameters", {})))
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        return ParsedCall(str(obj["name"]), json.dumps(args, ensure_ascii=False))

    # ------------------------------------------------------------------ forcing a call
    def grammar(self, tools: list[dict[str, Any]], only: str | None, parallel: bool) -> str:
        """Lark grammar of one call (or, with ``parallel``, one or more) of ``only`` or any tool."""
        fns = [t["function"] for t in tools if only is None or t["function"]["name"] == only]
        rules = [f"fn{i}: %json {json.dumps(_call_schema(f['name'], f.get('parameters'), self.args_key))}"
                 for i, f in enumerate(fns)]
        fn = "fn: " + " | ".join(f"fn{i}" for i in range(len(fns)))
        return "\n".join([self._start_rule(parallel), fn, *rules])

    before_end = "\n"  # what the format writes between the JSON and the end marker

    def _start_rule(self, parallel: bool) -> str:
        call = f"call: {_lark_str(self.start + chr(10))} fn {_lark_str(self.before_end + self.end)}"
        return (f"start: call ({_lark_str(chr(10))} call)*\n" if parallel else "start: call\n") + call


class HermesParser(ToolParser):
    name = "hermes"
    start, end = "<tool_call>", "</tool_call>"


class InternLM2Parser(ToolParser):
    name = "internlm2"
    start, end = "<|action_start|><|plugin|>", "<|action_end|>"
    args_key = "parameters"
    special_tokens = True
    before_end = ""


class Llama3JsonParser(ToolParser):
    """The whole answer is the call(s): a JSON object (after an optional ``<|python_tag|>``)."""

    name = "llama3_json"
    start = "{"
    args_key = "parameters"

    def call_start(self, text: str) -> int | None:
        stripped = text.lstrip()
        if stripped.startswith("<|python_tag|>"):
            return len(text) - len(stripped)
        return len(text) - len(stripped) if stripped.startswith("{") else None

    def held_back(self, text: str) -> int:
        return len(text) if not text.strip() or "<|python_tag|>".startswith(text.strip()) else 0

    def complete_part(self, text: str) -> str:
        return text.rsplit("; ", 1)[0] if "; " in text else text

    def _calls(self, text: str, names: set[str]) -> list[ParsedCall]:
        text = text.strip().removeprefix("<|python_tag|>").strip()
        return _all_or_none([self._one(blob, names) for blob in (text.split("; ") if "; " in text else [text])])

    def _start_rule(self, parallel: bool) -> str:
        return "start: fn (\"; \" fn)*" if parallel else "start: fn"


class MistralParser(ToolParser):
    name = "mistral"
    start = "[TOOL_CALLS]"
    special_tokens = True

    def _calls(self, text: str, names: set[str]) -> list[ParsedCall]:
        try:
            objs = json.loads(text[len(self.start):].strip())
        except json.JSONDecodeError:
            return []
        return _all_or_none([self._from_obj(obj, names) for obj in (objs if isinstance(objs, list) else [objs])])

    def _start_rule(self, parallel: bool) -> str:
        more = ' ("," fn)*' if parallel else ""
        return f'start: {_lark_str(self.start)} "[" fn{more} "]"'


PARSERS: dict[str, type[ToolParser]] = {p.name: p for p in (HermesParser, Llama3JsonParser, MistralParser,
                                                             InternLM2Parser)}


def get_parser(name: str) -> ToolParser:
    if name not in PARSERS:
        raise UserInputError(f"unknown tool parser '{name}' (known: {', '.join(sorted(PARSERS))})",
                             param="tool_parser")
    return PARSERS[name]()


def supports_tools(template: str | None) -> bool:
    """Whether a chat template renders ``tools`` (HF templates read the ``tools`` variable)."""
    return bool(template) and re.search(r"\btools\b", template or "") is not None


class StreamSplitter:
    """Streams content while holding back anything that may be a tool call; the calls come at the end."""

    def __init__(self, parser: ToolParser, names: set[str], forced: bool) -> None:
        self.parser, self.names, self.forced = parser, names, forced
        self.text = ""
        self.sent = 0  # characters of ``text`` already sent as content
        self.in_call = forced

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.in_call:
            return ""
        i = self.parser.call_start(self.text)
        if i is not None:
            self.in_call = True
            limit = i
        else:
            limit = len(self.text) - self.parser.held_back(self.text)
        out = self.text[self.sent:limit] if limit > self.sent else ""
        self.sent = max(self.sent, limit)
        return out

    def unsent(self) -> str:
        """Everything not sent as content yet (calls included)."""
        return self.text[self.sent:]

    def finish(self, truncated: bool = False) -> tuple[str, list[ParsedCall]]:
        """The content not sent yet, and the parsed calls (``truncated``: the answer was cut by max_tokens)."""
        _, calls = self.parser.parse(self.text, self.names, truncated=truncated)
        if calls:
            i = self.parser.call_start(self.text) or 0
            return self.text[self.sent:i].rstrip() if i > self.sent else "", calls
        return self.text[self.sent:], []


def load_tool_template(spec: str | None) -> str | None:
    """``--tool-template``: a named template (see adapterhub.templates) or a Jinja file."""
    if spec is None:
        return None
    from pathlib import Path

    from adapterhub.templates import TEMPLATES

    if spec in TEMPLATES:
        template = TEMPLATES[spec]
    elif Path(spec).is_file():
        template = Path(spec).read_text()
    else:
        raise UserInputError(f"--tool-template {spec!r} is neither a named template ({', '.join(sorted(TEMPLATES))}) "
                             "nor a file", param="tool_template")
    if not supports_tools(template):
        raise UserInputError(f"--tool-template {spec!r} does not render tools (it never reads 'tools')",
                             param="tool_template")
    return template


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as chat templates read them: tool-call arguments as objects, not JSON text."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                args: Any = c["function"]["arguments"]
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except json.JSONDecodeError:
                        pass
                calls.append({**c, "function": {**c["function"], "arguments": args}})
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out
