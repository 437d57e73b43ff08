"""The storage seam of the registry.

A ``RegistryStore`` keeps immutable versions (their files and a metadata row each) and mutable aliases.
It knows nothing about PEFT, refs or validation (that is :mod:`adapterhub.registry.registry`), and it
does not expose where or how it keeps files: an object store can implement it as well as a local
directory. It guarantees (``tests/contracts/test_registry_store.py`` checks every implementation):

* ``put`` is atomic: the version becomes visible with all its files or not at all, also across a
  crash or ``kill -9``; leftovers are cleaned the next time a store is opened;
* versions are numbered 1, 2, 3… per name with no gaps or duplicates under concurrent writers;
* a second ``put`` of the same content hash under the same name returns the existing version;
* ``open`` gives a local, read-only directory with exactly the version's files (for a remote store,
  a content-addressed cache entry).
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterhub.registry.keys import KeyEvent, KeyRecord, UsageRow


@dataclass(frozen=True)
class VersionRecord:
    """One stored version's metadata row (cheap: listing 10,000 of them reads no file)."""

    name: str
    version: int
    content_hash: str
    kind: str
    base_model: str | None
    rank: int | None
    size: int
    created_at: float
    aliases: tuple[str, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    base_fingerprint: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class AliasEvent:
    """One move of an alias (``version`` None means it was removed).

    ``split`` is the weighted target (version → weight) when the alias was split; ``note`` says why
    when it was not a plain move (a rollback, a promotion forced past its gate).
    """

    name: str
    alias: str
    version: int | None
    at: float
    by: str
    split: dict[int, int] | None = None
    note: str | None = None


class RegistryStore(abc.ABC):
    """Storage for immutable versions and mutable aliases."""

    @abc.abstractmethod
    def put(self, name: str, src: Path, content_hash: str, summary: dict[str, Any],
            manifest_for: Callable[[int], bytes]) -> tuple[VersionRecord, bool]:
        """Store the files of the local directory ``src`` as the next version of ``name``.

        ``src`` stays the caller's (it is copied, never moved). ``manifest_for(version)`` returns the
        bytes of the version's ``adapterhub.json``, written beside the files before they become visible.
        ``summary`` holds the row's columns (kind, base_model, base_fingerprint, rank, size, metrics).
        Returns ``(record, created)``; ``created`` is False when a version with the same content hash
        already existed.
        """

    @abc.abstractmethod
    def open(self, record: VersionRecord) -> Path:
        """A local read-only directory holding the version's files (not verified: the registry does)."""

    @abc.abstractmethod
    def get(self, name: str, version: int) -> VersionRecord | None: ...

    @abc.abstractmethod
    def latest(self, name: str) -> VersionRecord | None: ...

    @abc.abstractmethod
    def by_alias(self, name: str, alias: str) -> VersionRecord | None: ...

    @abc.abstractmethod
    def by_hash_prefix(self, name: str, prefix: str) -> list[VersionRecord]: ...

    @abc.abstractmethod
    def list(self, name: str | None = None) -> builtins.list[VersionRecord]: ...

    @abc.abstractmethod
    def set_alias(self, name: str, alias: str, version: int, by: str, *, split: dict[int, int] | None = None,
                  note: str | None = None) -> int | None:
        """Point ``alias`` at ``version`` (with ``split``: at several versions by weight, ``version`` being the
        heaviest); return the version it pointed to before (or None). Recorded in the alias history."""

    @abc.abstractmethod
    def alias_split(self, name: str, alias: str) -> dict[int, int] | None:
        """The weights of a split alias (None for a plain or missing one)."""

    @abc.abstractmethod
    def set_gate(self, name: str, alias: str, requirements: builtins.list[str] | None, by: str) -> None:
        """Store (or with None, remove) the requirements every promotion to ``alias`` must meet."""

    @abc.abstractmethod
    def get_gate(self, name: str, alias: str) -> builtins.list[str] | None: ...

    @abc.abstractmethod
    def remove_alias(self, name: str, alias: str, by: str) -> int | None: ...

    @abc.abstractmethod
    def alias_history(self, name: str) -> builtins.list[AliasEvent]: ...

    @abc.abstractmethod
    def delete(self, name: str, version: int) -> None:
        """Remove a version and every alias pointing to it."""

    @abc.abstractmethod
    def set_metrics(self, name: str, version: int, metrics: dict[str, Any]) -> None:
        """Merge ``metrics`` into the version's metrics (evaluation results added after registration)."""

    # Stored Responses-API responses (``/v1/responses`` with ``store: true``), shared by every replica that
    # uses this registry. ``record`` is JSON-serializable; expired records are never returned.
    @abc.abstractmethod
    def put_response(self, response_id: str, record: dict[str, Any], expires_at: float) -> None: ...

    @abc.abstractmethod
    def get_response(self, response_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def delete_response(self, response_id: str) -> bool:
        """Remove a stored response; False when there was none (or it had expired)."""

    # API keys of tenants (:mod:`adapterhub.registry.keys`), shared by every replica on this registry. Only
    # a secret's hash is stored. ``share_key_counts`` exchanges the replicas' last-minute counts per key.
    @abc.abstractmethod
    def put_key(self, record: KeyRecord) -> None:
        """Add a key; ConflictError when its name exists."""

    @abc.abstractmethod
    def update_key(self, name: str, *, models: tuple[str, ...], rpm: int | None, tpm: int | None) -> None: ...

    @abc.abstractmethod
    def revoke_key(self, name: str, at: float) -> None: ...

    @abc.abstractmethod
    def list_keys(self) -> builtins.list[KeyRecord]: ...

    @abc.abstractmethod
    def add_key_event(self, event: KeyEvent) -> None: ...

    @abc.abstractmethod
    def key_events(self, name: str | None = None) -> builtins.list[KeyEvent]: ...

    @abc.abstractmethod
    def add_key_usage(self, rows: builtins.list[UsageRow], last_used: dict[str, float]) -> None: ...

    @abc.abstractmethod
    def key_usage(self, name: str | None = None) -> builtins.list[UsageRow]: ...

    @abc.abstractmethod
    def share_key_counts(self, replica: str, counts: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]: ...

    def put_exact(self, name: str, version: int, src: Path, content_hash: str, summary: dict[str, Any],
                  manifest: bytes, created_at: float | None = None) -> bool:
        """Store ``src`` as exactly ``name@version`` with the given manifest (copying a registry keeps its
        numbers). Returns False when that version already holds this content; raises ConflictError when
        it holds other content. Stores that cannot do this are not migration targets."""
        raise NotImplementedError(f"{type(self).__name__} cannot be the target of a registry migration")

    shared = False  # whether other machines use the same store (verify then checks the store's own copy)

    def quarantine(self, path: Path) -> bool:
        """Set aside a corrupt local copy that ``open`` returned, so the next ``open`` fetches the version
        again; False when ``path`` is the only copy (a local store: corruption there is real)."""
        return False

    def verify_objects(self, record: VersionRecord) -> None:
        """Re-hash the store's own copy of the version (an object store's objects), not a local cache;
        raises IntegrityError naming the bad object. Nothing to do where ``open`` is the store itself."""

    def gc(self, grace_s: float) -> dict[str, int]:
        """Remove what crashed writers left behind (older than ``grace_s`` where the store cannot tell
        whether the writer is alive); returns counts by kind."""
        return {}

    def describe(self) -> str:
        """Where the store keeps things, for messages and ``adapterhub registry info``."""
        return type(self).__name__

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
