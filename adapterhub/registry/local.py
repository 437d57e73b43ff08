"""The embedded ``RegistryStore``: version directories under the home dir plus a SQLite database.

Layout::

    <root>/registry.db                 metadata (WAL mode)
    <root>/versions/<name>/<version>/  immutable files (read-only after commit)
    <root>/.staging/<pid>-<rand>/      versions being built
    <root>/.pending/<name>@<version>   marks a rename whose DB row may not have been committed

Writes follow: copy the caller's files into staging → fsync → under ``BEGIN IMMEDIATE`` (one writer across processes)
allocate the number, write the pending marker, rename into place, insert the row, commit, drop the
marker. A crash anywhere leaves either nothing visible or a complete version; ``_recover`` removes
leftovers at the next open (under the same write lock, so it never races a live writer).
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adapterhub.registry.keytables import SQLITE_DDL, KeyTables
from adapterhub.registry.manifest import MANIFEST
from adapterhub.registry.store import AliasEvent, RegistryStore, VersionRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, content_hash TEXT NOT NULL, kind TEXT NOT NULL,
    base_model TEXT, rank INTEGER, size INTEGER NOT NULL, created_at REAL NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}', base_fingerprint TEXT,
    PRIMARY KEY (name, version)
);
CREATE INDEX IF NOT EXISTS versions_hash ON versions (name, content_hash);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
    updated_at REAL NOT NULL, updated_by TEXT NOT NULL, split TEXT,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL,
    version INTEGER, at REAL NOT NULL, by TEXT NOT NULL, split TEXT, note TEXT
);
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, expires_at REAL NOT NULL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at);
CREATE TABLE IF NOT EXISTS alias_gates (
    name TEXT NOT NULL, alias TEXT NOT NULL, requirements TEXT NOT NULL,
    updated_at REAL NOT NULL, updated_by TEXT NOT NULL,
    PRIMARY KEY (name, alias)
);
"""
_COLS = ("v.name, v.version, v.content_hash, v.kind, v.base_model, v.rank, v.size, v.created_at, v.metrics, "
         "v.base_fingerprint")


def _fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_read_only(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for f in files:
            os.chmod(os.path.join(dirpath, f), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _rmtree(path: Path) -> None:
    def onerror(func: Any, p: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(p), 0o755)
        os.chmod(p, 0o644) if os.path.exists(p) else None
        func(p)

    if path.exists():
        shutil.rmtree(path, onerror=onerror)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _split(text: str | None) -> dict[int, int] | None:
    return {int(v): int(w) for v, w in json.loads(text).items()} if text else None


LOCK_WAIT_S = 60  # how long an opener or writer waits for other processes' SQLite locks


def _enter_wal(conn: sqlite3.Connection, deadline_s: float) -> None:
    """Switch ``conn``'s database to WAL, waiting out other processes doing the same.

    Leaving the rollback journal needs an exclusive lock, taken while holding a shared one. When two
    connections switch at once, SQLite answers one of them "database is locked" at once, without calling
    the busy handler (waiting would deadlock), so the connect timeout does not cover it: retry here.
    """
    until, delay = time.monotonic() + deadline_s, 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > until:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


class LocalStore(KeyTables, RegistryStore):
    """Files + SQLite under ``root``; safe for many processes on one machine."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self._staging = self.root / ".staging"
        self._pending = self.root / ".pending"
        for d in (self.versions_dir, self._staging, self._pending):
            d.mkdir(parents=True, exist_ok=True)
        self._db_path = self.root / "registry.db"
        self._conn = sqlite3.connect(self._db_path, timeout=LOCK_WAIT_S, isolation_level=None,
                                     check_same_thread=False)
        _enter_wal(self._conn, deadline_s=LOCK_WAIT_S)
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA + SQLITE_DDL)
        self._side_conn: sqlite3.Connection | None = None
        self._side_lock = threading.Lock()
        self._migrate()
        self._recover()

    def _migrate(self) -> None:
        """Bring a registry written by an older adapterhub up to the current columns."""
        wanted = {"versions": ["base_fingerprint TEXT"], "aliases": ["split TEXT"],
                  "alias_history": ["split TEXT", "note TEXT"]}
        def missing(db: sqlite3.Connection, table: str) -> list[str]:
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            return [c for c in wanted[table] if c.split()[0] not in have]

        if not any(missing(self._conn, t) for t in wanted):
            return
        with self._write() as db:  # look again under the write lock: another process may have just added them
            for table in wanted:
                for c in missing(db, table):
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {c}")

    def close(self) -> None:
        self._conn.close()
        with self._side_lock:
            if self._side_conn is not None:
                self._side_conn.close()
                self._side_conn = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock (one writer across processes)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def gc(self, grace_s: float) -> dict[str, int]:
        return self._recover()

    def describe(self) -> str:
        return str(self.root)

    def _recover(self) -> dict[str, int]:
        removed = {"staging_removed": 0, "uncommitted_versions_removed": 0}
        for d in self._staging.iterdir():
            pid = d.name.split("-", 1)[0]
            if not pid.isdigit() or not pid_alive(int(pid)) or int(pid) == os.getpid():
                _rmtree(d)
                removed["staging_removed"] += 1
        if not any(self._pending.iterdir()):
            return removed
        with self._write() as db:
            for marker in list(self._pending.iterdir()):
                name, _, ver = marker.name.rpartition("@")
                row = db.execute("SELECT 1 FROM versions WHERE name=? AND version=?", (name, ver)).fetchone()
                if row is None:
                    _rmtree(self.versions_dir / name / ver)
                    removed["uncommitted_versions_removed"] += 1
                marker.unlink()
        return removed

    def _staging_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self._staging))

    def open(self, record: VersionRecord) -> Path:
        return self.versions_dir / record.name / str(record.version)

    def _record(self, row: tuple, aliases: tuple[str, ...] = ()) -> VersionRecord:
        name, version, h, kind, base, rank, size, created, metrics, base_fp = row
        return VersionRecord(
            name=name, version=version, content_hash=h, kind=kind, base_model=base, rank=rank,
            size=size, created_at=created, aliases=aliases,
            metrics=json.loads(metrics) if metrics and metrics != "{}" else {}, base_fingerprint=base_fp,
        )

    def _aliases_of(self, name: str, version: int) -> tuple[str, ...]:
        rows = self._conn.execute(
            "SELECT alias FROM aliases WHERE name=? AND version=? ORDER BY alias", (name, version)
        ).fetchall()
        return tuple(r[0] for r in rows)

    def _one(self, sql: str, args: tuple) -> VersionRecord | None:
        row = self._conn.execute(sql, args).fetchone()
        return self._record(row, self._aliases_of(row[0], row[1])) if row else None

    def put(self, name: str, src: Path, content_hash: str, summary: dict[str, Any],
            manifest_for: Callable[[int], bytes]) -> tuple[VersionRecord, bool]:
        staged = self._staging_dir()
        try:
            shutil.copytree(src, staged, dirs_exist_ok=True)
            (staged / MANIFEST).unlink(missing_ok=True)
            _fsync_tree(staged)
            with self._write() as db:
                existing = db.execute(
                    f"SELECT {_COLS} FROM versions v WHERE name=? AND content_hash=? ORDER BY version LIMIT 1",
                    (name, content_hash),
                ).fetchone()
                if existing:
                    return self._record(existing, self._aliases_of(name, existing[1])), False
                (last,) = db.execute("SELECT MAX(version) FROM versions WHERE name=?", (name,)).fetchone()
                version = (last or 0) + 1
                (staged / MANIFEST).write_bytes(manifest_for(version))
                _fsync_tree(staged)
                final = self.versions_dir / name / str(version)
                final.parent.mkdir(parents=True, exist_ok=True)
                marker = self._pending / f"{name}@{version}"
                marker.touch()
                _fsync_dir(self._pending)
                _rmtree(final)  # a leftover of a crashed writer that never committed
                os.rename(staged, final)
                _fsync_dir(final.parent)
                _make_read_only(final)
                created = time.time()
                row = (name, version, content_hash, summary.get("kind", "adapter"), summary.get("base_model"),
                       summary.get("rank"), int(summary.get("size", 0)), created,
                       json.dumps(summary.get("metrics") or {}), summary.get("base_fingerprint"))
                db.execute("INSERT INTO versions (name, version, content_hash, kind, base_model, rank, size, "
                           "created_at, metrics, base_fingerprint) VALUES (?,?,?,?,?,?,?,?,?,?)", row)
            marker.unlink(missing_ok=True)
            return self._record(row), True
        finally:
            _rmtree(staged)

    def get(self, name: str, version: int) -> VersionRecord | None:
        return self._one(f"SELECT {_COLS} FROM versions v WHERE name=? AND version=?", (name, version))

    def latest(self, name: str) -> VersionRecord | None:
        return self._one(
            f"SELECT {_COLS} FROM versions v WHERE name=? ORDER BY version DESC LIMIT 1", (name,)
        )

    def by_alias(self, name: str, alias: str) -> VersionRecord | None:
        return self._one(
            f"SELECT {_COLS} FROM versions v JOIN aliases a ON a.name=v.name AND a.version=v.version "
            "WHERE a.name=? AND a.alias=?", (name, alias),
        )

    def by_hash_prefix(self, name: str, prefix: str) -> list[VersionRecord]:
        rows = self._conn.execute(
            f"SELECT {_COLS} FROM versions v WHERE name=? AND content_hash >= ? AND content_hash < ? "
            "ORDER BY version", (name, prefix, prefix + "g"),
        ).fetchall()
        return [self._record(r, self._aliases_of(r[0], r[1])) for r in rows]

    def list(self, name: str | None = None) -> builtins.list[VersionRecord]:
        where, args = ("WHERE v.name=?", (name,)) if name else ("", ())
        rows = self._conn.execute(f"SELECT {_COLS} FROM versions v {where} ORDER BY v.name, v.version",
                                  args).fetchall()
        aliases: dict[tuple[str, int], list[str]] = {}
        for a_name, alias, version in self._conn.execute(
            f"SELECT name, alias, version FROM aliases {where.replace('v.', '')} ORDER BY alias", args
        ):
            aliases.setdefault((a_name, version), []).append(alias)
        return [self._record(r, tuple(aliases.get((r[0], r[1]), ()))) for r in rows]

    def set_alias(self, name: str, alias: str, version: int, by: str, *, split: dict[int, int] | None = None,
                  note: str | None = None) -> int | None:
        now = time.time()
        split_json = json.dumps({str(v): w for v, w in split.items()}) if split else None
        with self._write() as db:
            prev = db.execute("SELECT version FROM aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
            db.execute(
                "INSERT INTO aliases (name, alias, version, updated_at, updated_by, split) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(name, alias) DO UPDATE SET version=excluded.version, updated_at=excluded.updated_at, "
                "updated_by=excluded.updated_by, split=excluded.split",
                (name, alias, version, now, by, split_json),
            )
            db.execute("INSERT INTO alias_history (name, alias, version, at, by, split, note) VALUES (?,?,?,?,?,?,?)",
                       (name, alias, version, now, by, split_json, note))
        return prev[0] if prev else None

    def alias_split(self, name: str, alias: str) -> dict[int, int] | None:
        row = self._conn.execute("SELECT split FROM aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
        return _split(row[0]) if row else None

    def remove_alias(self, name: str, alias: str, by: str) -> int | None:
        with self._write() as db:
            prev = db.execute("SELECT version FROM aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
            if prev is None:
                return None
            db.execute("DELETE FROM aliases WHERE name=? AND alias=?", (name, alias))
            db.execute("INSERT INTO alias_history (name, alias, version, at, by) VALUES (?,?,?,?,?)",
                       (name, alias, None, time.time(), by))
        return int(prev[0])

    def alias_history(self, name: str) -> builtins.list[AliasEvent]:
        rows = self._conn.execute(
            "SELECT name, alias, version, at, by, split, note FROM alias_history WHERE name=? ORDER BY id", (name,)
        ).fetchall()
        return [AliasEvent(name=r[0], alias=r[1], version=r[2], at=r[3], by=r[4], split=_split(r[5]), note=r[6])
                for r in rows]

    def set_gate(self, name: str, alias: str, requirements: builtins.list[str] | None, by: str) -> None:
        with self._write() as db:
            if requirements is None:
                db.execute("DELETE FROM alias_gates WHERE name=? AND alias=?", (name, alias))
            else:
                db.execute("INSERT INTO alias_gates VALUES (?,?,?,?,?) ON CONFLICT(name, alias) DO UPDATE SET "
                           "requirements=excluded.requirements, updated_at=excluded.updated_at, "
                           "updated_by=excluded.updated_by", (name, alias, json.dumps(requirements), time.time(), by))

    # Stored responses and keys: their own connection (a serving process writes them per request, while
    # the registry's connection may be inside a version's write transaction on another thread).
    @contextmanager
    def _side_db(self) -> Iterator[sqlite3.Connection]:
        with self._side_lock:
            if self._side_conn is None:
                self._side_conn = sqlite3.connect(self._db_path, timeout=LOCK_WAIT_S, isolation_level=None,
                                                       check_same_thread=False)
            yield self._side_conn

    @contextmanager
    def _key_tx(self) -> Iterator[sqlite3.Connection]:
        with self._side_db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def put_response(self, response_id: str, record: dict[str, Any], expires_at: float) -> None:
        now = time.time()
        with self._side_db() as db:
            db.execute("INSERT OR REPLACE INTO responses VALUES (?,?,?,?)",
                       (response_id, now, expires_at, json.dumps(record)))
            db.execute("DELETE FROM responses WHERE expires_at < ?", (now,))

    def get_response(self, response_id: str) -> dict[str, Any] | None:
        with self._side_db() as db:
            row = db.execute("SELECT record FROM responses WHERE id=? AND expires_at >= ?",
                             (response_id, time.time())).fetchone()
        return json.loads(row[0]) if row else None

    def delete_response(self, response_id: str) -> bool:
        with self._side_db() as db:
            cur = db.execute("DELETE FROM responses WHERE id=? AND expires_at >= ?", (response_id, time.time()))
        return cur.rowcount > 0

    def get_gate(self, name: str, alias: str) -> builtins.list[str] | None:
        row = self._conn.execute("SELECT requirements FROM alias_gates WHERE name=? AND alias=?",
                                 (name, alias)).fetchone()
        return list(json.loads(row[0])) if row else None

    def delete(self, name: str, version: int) -> None:
        trash: Path | None = None
        with self._write() as db:
            db.execute("DELETE FROM aliases WHERE name=? AND version=?", (name, version))
            db.execute("DELETE FROM versions WHERE name=? AND version=?", (name, version))
            # Move out of sight inside the transaction, then delete: a crash leaves only staging trash.
            src = self.versions_dir / name / str(version)
            if src.exists():
                trash = self._staging / f"0-trash-{name}-{version}-{time.time_ns()}"
                os.rename(src, trash)
        if trash is not None:
            _rmtree(trash)

    def set_metrics(self, name: str, version: int, metrics: dict[str, Any]) -> None:
        with self._write() as db:
            row = db.execute("SELECT metrics FROM versions WHERE name=? AND version=?", (name, version)).fetchone()
            if row is None:
                return
            merged = {**json.loads(row[0] or "{}"), **metrics}
            db.execute("UPDATE versions SET metrics=? WHERE name=? AND version=?",
                       (json.dumps(merged), name, version))
