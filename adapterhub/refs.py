"""Parsing of adapter refs: ``name``, ``name@3``, ``name@production``, ``name@sha256:<prefix>``.

Names are restricted to a safe ASCII charset so that a ref can never become a path outside the
registry: no separators, no dots-only names, no unicode look-alikes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from adapterhub.errors import InvalidRefError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
HASH_RE = re.compile(r"sha256:([0-9a-f]{4,64})")
LATEST = "latest"

Selector = Literal["latest", "version", "alias", "hash"]


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe adapter name, else raise :class:`InvalidRefError`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.endswith("."):
        raise InvalidRefError(
            f"invalid name {name!r}: use 1-100 ASCII letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias word (lowercase, not a number), else raise."""
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise InvalidRefError(
            f"invalid alias {alias!r}: use lowercase letters, digits, '_' or '-', starting with a letter"
        )
    return alias


@dataclass(frozen=True)
class AdapterRef:
    """A parsed ref. Exactly one selector applies: latest, a version number, an alias or a hash prefix."""

    name: str
    version: int | None = None
    alias: str | None = None
    hash_prefix: str | None = None

    @property
    def selector(self) -> Selector:
        if self.version is not None:
            return "version"
        if self.hash_prefix is not None:
            return "hash"
        if self.alias is not None and self.alias != LATEST:
            return "alias"
        return "latest"

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.hash_prefix is not None:
            return f"{self.name}@sha256:{self.hash_prefix}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_ref(text: str) -> AdapterRef:
    """Parse a ref string.

    Raises:
        InvalidRefError: naming what is wrong with ``text``.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidRefError("empty adapter ref")
    text = text.strip()
    name, sep, selector = text.partition("@")
    validate_name(name)
    if not sep:
        return AdapterRef(name)
    if not selector:
        raise InvalidRefError(f"invalid ref {text!r}: nothing after '@'")
    if selector.isascii() and selector.isdigit():  # "١" is a digit to str.isdigit, not a version number
        version = int(selector)
        if version < 1:
            raise InvalidRefError(f"invalid ref {text!r}: versions start at 1")
        return AdapterRef(name, version=version)
    m = HASH_RE.fullmatch(selector)
    if m:
        return AdapterRef(name, hash_prefix=m.group(1))
    if selector.startswith("sha256:"):
        raise InvalidRefError(
            f"invalid ref {text!r}: a hash ref is 'sha256:' followed by 4-64 lowercase hex digits"
        )
    validate_alias(selector)
    return AdapterRef(name, alias=selector)
