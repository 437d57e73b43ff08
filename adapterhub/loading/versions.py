"""One home for "a verified version on its pinned base".

Merge, eval, chat, the server's adapter manager and ``/v1/models`` all go through here, so they agree
on what makes a version usable: its checksums verify, it is the right kind (an adapter or a model),
and the base it runs on has the architecture it was trained for (same config fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adapterhub.errors import IncompatibleAdapterError, UserInputError
from adapterhub.loading.bases import resolve_base
from adapterhub.models import ResolvedModel
from adapterhub.registry.manifest import Manifest
from adapterhub.registry.registry import Registry
from adapterhub.registry.store import VersionRecord
from adapterhub.settings import Settings


@dataclass
class OpenedVersion:
    """A verified version, the base it runs on, and every reason it cannot run there."""

    record: VersionRecord
    manifest: Manifest
    path: Path  # local, verified, read-only
    base: ResolvedModel | None = None  # the recorded base, resolved locally (when asked for)
    problems: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return self.record.ref

    @property
    def template(self) -> str | None:
        """The chat template the version was trained with (None: use the base's)."""
        return self.manifest.chat_template

    def require_compatible(self, base_id: str, extra: list[str] | None = None) -> OpenedVersion:
        """Raise one error listing every problem (base and, e.g., the engine's) if there is any."""
        problems = self.problems + list(extra or [])
        if problems:
            raise IncompatibleAdapterError(f"adapter {self.ref} cannot run on base '{base_id}'", problems)
        return self


def base_problems(manifest: Manifest, base: dict[str, Any]) -> list[str]:
    """Why ``manifest``'s version cannot run on ``base`` (``{"id", "fingerprint"}``): empty when it can."""
    pinned = manifest.base_model
    fp, efp = (pinned.fingerprint if pinned else None), base.get("fingerprint")
    if fp and efp and fp != efp:
        return [f"trained for base '{pinned.id if pinned else '?'}' (fingerprint {fp}), but this base is "
                f"'{base.get('id')}' (fingerprint {efp})"]
    return []


def same_base(record: VersionRecord, base: dict[str, Any], registry: Registry) -> bool:
    """Whether ``record`` was trained for ``base``: by fingerprint (the row's, or its manifest's for rows
    written before fingerprints were kept in the index), by id when no fingerprint is known."""
    fp = record.base_fingerprint
    if fp is None:
        pinned = registry.manifest(record).base_model
        fp = pinned.fingerprint if pinned else None
    if fp and base.get("fingerprint"):
        return bool(fp == base["fingerprint"])
    return record.base_model is not None and record.base_model == base.get("id")


def open_version(registry: Registry, ref: str | VersionRecord, *, kind: Literal["adapter", "model"] = "adapter",
                 on_base: dict[str, Any] | None = None, settings: Settings | None = None) -> OpenedVersion:
    """Resolve and verify ``ref``, check its kind, and check it against a base.

    The base is ``on_base`` (the identity of a base already loaded, e.g. the server's) or, when
    ``settings`` is given instead, the version's recorded base resolved locally (``.base``).
    Base mismatches are collected in ``.problems``; call :meth:`OpenedVersion.require_compatible`.

    Raises:
        AdapterNotFoundError, IntegrityError: unknown ref, or files that fail their checksums.
        IncompatibleAdapterError / UserInputError: the version is not of ``kind``.
    """
    record = ref if isinstance(ref, VersionRecord) else registry.resolve(ref)
    manifest = registry.verify(record)
    path = registry.path(record, verify=False)
    if kind == "adapter" and manifest.kind == "bundle":
        raise IncompatibleAdapterError(record.ref, ["is a vision bundle, not an adapter: use it as the base "
                                                    f"(--base {record.ref}, or model.base in a training config)"])
    if kind == "adapter" and manifest.kind != "adapter":
        raise IncompatibleAdapterError(record.ref, ["is a model artifact, not an adapter: serve it with --merged"])
    if kind == "model" and manifest.kind != "model":
        raise UserInputError(f"{record.ref} is {'a vision bundle' if manifest.kind == 'bundle' else 'an adapter'}, "
                             "not a merged model: serve it with "
                             f"{'--base ' + record.ref if manifest.kind == 'bundle' else '--adapters'}")
    opened = OpenedVersion(record, manifest, path)
    if on_base is not None:
        opened.problems = base_problems(manifest, on_base)
    elif settings is not None:
        if manifest.base_model is None:
            raise UserInputError(f"{record.ref} records no base model")
        opened.base = resolve_base(manifest.base_model.id, settings, registry=registry)
        opened.problems = base_problems(manifest, opened.base.identity())
    return opened
