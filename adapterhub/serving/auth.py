"""Bearer-key checks for the API and the admin endpoints."""

from __future__ import annotations

import hmac

from fastapi import Request

from adapterhub.errors import AuthenticationError


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def _check(request: Request, expected: str | None, what: str) -> None:
    if expected is None:
        return
    got = _bearer(request)
    if got is None:
        raise AuthenticationError(f"Missing {what} key: send 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(got.encode(), expected.encode()):
        raise AuthenticationError(f"Incorrect {what} key provided")


def require_api_key(request: Request) -> None:
    _check(request, request.app.state.stack.config.api_key, "API")


def require_admin_key(request: Request) -> None:
    cfg = request.app.state.stack.config
    _check(request, cfg.admin_key or cfg.api_key, "admin")


def require_metrics_key(request: Request) -> None:
    """/metrics and the API description: --metrics-key, else the API key (open when neither is set)."""
    cfg = request.app.state.stack.config
    _check(request, cfg.metrics_key or cfg.api_key, "metrics")


def has_api_key(request: Request) -> bool:
    """Whether the request may see details (no key configured, or the right one sent)."""
    try:
        require_api_key(request)
    except AuthenticationError:
        return False
    return True
