"""API keys of tenants, kept in the registry's database so every replica on a shared registry sees the
same keys: a key has a name, the adapter-name globs it may use, optional rpm / tpm limits, an expiry
and an admin flag. Only the SHA-256 of a secret is stored; the secret is shown once, at creation.

Secrets are 256 random bits (``ahk-`` + 43 URL-safe characters), so an unsalted hash is as strong as a
salted one (GitHub's and Stripe's token schemes do the same) and a key is found by its hash with an index
lookup; :meth:`KeyRing`-side comparisons use ``hmac.compare_digest``.
"""

from __future__ import annotations

import builtins
import fnmatch
import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

from adapterhub.errors import ConflictError, NotFoundError, UserInputError

SECRET_PREFIX = "ahk-"
KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A glob over adapter names: the name charset plus the wildcards * ? and [...] classes.
_GLOB_RE = re.compile(r"[A-Za-z0-9_.*?!\[\]-]{1,100}")


@dataclass(frozen=True)
class KeyRecord:
    """One key (never its secret). ``models`` are globs over adapter names (and the base model's name)."""

    name: str
    models: tuple[str, ...]
    rpm: int | None = None
    tpm: int | None = None
    admin: bool = False
    created_at: float = 0.0
    created_by: str = ""
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    secret_hash: str = field(default="", repr=False)

    def state(self, now: float | None = None) -> str:
        """active, revoked or expired."""
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def allows(self, name: str) -> bool:
        """Whether the key may use the adapter (or base model) called ``name``: globs match whole names."""
        return any(fnmatch.fnmatchcase(name, g) for g in self.models)


@dataclass(frozen=True)
class KeyEvent:
    """A line of the keys' history: created, updated, revoked, or an admin route used."""

    at: float
    key: str
    action: str
    by: str
    detail: str | None = None


@dataclass(frozen=True)
class UsageRow:
    """Requests and tokens of one key on one model (``name@version`` or the base) on one UTC day."""

    key: str
    model: str
    day: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def validate_key_name(name: str) -> str:
    if not isinstance(name, str) or not KEY_NAME_RE.fullmatch(name):
        raise UserInputError(f"invalid key name {name!r}: use 1-64 ASCII letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
    return name


def validate_glob(glob: str) -> str:
    """A glob over adapter names: name characters and ``* ? [...]``, brackets balanced."""
    if not isinstance(glob, str) or not glob.strip():
        raise UserInputError("empty --models glob: give adapter names or globs, e.g. --models 'team-a-*'")
    if not _GLOB_RE.fullmatch(glob):
        bad = next((c for c in glob if not _GLOB_RE.fullmatch(c)), glob[:1])
        raise UserInputError(f"invalid --models glob {glob!r}: {bad!r} cannot appear in an adapter name "
                             "(use letters, digits, '.', '_', '-' and the wildcards * ? [...])")
    depth = 0
    for c in glob:
        depth += {"[": 1, "]": -1}.get(c, 0)
        if depth not in (0, 1):
            break
    if depth != 0:
        raise UserInputError(f"invalid --models glob {glob!r}: unbalanced '[' ']'")
    return glob


def validate_limit(value: int | None, flag: str) -> int | None:
    if value is not None and value < 1:
        raise UserInputError(f"{flag} must be a positive number, got {value}")
    return value


class Keys:
    """Key administration on a registry store (the CLI's ``adapterhub keys``)."""

    def __init__(self, store: Any, actor: str) -> None:
        self.store = store
        self.actor = actor

    def create(self, name: str, models: list[str], *, rpm: int | None = None, tpm: int | None = None,
               expires_days: float | None = None, admin: bool = False) -> tuple[KeyRecord, str]:
        """A new key and its secret (shown once; only its hash is stored). Raises ConflictError for a name
        already used (a revoked key's name included: history stays unambiguous)."""
        validate_key_name(name)
        if not models:
            raise UserInputError("a key needs a scope: give --models GLOB at least once (e.g. --models '*')")
        globs = tuple(dict.fromkeys(validate_glob(g) for g in models))
        validate_limit(rpm, "--rpm")
        validate_limit(tpm, "--tpm")
        if expires_days is not None and not expires_days > 0:
            raise UserInputError(f"--expires-days must be more than 0, got {expires_days:g}")
        now = time.time()
        secret = new_secret()
        record = KeyRecord(name=name, models=globs, rpm=rpm, tpm=tpm, admin=admin, created_at=now,
                           created_by=self.actor, expires_at=now + expires_days * 86400 if expires_days else None,
                           secret_hash=hash_secret(secret))
        self.store.put_key(record)
        self.store.add_key_event(KeyEvent(now, name, "created", self.actor, _describe(record)))
        return record, secret

    def update(self, name: str, *, models: list[str] | None = None, rpm: int | None = None,
               tpm: int | None = None, no_limits: bool = False) -> KeyRecord:
        """Change a key's scope or limits (seen by every server on the next request, within a second)."""
        record = self.get(name)
        changes: dict[str, Any] = {}
        if models:
            changes["models"] = tuple(dict.fromkeys(validate_glob(g) for g in models))
        if no_limits:
            changes.update(rpm=None, tpm=None)
        if rpm is not None:
            changes["rpm"] = validate_limit(rpm, "--rpm")
        if tpm is not None:
            changes["tpm"] = validate_limit(tpm, "--tpm")
        if not changes:
            raise UserInputError("nothing to change: give --models, --rpm, --tpm or --no-limits")
        updated = replace(record, **changes)
        self.store.update_key(name, models=updated.models, rpm=updated.rpm, tpm=updated.tpm)
        self.store.add_key_event(KeyEvent(time.time(), name, "updated", self.actor, _describe(updated)))
        return updated

    def revoke(self, name: str) -> KeyRecord:
        record = self.get(name)
        if record.revoked_at is not None:
            raise ConflictError(f"key '{name}' was already revoked")
        now = time.time()
        self.store.revoke_key(name, now)
        self.store.add_key_event(KeyEvent(now, name, "revoked", self.actor))
        return replace(record, revoked_at=now)

    def get(self, name: str) -> KeyRecord:
        for k in self.store.list_keys():
            if k.name == name:
                return k
        raise NotFoundError(f"no key named '{name}'")

    def list(self) -> builtins.list[KeyRecord]:
        return sorted(self.store.list_keys(), key=lambda k: k.name)

    def usage(self, name: str | None = None) -> builtins.list[UsageRow]:
        if name is not None:
            self.get(name)
        return self.store.key_usage(name)

    def history(self, name: str | None = None) -> builtins.list[KeyEvent]:
        return self.store.key_events(name)


def _describe(k: KeyRecord) -> str:
    parts = [f"models={','.join(k.models)}"]
    parts += [f"{n}={v}" for n, v in (("rpm", k.rpm), ("tpm", k.tpm)) if v is not None]
    if k.expires_at is not None:
        parts.append("expires=" + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(k.expires_at)))
    if k.admin:
        parts.append("admin")
    return " ".join(parts)
