"""The adapter registry's Python API, used by the CLI, training, serving and the publishers.

It validates and hashes what comes in, resolves refs, verifies checksums on read, and delegates
storage to a :class:`~adapterhub.registry.store.RegistryStore`. It never imports torch (only the
``--allow-pickle`` conversion does, lazily).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from adapterhub.errors import (
    AdapterNotFoundError,
    ConflictError,
    GateError,
    IntegrityError,
    InvalidRefError,
    UserInputError,
)
from adapterhub.refs import LATEST, AdapterRef, parse_ref, validate_alias, validate_name
from adapterhub.registry.keys import Keys
from adapterhub.registry.local import LocalStore, pid_alive
from adapterhub.registry.manifest import MANIFEST, BaseModelRef, Manifest, hash_files, read_manifest
from adapterhub.registry.peft_config import ADAPTER_CONFIG
from adapterhub.registry.rollout import parse_requirement, pick
from adapterhub.registry.store import AliasEvent, RegistryStore, VersionRecord
from adapterhub.registry.validation import (
    ADAPTER_WEIGHTS,
    PICKLE_WEIGHTS,
    validate_adapter_dir,
    validate_bundle_dir,
    validate_model_dir,
)
from adapterhub.settings import Settings

log = logging.getLogger(__name__)
STAGING_PREFIX = "adapterhub-register-"  # import staging copies in the temp directory: <prefix><pid>-<random>
MAX_VERSION = 2**63 - 1  # stores keep versions as signed 64-bit integers; anything above exists nowhere

# Files copied from a source directory; anything else (optimizer states, checkpoints, peft's template
# README — the hub publishers write the real model card as README.md) is left behind.
_ADAPTER_FILES = (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "generation_config.json",
)


def _read_chat_template(src: Path) -> str | None:
    jinja = src / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    tc = src / "tokenizer_config.json"
    if tc.exists():
        try:
            t = json.loads(tc.read_text()).get("chat_template")
            return t if isinstance(t, str) else None
        except ValueError:
            return None
    return None


class Registry:
    """Immutable, numbered, content-hashed versions with aliases and lineage."""

    def __init__(self, store: RegistryStore, *, actor: str | None = None) -> None:
        self.store = store
        self.actor = actor or _whoami()

    @classmethod
    def open(cls, settings: Settings) -> Registry:
        """The registry ``settings`` name: a shared PostgreSQL + object-store one when
        ``ADAPTERHUB_REGISTRY_URL`` is set, else the embedded one under the home directory."""
        return cls(open_store(settings), actor=settings.actor)

    @property
    def keys(self) -> Keys:
        """Tenants' API keys (kept in this registry's database)."""
        return Keys(self.store, self.actor)

    # ---------------------------------------------------------------- writing
    def register(
        self,
        src: Path,
        name: str,
        *,
        kind: str = "adapter",
        base_model: dict[str, Any] | BaseModelRef | None = None,
        chat_template: str | None = None,
        training: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        parent: int | None = None,
        convert_pickle: Callable[[Path, Path], None] | None = None,
        aliases: Iterable[str] = (),
    ) -> tuple[VersionRecord, bool]:
        """Validate ``src`` and store it as the next version of ``name``.

        Returns ``(record, created)``: re-registering identical content returns the existing version
        with ``created=False``. Pickled ``adapter_model.bin`` weights are accepted only with
        ``convert_pickle`` (the user's explicit opt-in), which writes them as safetensors (the registry
        itself never loads a pickle; :func:`adapterhub.loading.convert.pickle_to_safetensors` does).

        Raises:
            AdapterValidationError: listing every problem with ``src``.
        """
        validate_name(name)
        aliases = [validate_alias(a) for a in aliases]
        for alias in aliases:  # a gated alias the new version cannot take: refused before anything is stored
            missed = _shortfalls([parse_requirement(r) for r in self.gate(name, alias)], metrics or {})
            if missed:
                raise GateError(f"{name} (the version being registered) cannot take @{alias}; nothing was "
                                "registered", missed)
        src = Path(src)
        if isinstance(base_model, dict):
            base_model = BaseModelRef.model_validate(base_model)
        lora: dict[str, Any] | None = None
        if kind == "adapter":
            info = validate_adapter_dir(src, allow_pickle=convert_pickle is not None, base=base_model.id if base_model else None)
            if base_model is None:
                assert info.base_model  # validation reports a missing base
                base_model = BaseModelRef(id=info.base_model)
            lora = {
                "r": info.rank, "alpha": info.alpha, "target_modules": info.target_modules,
                "dropout": info.peft.dropout,
                **{k: True for k in ("use_dora", "use_rslora") if getattr(info.peft, k)},
            }
            files = [f for f in _ADAPTER_FILES if (src / f).exists()]
        elif kind in ("model", "bundle"):
            (validate_model_dir if kind == "model" else validate_bundle_dir)(src)
            files = [p.name for p in src.iterdir() if p.is_file() and p.name != MANIFEST
                     and not p.name.endswith((".bin", ".pt", ".pth"))]
        else:
            raise UserInputError(f"unknown kind {kind!r}: 'adapter', 'model' or 'bundle'")
        template = chat_template if chat_template is not None else _read_chat_template(src)

        # The pid in the name lets gc tell a live writer's staging copy from a killed one's.
        staged = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
        try:
            for f in files:
                shutil.copy2(src / f, staged / f)
            if kind == "adapter" and not (src / ADAPTER_WEIGHTS).exists() and convert_pickle is not None:
                convert_pickle(src / PICKLE_WEIGHTS, staged / ADAPTER_WEIGHTS)
            if kind == "adapter" and base_model is not None:
                # Record the pinned base in the PEFT config too, so peft / vLLM users see it.
                cfg_path = staged / ADAPTER_CONFIG
                cfg = json.loads(cfg_path.read_text())
                cfg["base_model_name_or_path"] = base_model.id
                cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
            content_hash, entries = hash_files(staged)
            size = sum(e.size for e in entries.values())

            def manifest_for(version: int) -> bytes:
                manifest = Manifest(
                    name=name, version=version, kind=kind, content_hash=content_hash, files=entries,
                    base_model=base_model, chat_template=template, lora=lora, training=training,
                    metrics=metrics or {}, lineage=lineage or {}, parent=parent,
                    created_at=time.time(), created_by=self.actor,
                )
                return manifest.model_dump_json(indent=2, exclude_none=True).encode()

            summary = {
                "kind": kind, "base_model": base_model.id if base_model else None,
                "base_fingerprint": base_model.fingerprint if base_model else None,
                "rank": lora["r"] if lora else None, "size": size, "metrics": metrics,
            }
            record, created = self.store.put(name, staged, content_hash, summary, manifest_for)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        if not created:
            log.info("%s already holds this content as version %d", name, record.version)
        for alias in aliases:
            self.set_alias(record.ref, alias)
        if aliases:
            record = self.resolve(record.ref)
        return record, created

    def set_alias(self, ref: str, alias: str, *, force: bool = False) -> tuple[VersionRecord, int | None]:
        """Point ``alias`` at the version ``ref`` resolves to, through the alias's gate (``force``: past it,
        recorded). Returns (record, previous version).

        Raises:
            GateError: the version misses a requirement of the alias's gate; nothing changes.
        """
        validate_alias(alias)
        if alias == LATEST:
            raise InvalidRefError("'latest' always means the newest version and cannot be set")
        record = self.resolve(ref)
        note, _ = self._through_gate(record.name, alias, [record], force=force)
        prev = self.store.set_alias(record.name, alias, record.version, self.actor, note=note)
        return self.resolve(record.ref), prev

    def _through_gate(self, name: str, alias: str, records: list[VersionRecord], *, force: bool,
                      require: list[str] | None = None) -> tuple[str | None, list[str]]:
        """Every move of an alias passes here: the versions must meet the alias's gate (and ``require``).
        Returns the history note and the shortfalls of a move forced past it; raises GateError otherwise."""
        requirements = [parse_requirement(r) for r in [*self.gate(name, alias), *(require or [])]]
        if not requirements:
            return None, []
        shortfalls = []
        for record in records:
            shortfalls += [f"{record.ref}: {m}" if len(records) > 1 else m
                           for m in _shortfalls(requirements, self.manifest(record).metrics)]
        if shortfalls and not force:
            what = records[0].ref if len(records) == 1 else ", ".join(r.ref for r in records)
            raise GateError(f"{what} cannot be promoted to @{alias}", shortfalls)
        return (f"forced past gate by {self.actor}: " + "; ".join(shortfalls) if shortfalls else None), shortfalls

    def set_split(self, name: str, alias: str, split: dict[int, int], *, note: str | None = None,
                  force: bool = False, gated: bool = True) -> tuple[dict[int, int], int | None]:
        """Point ``alias`` at several versions by weight (``{3: 90, 4: 10}``); every version must pass the
        alias's gate (``force``: past it, recorded). Requests carrying the same caller key always get the
        same version. Returns (split, previous primary version)."""
        validate_name(name)
        validate_alias(alias)
        if alias == LATEST:
            raise InvalidRefError("'latest' always means the newest version and cannot be set")
        records = [self.store.get(name, v) for v in sorted(split)]
        missing = [v for v, r in zip(sorted(split), records) if r is None]
        if missing:
            raise AdapterNotFoundError(f"'{name}' has no version {', '.join(map(str, missing))}")
        if gated:
            forced, _ = self._through_gate(name, alias, [r for r in records if r is not None], force=force)
            note = "; ".join(n for n in (note, forced) if n) or None
        primary = max(sorted(split), key=lambda v: split[v])
        prev = self.store.set_alias(name, alias, primary, self.actor, split=dict(split), note=note)
        return dict(split), prev

    def alias_split(self, name: str, alias: str) -> dict[int, int] | None:
        return self.store.alias_split(validate_name(name), alias)

    def rollback(self, name: str, alias: str) -> AliasEvent:
        """Point ``alias`` back at its previous target (plain or split), recorded as a rollback."""
        events = [e for e in self.store.alias_history(validate_name(name)) if e.alias == alias]
        if len(events) < 2:
            raise ConflictError(f"{name}@{alias} has no earlier target to roll back to")
        current, previous = events[-1], events[-2]
        if previous.version is None:
            raise ConflictError(f"{name}@{alias} did not exist before its last move: nothing to roll back to")
        note = f"rollback from {_target(current)}"  # back to what was there: not gated (the escape hatch)
        if previous.split:
            self.set_split(name, alias, previous.split, note=note, gated=False)
        else:
            self.resolve(f"{name}@{previous.version}")
            self.store.set_alias(name, alias, previous.version, self.actor, note=note)
        return [e for e in self.store.alias_history(name) if e.alias == alias][-1]

    def set_gate(self, name: str, alias: str, requirements: list[str] | None) -> None:
        """Requirements every promotion to ``alias`` must meet (``["identity>=0.95"]``); None removes them."""
        for r in requirements or []:
            parse_requirement(r)
        self.store.set_gate(validate_name(name), validate_alias(alias), requirements, self.actor)

    def gate(self, name: str, alias: str) -> list[str]:
        return self.store.get_gate(validate_name(name), alias) or []

    def promote(self, ref: str, alias: str, *, require: list[str] | None = None, force: bool = False
                ) -> tuple[VersionRecord, int | None, list[str]]:
        """Point ``alias`` at ``ref`` if the version's metrics meet ``require`` and the alias's gate.

        Returns (record, previous version, shortfalls overridden by ``force``).

        Raises:
            GateError: a requirement is missed (naming the metric and the shortfall); nothing changes.
        """
        record = self.resolve(ref)
        note, shortfalls = self._through_gate(record.name, validate_alias(alias), [record], force=force,
                                              require=require)
        prev = self.store.set_alias(record.name, alias, record.version, self.actor, note=note)
        return self.resolve(record.ref), prev, shortfalls

    def remove_alias(self, name: str, alias: str) -> int:
        validate_name(name)
        prev = self.store.remove_alias(name, alias, self.actor)
        if prev is None:
            raise AdapterNotFoundError(f"{name} has no alias '{alias}'")
        return prev

    def alias_history(self, name: str) -> list[AliasEvent]:
        return self.store.alias_history(validate_name(name))

    def remove(self, ref: str, *, force: bool = False) -> VersionRecord:
        """Delete one version. Refuses a version an alias points to (also as part of a split) unless ``force``;
        with ``force``, no alias is left pointing at it: a split drops the version (a split of one left
        becomes a plain alias), a plain alias is removed, each change recorded in the alias history."""
        record = self.resolve(ref)
        splits = {a: s for r in self.store.list(record.name) for a in r.aliases
                  if record.version in (s := self.store.alias_split(record.name, a) or {})}
        if splits and not force:
            raise ConflictError(f"{record.ref} is part of the split alias {', '.join('@' + a for a in splits)}: "
                                "move the alias first or pass --force")
        if record.aliases and not force:
            raise ConflictError(
                f"{record.ref} is aliased as {', '.join('@' + a for a in record.aliases)}: "
                "move the alias first or pass --force"
            )
        note = f"{record.ref} removed (rm --force)"
        for alias, split in splits.items():
            rest = {v: w for v, w in split.items() if v != record.version}
            if len(rest) > 1:
                primary = max(rest, key=lambda v: (rest[v], v))
                self.store.set_alias(record.name, alias, primary, self.actor, split=rest, note=note)
            elif rest:
                self.store.set_alias(record.name, alias, next(iter(rest)), self.actor, note=note)
        for alias in record.aliases:
            if alias not in splits or len(splits[alias]) <= 1:
                self.store.remove_alias(record.name, alias, self.actor)
        self.store.delete(record.name, record.version)
        return record

    def gc(self, grace_s: float) -> dict[str, int]:
        """The store's upkeep plus this machine's staging copies of imports that were killed (their
        process is gone, or they are older than ``grace_s`` where the name carries no process id)."""
        counts = dict(self.store.gc(grace_s))
        counts["staging_copies_removed"] = remove_stale_staging(grace_s)
        return counts

    def add_metrics(self, ref: str, metrics: dict[str, Any]) -> VersionRecord:
        """Attach evaluation results to a version (kept beside the immutable files)."""
        record = self.resolve(ref)
        self.store.set_metrics(record.name, record.version, metrics)
        return self.resolve(record.ref)

    # ---------------------------------------------------------------- reading
    def resolve(self, ref: str | AdapterRef, *, caller: str | None = None) -> VersionRecord:
        """Resolve ``name``, ``name@3``, ``name@production`` or ``name@sha256:<prefix>`` (no file reads).

        A split alias resolves to one of its versions by weight: the same one for the same ``caller``.
        """
        return self.resolve_routed(ref, caller=caller)[0]

    def resolve_routed(self, ref: str | AdapterRef, *, caller: str | None = None) -> tuple[VersionRecord, str | None]:
        """:meth:`resolve`, and the split alias that picked the version (None when no split did), from one
        read of the alias: the server labels what a split served without asking again (and racing a move)."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        if r.selector == "alias" and r.alias is not None:
            split = self.store.alias_split(r.name, r.alias)
            if split:
                return self.resolve(f"{r.name}@{pick(split, caller, f'{r.name}@{r.alias}')}"), r.alias
        return self._resolve_plain(r), None

    def _resolve_plain(self, r: AdapterRef) -> VersionRecord:
        found: VersionRecord | None
        if r.selector == "version":
            assert r.version is not None
            found = self.store.get(r.name, r.version) if r.version <= MAX_VERSION else None
            what = f"version {r.version}"
        elif r.selector == "alias":
            assert r.alias is not None
            found = self.store.by_alias(r.name, r.alias)
            what = f"alias '{r.alias}'"
        elif r.selector == "hash":
            assert r.hash_prefix is not None
            matches = self.store.by_hash_prefix(r.name, r.hash_prefix)
            if len(matches) > 1:
                raise InvalidRefError(
                    f"{r} is ambiguous: matches versions {', '.join(str(m.version) for m in matches)}"
                )
            found = matches[0] if matches else None
            what = f"hash {r.hash_prefix}…"
        else:
            found = self.store.latest(r.name)
            what = "any version"
        if found is None:
            if self.store.latest(r.name) is None:
                raise AdapterNotFoundError(f"no adapter named '{r.name}' in the registry")
            raise AdapterNotFoundError(f"'{r.name}' has no {what}")
        return found

    def manifest(self, ref: str | VersionRecord) -> Manifest:
        record = ref if isinstance(ref, VersionRecord) else self.resolve(ref)
        m = read_manifest(self.store.open(record))
        if record.metrics:
            m.metrics = {**m.metrics, **record.metrics}
        return m

    def path(self, ref: str | VersionRecord, *, verify: bool = True) -> Path:
        """The version's directory (read-only). Verifies every file's checksum unless ``verify=False``."""
        record = ref if isinstance(ref, VersionRecord) else self.resolve(ref)
        if verify:
            self.verify(record)
        return self.store.open(record)

    def verify(self, ref: str | VersionRecord, *, remote: bool = False) -> Manifest:
        """Check every file against the manifest. Raises :class:`IntegrityError` naming the bad file.

        With ``remote`` (a shared store), the store's own objects are downloaded and re-hashed first. A
        corrupt local copy of a shared version (this machine's cache) is set aside and fetched again: it
        heals; only a corrupt object in the store itself is an error."""
        record = ref if isinstance(ref, VersionRecord) else self.resolve(ref)
        if remote:
            self.store.verify_objects(record)
        root = self.store.open(record)
        try:
            return self._verify_dir(record, root)
        except IntegrityError as e:
            if not self.store.quarantine(root):
                raise
            log.warning("%s: this machine's copy was corrupt (%s): set aside, fetching it again", record.ref,
                        e.message)
        return self._verify_dir(record, self.store.open(record))

    def _verify_dir(self, record: VersionRecord, root: Path) -> Manifest:
        try:
            manifest = read_manifest(root)
        except (OSError, ValueError) as e:
            raise IntegrityError(f"{record.ref}: manifest unreadable ({e})", path=str(root)) from e
        content_hash, entries = hash_files(root)
        for rel, expected in manifest.files.items():
            got = entries.get(rel)
            if got is None:
                raise IntegrityError(f"{record.ref}: file {rel} is missing", path=str(root / rel))
            if got.sha256 != expected.sha256:
                raise IntegrityError(
                    f"{record.ref}: checksum mismatch in {rel} (expected {expected.sha256[:12]}…, "
                    f"got {got.sha256[:12]}…)", path=str(root / rel),
                )
        extra = sorted(set(entries) - set(manifest.files))
        if extra:
            raise IntegrityError(f"{record.ref}: unexpected files {', '.join(extra)}", path=str(root))
        if content_hash != record.content_hash:
            raise IntegrityError(f"{record.ref}: content hash mismatch", path=str(root))
        return manifest

    def list(self, name: str | None = None) -> list[VersionRecord]:
        if name is not None:
            validate_name(name)
        return self.store.list(name)

    def export(self, ref: str, dest: Path) -> Path:
        """Copy a verified version (PEFT files + manifest) to ``dest`` (must not exist or be empty)."""
        record = self.resolve(ref)
        src = self.path(record)
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise ConflictError(f"{dest} exists and is not empty")
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        for p in tmp.rglob("*"):
            if p.is_file():
                os.chmod(p, 0o644)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
        return dest


def open_store(settings: Settings, registry_url: str | None = None, artifacts_url: str | None = None
               ) -> RegistryStore:
    """The store for ``registry_url`` (default: the settings'): PostgreSQL + S3, or local files + SQLite."""
    url = registry_url if registry_url is not None else settings.registry_url
    if not url:
        return LocalStore(settings.registry_dir)
    artifacts = artifacts_url if artifacts_url is not None else settings.artifacts_url
    if not artifacts:
        raise UserInputError("a PostgreSQL registry keeps its files in an object store: set ADAPTERHUB_ARTIFACTS_URL "
                             "(s3://bucket/prefix)")
    from adapterhub.registry.remote import RemoteStore

    return RemoteStore(url, artifacts, settings.versions_cache_dir, cache_max_bytes=int(settings.cache_max_gb * 2**30))


def _target(event: AliasEvent) -> str:
    if event.split:
        return ",".join(f"{v}={w}" for v, w in sorted(event.split.items()))
    return str(event.version)


def _shortfalls(requirements: list[Any], metrics: dict[str, Any]) -> list[str]:
    return [m for m in (r.shortfall(metrics) for r in requirements) if m]


def remove_stale_staging(grace_s: float, root: Path | None = None) -> int:
    """Remove ``adapterhub-register-*`` copies in the temp directory whose writer is gone."""
    removed = 0
    for d in Path(root or tempfile.gettempdir()).glob(STAGING_PREFIX + "*"):
        pid = d.name[len(STAGING_PREFIX):].split("-", 1)[0]
        try:
            stale = not pid_alive(int(pid)) if pid.isdigit() else time.time() - d.stat().st_mtime > grace_s
        except FileNotFoundError:
            continue
        if stale and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed


def _whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
