"""Turning names and refs into things that can be loaded: base models (:mod:`.bases`), verified versions
on their base (:mod:`.versions`), and the conversions and assembly that need torch (:mod:`.convert`,
:mod:`.llava`, imported only when they run).

The registry below this package stores files and never loads a model; training, serving, export and
evaluation above it load models only through what this package resolves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterHubError
from adapterhub.loading.bases import is_registry_ref, pull_demo, resolve_base, resolve_model
from adapterhub.loading.versions import OpenedVersion, open_version
from adapterhub.registry import Registry, VersionRecord
from adapterhub.settings import Settings

__all__ = ["OpenedVersion", "import_version", "is_registry_ref", "open_version", "pull_demo", "resolve_base",
           "resolve_model"]


def import_version(registry: Registry, src: Path, name: str, *, base: str | None = None, kind: str = "adapter",
                   aliases: list[str] | None = None, allow_pickle: bool = False,
                   settings: Settings | None = None) -> tuple[VersionRecord, bool]:
    """Register a directory made elsewhere (``adapterhub import``): ``base`` is pinned by its identity
    when it resolves locally (by id otherwise); pickled weights are converted only with ``allow_pickle``."""
    base_ref: dict[str, Any] | None = None
    if base:
        try:
            base_ref = dict(resolve_model(base, settings or Settings(), pull=False).identity())
        except AdapterHubError:
            base_ref = {"id": base}
    convert = None
    if allow_pickle:
        from adapterhub.loading.convert import pickle_to_safetensors

        convert = pickle_to_safetensors
    return registry.register(src, name, kind=kind, base_model=base_ref, aliases=aliases or (),
                             convert_pickle=convert)
