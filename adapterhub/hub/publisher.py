"""The publisher seam: push a registry version to a hub, pull one back.

Contract (tests/test_hub.py runs it on every implementation):

* ``push`` uploads the version's files (PEFT files + ``adapterhub.json``) and a ``README.md`` model
  card in one commit, and tags it ``v<version>``; pushing the same version again is a no-op; a
  different version with the same tag is refused;
* ``pull`` fetches a tag or revision, checks every file against the published manifest and registers
  it — the registry then holds byte-identical adapter files with the same content hash.
"""

from __future__ import annotations

import abc
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from adapterhub.errors import IntegrityError, PublishError
from adapterhub.hub.model_card import render_model_card
from adapterhub.models import sha256_file
from adapterhub.registry import Manifest, Registry, VersionRecord
from adapterhub.registry.validation import MANIFEST

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class PushResult:
    repo: str
    tag: str
    commit: str | None
    url: str
    created: bool  # False: this version was already published (no-op)


class Publisher(abc.ABC):
    scheme: str = ""

    @abc.abstractmethod
    def push(self, registry: Registry, ref: str, repo: str, *, private: bool = False,
             alias_tags: bool = False) -> PushResult: ...

    @abc.abstractmethod
    def pull(self, registry: Registry, repo: str, revision: str | None, name: str) -> tuple[VersionRecord, bool]: ...


def stage_version(registry: Registry, ref: str, repo: str) -> tuple[VersionRecord, Manifest, Path]:
    """Export a verified version to a temp dir and add the model card. Caller removes the dir."""
    record = registry.resolve(ref)
    manifest = registry.manifest(record)
    tmp = Path(tempfile.mkdtemp(prefix="adapterhub-push-"))
    registry.export(record.ref, tmp / "files")
    (tmp / "files" / "README.md").write_text(render_model_card(manifest, repo), encoding="utf-8")
    return record, manifest, tmp / "files"


def register_pulled(registry: Registry, folder: Path, name: str, source: str) -> tuple[VersionRecord, bool]:
    """Verify a downloaded folder against its manifest and register exactly the manifest's files."""
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise PublishError(f"{source} has no {MANIFEST}: it was not published by adapterhub")
    manifest = Manifest.model_validate_json(mpath.read_text())
    clean = Path(tempfile.mkdtemp(prefix="adapterhub-pull-"))
    try:
        for rel, entry in manifest.files.items():
            src = folder / rel
            if not src.exists():
                raise IntegrityError(f"{source}: file {rel} listed in the manifest is missing", path=rel)
            got = sha256_file(src)
            if got != entry.sha256:
                raise IntegrityError(f"{source}: checksum mismatch in {rel} (expected {entry.sha256[:12]}…, "
                                     f"got {got[:12]}…)", path=rel)
            dst = clean / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        record, created = registry.register(
            clean, name, kind=manifest.kind, base_model=manifest.base_model, chat_template=manifest.chat_template,
            training=manifest.training, metrics=manifest.metrics,
            lineage={**manifest.lineage, "pulled_from": source, "source_version": f"{manifest.name}@{manifest.version}"},
        )
    finally:
        shutil.rmtree(clean, ignore_errors=True)
    if record.content_hash != manifest.content_hash:
        raise IntegrityError(f"{source}: content hash {record.content_hash[:12]}… differs from the published "
                             f"{manifest.content_hash[:12]}…")
    return record, created


def published_hash(manifest_text: str | bytes) -> str | None:
    try:
        return str(json.loads(manifest_text)["content_hash"])
    except (ValueError, KeyError, TypeError):
        return None


def with_retries(fn: Callable[[], T], what: str, *, retries: int, backoff: float,
                 retry_on: tuple[type[BaseException], ...]) -> T:
    for attempt in range(1, retries + 1):
        try:
            return fn()
        except retry_on as e:
            if attempt == retries:
                raise
            log.warning("%s failed (%s), retry %d/%d", what, type(e).__name__, attempt, retries - 1)
            time.sleep(backoff * attempt)
    raise AssertionError("unreachable")


def parse_source(source: str) -> tuple[str, str, str | None]:
    """``hf:owner/name@v3`` → ("hf", "owner/name", "v3")."""
    scheme, sep, rest = source.partition(":")
    if not sep or scheme not in ("hf", "openxlab"):
        raise PublishError(f"'{source}': use hf:OWNER/NAME[@TAG] or openxlab:OWNER/NAME[@TAG]")
    repo, _, rev = rest.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise PublishError(f"'{source}': the repository must be OWNER/NAME")
    return scheme, repo, rev or None


def make_publisher(scheme: str, **kwargs: Any) -> Publisher:
    if scheme == "hf":
        from adapterhub.hub.huggingface import HuggingFacePublisher

        return HuggingFacePublisher(**kwargs)
    if scheme == "openxlab":
        from adapterhub.hub.openxlab import OpenXLabPublisher

        return OpenXLabPublisher(**kwargs)
    raise PublishError(f"unknown hub '{scheme}': hf or openxlab")
