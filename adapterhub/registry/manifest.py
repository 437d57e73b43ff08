"""The ``adapterhub.json`` manifest stored with every version, and the content hash.

The content hash is sha256 over ``"<relpath>\\0<sha256 of file>\\n"`` for every payload file in sorted
order; the manifest itself is not part of it (it contains the version number).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapterhub.models import sha256_file

MANIFEST = "adapterhub.json"  # the manifest's file name in every version directory

SCHEMA_VERSION = 1


class BaseModelRef(BaseModel):
    """The base model an adapter was trained on, pinned."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="Model id as the user named it (hub id, demo name or path).")
    revision: str | None = Field(None, description="Hub commit or content hash of the weights.")
    fingerprint: str | None = Field(None, description="Hash of the architecture config.")
    quantization: str | None = Field(None, description="'nf4', 'int8' or None for full precision.")


class FileEntry(BaseModel):
    sha256: str
    size: int


class Manifest(BaseModel):
    """Everything recorded about one version. Unknown keys from newer writers are kept."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    name: str
    version: int
    kind: str = Field("adapter", description="'adapter' (PEFT LoRA), 'model' (full / merged weights) or "
                      "'bundle' (a vision tower + projector for a text LLM).")
    content_hash: str
    files: dict[str, FileEntry]
    base_model: BaseModelRef | None = None
    chat_template: str | None = None
    lora: dict[str, Any] | None = Field(None, description="r, alpha, target_modules, dropout.")
    training: dict[str, Any] | None = Field(
        None, description="config, dataset fingerprint, final loss, steps, wall time."
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict, description="e.g. merged from adapter ref.")
    parent: int | None = Field(None, description="The version this one was derived from.")
    created_at: float
    created_by: str | None = None


def hash_files(root: Path) -> tuple[str, dict[str, FileEntry]]:
    """Hash every payload file below ``root`` (everything but the manifest)."""
    entries: dict[str, FileEntry] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(root).as_posix()
            entries[rel] = FileEntry(sha256=sha256_file(p), size=p.stat().st_size)
    h = hashlib.sha256()
    for rel, e in entries.items():
        h.update(f"{rel}\0{e.sha256}\n".encode())
    return h.hexdigest(), entries


def read_manifest(version_dir: Path) -> Manifest:
    return Manifest.model_validate_json((version_dir / MANIFEST).read_text())
