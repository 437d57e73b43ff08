"""Copy one registry into another (``adapterhub registry migrate --to URL``), keeping version numbers.

Every version is read verified from the source, written with its number and manifest, then read back
through the target (for a remote target: fetched from the object store into a fresh cache entry) and
hashed again; a difference stops the copy. Re-running is safe: versions already there with the same
content are skipped. Aliases (plain and split) and promotion gates are copied as they are now; the
source's alias history is not replayed: the target's history starts with one "migrated" move per alias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from adapterhub.errors import IntegrityError
from adapterhub.registry.manifest import MANIFEST, hash_files
from adapterhub.registry.registry import Registry
from adapterhub.registry.store import RegistryStore


@dataclass
class MigrationReport:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)


def migrate(source: Registry, target: RegistryStore, *, progress: Callable[[str], None] = lambda _m: None
            ) -> MigrationReport:
    report = MigrationReport()
    records = source.list()
    for record in records:
        src_dir = source.path(record)  # verified against its manifest
        summary = {"kind": record.kind, "base_model": record.base_model, "rank": record.rank, "size": record.size,
                   "metrics": record.metrics, "base_fingerprint": record.base_fingerprint}
        manifest = (src_dir / MANIFEST).read_bytes()
        created = target.put_exact(record.name, record.version, src_dir, record.content_hash, summary, manifest,
                                   created_at=record.created_at)
        copied = target.get(record.name, record.version)
        assert copied is not None
        got_dir = target.open(copied)
        got_hash, _ = hash_files(got_dir)
        if got_hash != record.content_hash or (got_dir / MANIFEST).read_bytes() != manifest:
            raise IntegrityError(f"{record.ref}: the copy in the target differs from the source "
                                 f"(sha256:{got_hash[:12]}… vs {record.content_hash[:12]}…); migration stopped")
        if created and record.metrics:
            target.set_metrics(record.name, record.version, record.metrics)
        (report.copied if created else report.skipped).append(record.ref)
        progress(f"{'copied ' if created else 'present'} {record.ref} (sha256:{record.content_hash[:12]}, verified)")
    for name in sorted({r.name for r in records}):
        aliases = sorted({a for r in records if r.name == name for a in r.aliases}
                         | {e.alias for e in source.alias_history(name)})
        for alias in aliases:
            rec = source.store.by_alias(name, alias)
            if rec is not None:
                split = source.store.alias_split(name, alias)
                have = target.by_alias(name, alias)
                if have is None or have.version != rec.version or target.alias_split(name, alias) != split:
                    target.set_alias(name, alias, rec.version, source.actor, split=split,
                                     note=f"migrated from {source.store.describe()}")
                report.aliases.append(f"{name}@{alias}")
            gate = source.store.get_gate(name, alias)
            if gate is not None:
                target.set_gate(name, alias, gate, source.actor)
                report.gates.append(f"{name}@{alias}")
    return report
