"""Structured output, engine-neutral: what a request constrains its output to.

A :class:`Constraint` is one of ``json`` (a JSON schema, as JSON text), ``regex``, ``choice`` (a JSON
list of strings), ``grammar`` (Lark or GBNF text) or ``lark`` (Lark text written by this server, e.g. the
tool-call grammars). Engines compile it with their grammar library (the ``hf`` engine: llguidance, the
library vLLM also uses) and refuse what it cannot compile with the library's reason.

Request fields that produce one (at most one per request): OpenAI ``response_format`` (``json_object``,
``json_schema``), vLLM's ``structured_outputs`` and its older ``guided_json`` / ``guided_regex`` /
``guided_choice`` / ``guided_grammar``, and the tool grammar of ``tool_choice: required`` or a named
function (:mod:`adapterhub.tools`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from adapterhub.errors import UserInputError

Kind = Literal["json", "regex", "choice", "grammar", "lark"]


@dataclass(frozen=True)
class Constraint:
    kind: Kind
    spec: str  # JSON text for json / choice; the pattern or grammar text otherwise
    param: str  # the request field it came from (named in errors)


ANY_JSON_OBJECT = json.dumps({"type": "object"})


def _schema_text(schema: Any, param: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise UserInputError(f"the JSON schema is not valid JSON: {e}", param=param) from None
    if not isinstance(schema, dict):
        raise UserInputError("the JSON schema must be an object", param=param)
    return json.dumps(schema)


def from_request(req: Any) -> Constraint | None:
    """The request's constraint, or None. More than one source is a 400 naming both."""
    found: list[Constraint] = []
    rf = getattr(req, "response_format", None)
    if rf is not None:
        if rf.type == "json_object":
            found.append(Constraint("json", ANY_JSON_OBJECT, "response_format"))
        elif rf.type == "json_schema":
            if rf.json_schema is None:
                raise UserInputError("response_format of type json_schema needs 'json_schema'",
                                     param="response_format")
            found.append(Constraint("json", _schema_text(rf.json_schema.schema_ or {}, "response_format.json_schema"),
                                    "response_format"))
    so = getattr(req, "structured_outputs", None)
    if so is not None:
        found.extend(_from_fields("structured_outputs", json=so.json_, regex=so.regex, choice=so.choice,
                                  grammar=so.grammar, json_object=so.json_object))
    found.extend(_from_fields(None, json=getattr(req, "guided_json", None), regex=getattr(req, "guided_regex", None),
                              choice=getattr(req, "guided_choice", None),
                              grammar=getattr(req, "guided_grammar", None), json_object=None))
    if len(found) > 1:
        raise UserInputError(f"'{found[0].param}' and '{found[1].param}' cannot be combined: give one "
                             "structured-output constraint", param=found[1].param)
    return found[0] if found else None


def _from_fields(prefix: str | None, *, json: Any, regex: str | None, choice: list[str] | None,
                 grammar: str | None, json_object: bool | None) -> list[Constraint]:
    def name(field: str) -> str:
        return f"{prefix}.{field}" if prefix else f"guided_{field}"

    out = []
    if json is not None:
        out.append(Constraint("json", _schema_text(json, name("json")), name("json")))
    if regex is not None:
        out.append(Constraint("regex", regex, name("regex")))
    if choice is not None:
        if not choice:
            raise UserInputError("the list of choices is empty", param=name("choice"))
        out.append(Constraint("choice", _dumps(choice), name("choice")))
    if grammar is not None:
        out.append(Constraint("grammar", grammar, name("grammar")))
    if json_object:
        out.append(Constraint("json", ANY_JSON_OBJECT, name("json_object")))
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
