"""The storage seam of the registry.

A ``RegistryStore`` keeps immutable version directories and their metadata rows. It knows nothing
about PEFT, refs or validation (that is :mod:`adapterhub.registry.registry`); it guarantees:

* ``put`` is atomic: the version becomes visible with all its files or not at all, also across a
  crash or ``kill -9``; leftovers are cleaned the next time a store is opened;
* versions are numbered 1, 2, 3… per name with no gaps or duplicates under concurrent processes;
* a second ``put`` of the same content hash under the same name returns the existing version.
"""

from __future__ import annotations

import abc
import builtins
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VersionRecord:
    """One stored version: the metadata row plus where its files live."""

    name: str
    version: int
    content_hash: str
    kind: str
    base_model: str | None
    rank: int | None
    size: int
    created_at: float
    root: Path  # the store's versions directory; ``path`` is derived (cheap to list 10,000 records)
    aliases: tuple[str, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / self.name / str(self.version)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class AliasEvent:
    """One move of an alias (``version`` None means it was removed)."""

    name: str
    alias: str
    version: int | None
    at: float
    by: str


class RegistryStore(abc.ABC):
    """Storage for immutable versions and mutable aliases."""

    @abc.abstractmethod
    def staging_dir(self) -> Path:
        """A fresh private directory to build a version in; it is removed or consumed by ``put``."""

    @abc.abstractmethod
    def put(self, name: str, staged: Path, content_hash: str, summary: dict[str, Any],
            finalize: Any) -> tuple[VersionRecord, bool]:
        """Store ``staged`` as the next version of ``name``.

        ``finalize(dir, version)`` is called with the version number before the files become visible
        (to write the manifest). Returns ``(record, created)``; ``created`` is False when a version with
        the same content hash already existed (the staged dir is then discarded).
        """

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
    def set_alias(self, name: str, alias: str, version: int, by: str) -> int | None:
        """Point ``alias`` at ``version``; return the version it pointed to before (or None)."""

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
