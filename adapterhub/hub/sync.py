"""Push and pull, written once over a :class:`~adapterhub.hub.transport.HubTransport`.

Contract (``tests/contracts/test_publisher.py`` runs it on every hub):

* ``push`` uploads the version's files (PEFT files + ``adapterhub.json``) and a ``README.md`` model
  card in one commit, and tags it ``v<version>``; pushing the same version again is a no-op; a
  different version with the same tag is refused; a push that stopped between commit and tag is
  finished by running it again;
* ``pull`` fetches a tag or revision, checks every file against the published manifest and registers
  it — the registry then holds byte-identical files with the same content hash.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.errors import IntegrityError, PublishError
from adapterhub.hub.model_card import render_model_card
from adapterhub.hub.transport import HubTransport
from adapterhub.models import sha256_file
from adapterhub.registry import Manifest, Registry, VersionRecord
from adapterhub.registry.manifest import MANIFEST

log = logging.getLogger(__name__)
# Publish scheme → its transport (module, class), imported only when used (each needs its own extra).
TRANSPORTS: dict[str, tuple[str, str]] = {
    "hf": ("adapterhub.hub.huggingface", "HuggingFaceTransport"),
    "openxlab": ("adapterhub.hub.openxlab", "OpenXLabTransport"),
}
SCHEMES = tuple(TRANSPORTS)


@dataclass
class PushResult:
    repo: str
    tag: str
    commit: str | None
    url: str
    created: bool  # False: this version was already published (no-op)


class Publisher:
    """Publishes registry versions to one hub and pulls them back."""

    def __init__(self, transport: HubTransport) -> None:
        self.transport = transport

    @property
    def scheme(self) -> str:
        return self.transport.scheme

    def push(self, registry: Registry, ref: str, repo: str, *, private: bool = False,
             alias_tags: bool = False) -> PushResult:
        t = self.transport
        t.ready_to_push()
        record, _manifest, folder = stage_version(registry, ref, repo)
        tag = f"v{record.version}"
        try:
            t.open_repo(repo, private=private)
            published = t.manifest_at(repo, tag)
            if published is not None or t.tag_commit(repo, tag) is not None:
                if published_hash(published or "") == record.content_hash:
                    return PushResult(repo, tag, t.tag_commit(repo, tag), t.url(repo), created=False)
                raise PublishError(f"{repo} already has tag {tag} with different content: nothing was published; "
                                   "push to another repository or remove the tag")
            commit = None
            if published_hash(t.manifest_at(repo, "main") or "") == record.content_hash:
                commit = t.head_commit(repo)
                log.info("main already holds %s (an earlier push stopped before tagging)", record.ref)
            commit = t.publish(repo, folder, tag=tag, message=f"adapterhub: {record.ref}",
                               description=f"content sha256:{record.content_hash}", commit=commit)
            if alias_tags:
                for alias in record.aliases:
                    t.move_tag(repo, alias, commit)
        finally:
            shutil.rmtree(folder.parent, ignore_errors=True)
        return PushResult(repo, tag, commit, t.url(repo), created=True)

    def pull(self, registry: Registry, repo: str, revision: str | None, name: str) -> tuple[VersionRecord, bool]:
        self.transport.ready_to_pull()
        tmp = Path(tempfile.mkdtemp(prefix="adapterhub-pull-"))
        try:
            folder = tmp / "files"
            folder.mkdir()
            source = self.transport.download(repo, revision, folder, _listed_files)
            return register_pulled(registry, folder, name, source)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _listed_files(manifest_text: str) -> list[str]:
    try:
        return list(Manifest.model_validate_json(manifest_text).files)
    except ValueError as e:
        raise PublishError(f"the published {MANIFEST} is not valid ({str(e).splitlines()[0]})") from e


def stage_version(registry: Registry, ref: str, repo: str) -> tuple[VersionRecord, Manifest, Path]:
    """Export a verified version to a temp dir and add the model card. The caller removes ``dir.parent``."""
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


def parse_source(source: str) -> tuple[str, str, str | None]:
    """``hf:owner/name@v3`` → ("hf", "owner/name", "v3")."""
    scheme, sep, rest = source.partition(":")
    if not sep or scheme not in SCHEMES:
        raise PublishError(f"'{source}': use " + " or ".join(f"{s}:OWNER/NAME[@TAG]" for s in SCHEMES))
    repo, _, rev = rest.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise PublishError(f"'{source}': the repository must be OWNER/NAME")
    return scheme, repo, rev or None


def make_publisher(scheme: str, **kwargs: Any) -> Publisher:
    """The publisher for ``hf`` or ``openxlab``; ``kwargs`` go to its transport (endpoint, token, retries…)."""
    if scheme not in TRANSPORTS:
        raise PublishError(f"unknown hub '{scheme}': {' or '.join(SCHEMES)}")
    module, cls = TRANSPORTS[scheme]
    transport: HubTransport = getattr(importlib.import_module(module), cls)(**kwargs)
    return Publisher(transport)
