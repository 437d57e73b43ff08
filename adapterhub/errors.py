"""One exception tree for the whole project.

Each class also inherits the matching builtin (``ValueError``, ``LookupError``…) so callers that only
know the builtins still catch it, and carries the HTTP status and CLI exit code that the two output
surfaces (the CLI's ``main`` and the server's exception handlers) map it to. Nothing here knows about
either surface.
"""

from __future__ import annotations

from collections.abc import Iterable


class AdapterHubError(Exception):
    """Base of every error adapterhub raises on purpose."""

    exit_code: int = 1
    http_status: int = 500
    error_type: str = "server_error"
    code: str | None = None
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if param is not None:
            self.param = param


class UserInputError(AdapterHubError, ValueError):
    """The user asked for something malformed; nothing was changed."""

    exit_code = 2
    http_status = 400
    error_type = "invalid_request_error"


class ConfigError(UserInputError):
    """A config file or override is invalid. ``problems`` lists every bad key."""

    code = "invalid_config"

    def __init__(self, message: str, problems: Iterable[str] = ()) -> None:
        self.problems = list(problems)
        if self.problems:
            message = message + ": " + "; ".join(self.problems)
        super().__init__(message)


class InvalidRefError(UserInputError):
    """A name or ref (``name@3``, ``name@production``) is not well formed."""

    code = "invalid_ref"


class NotFoundError(AdapterHubError, LookupError):
    """Something named by the user does not exist."""

    exit_code = 2
    http_status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """A base model id, path or served model name that cannot be found."""

    code = "model_not_found"
    param = "model"


class AdapterNotFoundError(NotFoundError):
    """A ref that names no registered adapter version."""

    code = "model_not_found"
    param = "model"


class AdapterValidationError(UserInputError):
    """An adapter failed validation. ``problems`` lists every problem found, not just the first."""

    code = "invalid_adapter"

    def __init__(self, subject: str, problems: Iterable[str]) -> None:
        self.subject = subject
        self.problems = list(problems)
        super().__init__(f"{subject}: " + "; ".join(self.problems))


class IncompatibleAdapterError(AdapterValidationError):
    """An adapter cannot be loaded on this base / engine (wrong base, rank too high, modules missing)."""

    code = "incompatible_adapter"


class IntegrityError(AdapterHubError):
    """Stored bytes do not match their recorded checksum."""

    exit_code = 3
    http_status = 500
    code = "integrity_error"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ConflictError(AdapterHubError):
    """The request conflicts with the current state (e.g. removing a version an alias points to)."""

    exit_code = 2
    http_status = 409
    error_type = "invalid_request_error"
    code = "conflict"


class ContextLengthError(UserInputError):
    """Prompt plus requested completion exceed the model's context window."""

    code = "context_length_exceeded"
    param = "messages"


class AuthenticationError(AdapterHubError):
    """Missing or wrong API key."""

    exit_code = 2
    http_status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(AdapterHubError):
    """A valid key that may not do this (an admin route with a tenant's key)."""

    exit_code = 2
    http_status = 403
    error_type = "permission_error"
    code = "insufficient_permissions"


class OverloadedError(AdapterHubError):
    """The server's queue is full; the client should retry later."""

    http_status = 503
    error_type = "server_error"
    code = "overloaded"


class MissingDependencyError(AdapterHubError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    exit_code = 2
    http_status = 500

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'adapterhub[{extra}]'"
        )


class PublishError(AdapterHubError):
    """Publishing to or pulling from a hub failed; the message says what, if anything, was published."""

    exit_code = 4
    http_status = 502
    code = "publish_failed"


class GateError(AdapterHubError):
    """A promotion misses its metric requirements; ``shortfalls`` says which metric and by how much."""

    exit_code = 6
    http_status = 409
    error_type = "invalid_request_error"
    code = "gate_not_met"

    def __init__(self, message: str, shortfalls: Iterable[str] = ()) -> None:
        self.shortfalls = list(shortfalls)
        super().__init__(message + (": " + "; ".join(self.shortfalls) if self.shortfalls else ""))



class StoreUnavailableError(AdapterHubError):
    """The shared registry's database or object store cannot be reached (or refused our credentials)."""

    exit_code = 5
    http_status = 503
    error_type = "server_error"
    code = "registry_unavailable"
