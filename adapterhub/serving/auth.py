"""Who may call what. Two modes (``--auth``):

* ``key`` (default): one ``--api-key`` for the API (open when unset), ``--admin-key`` for the admin routes
  (default: the API key) and ``--metrics-key`` for /metrics and the API description;
* ``keys``: tenants' keys from the registry (:mod:`adapterhub.serving.tenants`), each scoped to adapter
  names with its own limits; ``--api-key`` / ``--admin-key`` keep working as all-access keys. Admin routes
  and /metrics need an ``--admin`` key (or ``--metrics-key`` for /metrics); the API description any key.

Secrets are compared with ``hmac.compare_digest`` and never logged.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from adapterhub.errors import AuthenticationError, PermissionDeniedError
from adapterhub.serving.tenants import Caller, current_caller


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def _same(got: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(got.encode("utf-8", "surrogatepass"),
                                                        expected.encode("utf-8", "surrogatepass"))


def _check(request: Request, expected: str | None, what: str) -> None:
    if expected is None:
        return
    got = _bearer(request)
    if got is None:
        raise AuthenticationError(f"Missing {what} key: send 'Authorization: Bearer <key>'")
    if not _same(got, expected):
        raise AuthenticationError(f"Incorrect {what} key provided")


async def _tenant(request: Request) -> Caller:
    """``--auth keys``: the caller behind this request's key (401 without a valid one)."""
    cfg, keys = request.app.state.stack.config, request.app.state.stack.keys
    got = _bearer(request)
    if not got:
        raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'")
    if _same(got, cfg.admin_key):
        caller = Caller(admin=True)
    elif _same(got, cfg.api_key):
        caller = Caller(admin=cfg.admin_key is None)
    else:
        key = await keys.authenticate(got)
        caller = Caller(key, admin=key.admin)
    request.state.caller = caller  # for the middleware: the x-ratelimit-* headers of the response
    current_caller.set(caller)  # for the services: scopes and limits
    return caller


def _keys_mode(request: Request) -> bool:
    return request.app.state.stack.keys is not None


async def require_api_key(request: Request) -> None:
    if _keys_mode(request):
        await _tenant(request)
    else:
        _check(request, request.app.state.stack.config.api_key, "API")


async def require_admin_key(request: Request) -> None:
    cfg = request.app.state.stack.config
    if not _keys_mode(request):
        _check(request, cfg.admin_key or cfg.api_key, "admin")
        return
    caller = await _tenant(request)
    if not caller.admin:
        raise PermissionDeniedError(f"key '{caller.name}' is not an admin key (create one with --admin)")
    if caller.key is not None and request.method != "GET":
        await request.app.state.stack.keys.record_admin_use(caller.key, f"{request.method} {request.url.path}")


def _opened_by_metrics_key(request: Request) -> bool:
    """Without --auth keys the metrics key (else the API key) decides (401 when wrong): True. With keys: True
    only when --metrics-key itself was sent (else the caller's key decides)."""
    cfg = request.app.state.stack.config
    if not _keys_mode(request):
        _check(request, cfg.metrics_key or cfg.api_key, "metrics")
        return True
    got = _bearer(request)
    return got is not None and _same(got, cfg.metrics_key)


async def require_metrics_key(request: Request) -> None:
    """/metrics: --metrics-key, else the admin key (with --auth keys: an --admin key); open when none is set."""
    if not _opened_by_metrics_key(request):
        await require_admin_key(request)


async def require_docs_key(request: Request) -> None:
    """The API description: like /metrics; with --auth keys, any valid key."""
    if not _opened_by_metrics_key(request):
        await _tenant(request)


async def has_api_key(request: Request) -> bool:
    """Whether the request may see details (no key configured, or a valid one sent)."""
    try:
        await require_api_key(request)
    except AuthenticationError:
        return False
    return True
