"""ASGI middleware of the server (request ids, body size limit) and the OpenAPI fix-up that documents
errors as they are answered (400 with the OpenAI error body, never FastAPI's 422)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from adapterhub.serving.protocol import ErrorResponse, error_body

Scope = dict[str, Any]


class RequestId:
    """Echo the caller's ``X-Request-Id`` (or a new one) on every response, with the headers the request's
    caller collected (``x-ratelimit-*`` of a tenant's key)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"")
        rid = given.decode("latin-1")[:128] if given else f"req-{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"] = rid

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                caller = state.get("caller")
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in (caller.headers.items() if caller else ())
                         if k.encode() not in have]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1")), *extra]
            await send(message)

        await self.app(scope, receive, send_with_id)


def too_large(max_bytes: int) -> bytes:
    """The 413 body for a request larger than ``max_bytes`` (also sent by the Ray Serve ingress)."""
    return json.dumps(error_body(f"request body is larger than {max_bytes} bytes", "invalid_request_error",
                                 "request_too_large")).encode()


class BodySizeLimit:
    """Answer 413 (OpenAI error body) when a request body is larger than ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Any) -> None:
        body = too_large(self.max_bytes)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send)
        if length is not None:
            return await self.app(scope, receive, send)
        # No Content-Length (chunked): read the body here, up to the limit, before the app sees it
        # (an error raised while the app reads it would become FastAPI's 400).
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay(b"", receive, message), send)
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._reject(send)
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Any, first: dict[str, Any] | None = None) -> Any:
    """A ``receive`` that hands over an already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return first or {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def openai_error_schema(app: FastAPI) -> None:
    """Make ``/openapi.json`` say what the server answers: validation errors are 400 with the OpenAI
    error body (FastAPI documents 422 and its own shape)."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
        comps = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorResponse, *_STREAMED):
            _add_model(comps, model)
        for name in ("HTTPValidationError", "ValidationError"):
            comps.pop(name, None)
        ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for path in spec.get("paths", {}).values():
            for op in path.values():
                responses = op.get("responses", {})
                if responses.pop("422", None) is not None or op.get("requestBody"):
                    responses.setdefault("400", {"description": "Invalid request", **ref})
        _standard_bounds(spec)
        app.openapi_schema = spec
        return spec

    app.openapi = schema  # type: ignore[method-assign]


_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _standard_bounds(node: Any) -> None:
    """Bounds as JSON Schema writes them: pydantic leaves a constrained strict int inside ``X | None``
    as ``{"type": "integer", "ge": 0}`` (its own words), which clients and schemathesis ignore."""
    if isinstance(node, dict):
        if "type" in node:
            for short, word in _BOUNDS.items():
                if short in node and not isinstance(node[short], (dict, list)):
                    node.setdefault(word, node.pop(short))
        for v in node.values():
            _standard_bounds(v)
    elif isinstance(node, list):
        for v in node:
            _standard_bounds(v)


def _add_model(comps: dict[str, Any], model: type[BaseModel]) -> None:
    """Put ``model`` (and the models it uses) into the spec's components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    for name, sub in schema.pop("$defs", {}).items():
        comps.setdefault(name, sub)
    comps.setdefault(model.__name__, schema)


_STREAMED: list[type[BaseModel]] = []  # the chunk models of streaming endpoints (documented as components)


def stream_of(*models: type[BaseModel], openai_chunks: bool = True) -> dict[int | str, dict[str, Any]]:
    """The 200 response of an endpoint that streams ``models`` as server-sent events. ``openai_chunks``: the
    chat/completions form (an error body or ``[DONE]`` may also come); otherwise every event is one of
    ``models`` (the Responses API's typed events, its error event among them)."""
    for model in models:
        if model not in _STREAMED:
            _STREAMED.append(model)
    refs: list[dict[str, Any]] = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in models]
    if openai_chunks:
        refs += [{"$ref": "#/components/schemas/ErrorResponse"}, {"type": "string", "enum": ["[DONE]"]}]
    names = ", ".join(m.__name__ for m in models)
    return {200: {"content": {"text/event-stream": {"schema": {"anyOf": refs}}},
                  "description": f"The answer; with stream: true, server-sent events of {names}"}}
