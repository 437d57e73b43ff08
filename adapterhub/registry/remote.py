"""The shared ``RegistryStore``: metadata in PostgreSQL, files in an S3-compatible object store.

For many machines (replicas, trainers, CI) writing and reading one registry. Selected by
``ADAPTERHUB_REGISTRY_URL=postgresql://…`` with ``ADAPTERHUB_ARTIFACTS_URL=s3://bucket/prefix``; the
S3 endpoint and keys come from the usual AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``…).

Layout::

    s3://bucket/prefix/objects/<sha256[:2]>/<sha256>    every file, content-addressed (immutable)
    postgres: versions(…, files jsonb, manifest bytea), aliases, alias_history, alias_gates,
              adapterhub_schema (applied migrations)

A write (``put``): hash the files, upload each object the store does not already have (S3 checks the
SHA-256 we send), then one transaction takes a per-name advisory lock, allocates ``max(version)+1``
and inserts the row with its file list and manifest. Nothing is visible before that commit, so a
writer killed at any point leaves at most unreferenced objects; ``gc`` (run when a server starts and
by ``adapterhub registry gc``) deletes objects no version references once they are older than a grace
period, which covers any upload still on its way to a commit. No pid checks: writers may be anywhere.

A read (``open``) goes through this machine's content-addressed cache under
``<home>/cache/versions``: the first open fetches the objects, checks each against the SHA-256 the
row records (a corrupted object is refused with :class:`IntegrityError` and never cached), and
renames the directory into place; later opens are local. Several processes on one host share the
cache safely (a lock file per entry, atomic renames); it is bounded in size and evicts the least
recently opened entries. Aliases are rows, read on every resolve, so a moved alias takes effect on
every replica at its next request.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from adapterhub.errors import (
    ConflictError,
    IntegrityError,
    MissingDependencyError,
    StoreUnavailableError,
    UserInputError,
)
from adapterhub.models import sha256_file
from adapterhub.registry.keytables import POSTGRES_DDL, KeyTables
from adapterhub.registry.manifest import MANIFEST
from adapterhub.registry.store import AliasEvent, RegistryStore, VersionRecord

log = logging.getLogger(__name__)

# Versioned SQL, applied in order inside one transaction under an advisory lock (so two processes
# starting against an empty database apply each migration once). Never edit a shipped entry: append.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE versions (
    name TEXT NOT NULL, version BIGINT NOT NULL, content_hash TEXT NOT NULL, kind TEXT NOT NULL,
    base_model TEXT, rank INTEGER, size BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    metrics JSONB NOT NULL DEFAULT '{}', base_fingerprint TEXT,
    files JSONB NOT NULL, manifest BYTEA NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX versions_hash ON versions (name, content_hash);
CREATE TABLE aliases (
    name TEXT NOT NULL, alias TEXT NOT NULL, version BIGINT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL, updated_by TEXT NOT NULL, split JSONB,
    PRIMARY KEY (name, alias)
);
CREATE INDEX aliases_version ON aliases (name, version);
CREATE TABLE alias_history (
    id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, alias TEXT NOT NULL, version BIGINT,
    at DOUBLE PRECISION NOT NULL, moved_by TEXT NOT NULL, split JSONB, note TEXT
);
CREATE INDEX alias_history_name ON alias_history (name, id);
CREATE TABLE alias_gates (
    name TEXT NOT NULL, alias TEXT NOT NULL, requirements JSONB NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL, updated_by TEXT NOT NULL,
    PRIMARY KEY (name, alias)
);
"""),
    (2, """
CREATE TABLE responses (
    id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
    record JSONB NOT NULL
);
CREATE INDEX responses_expiry ON responses (expires_at);
"""),
    (3, POSTGRES_DDL),
    (4, """
ALTER TABLE alias_history ADD COLUMN move_id TEXT;
CREATE INDEX alias_history_move ON alias_history (move_id);
"""),
]
_MIGRATION_LOCK = 0x616470_68756220  # any constant: "adp hub "
_COLS = "name, version, content_hash, kind, base_model, rank, size, created_at, metrics, base_fingerprint"


def _split_json(split: dict[int, int] | None) -> str | None:
    return json.dumps({str(v): w for v, w in split.items()}) if split else None


def _split(value: Any) -> dict[int, int] | None:
    return {int(v): int(w) for v, w in value.items()} if value else None


class ObjectStore:
    """Content-addressed objects under ``s3://bucket/prefix/objects/`` through boto3."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise UserInputError(f"ADAPTERHUB_ARTIFACTS_URL must look like s3://bucket/prefix, got {url!r}")
        try:
            import boto3
            from botocore.config import Config
        except ImportError as e:
            raise MissingDependencyError("boto3", "remote", "A shared registry's object store") from e
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.url = url
        cfg = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
        self.client = boto3.client("s3", config=cfg)

    def key(self, sha: str) -> str:
        return "/".join(p for p in (self.prefix, "objects", sha[:2], sha) if p)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            raise StoreUnavailableError(f"object store {self.url}: {what} failed: {err.get('Code')} "
                                        f"{err.get('Message', '')}".strip()) from e
        except BotoCoreError as e:
            raise StoreUnavailableError(f"object store {self.url}: {what} failed: {e}") from e

    def age(self, sha: str) -> float | None:
        """Seconds since the object was written, or None when it does not exist."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(sha))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StoreUnavailableError(f"object store {self.url}: cannot read {self.key(sha)}: {e}") from e
        except BotoCoreError as e:  # unreachable, timed out: the same one-line outage as an upload's
            raise StoreUnavailableError(f"object store {self.url}: existence check of {self.key(sha)} failed: "
                                        f"{e}") from e
        return time.time() - head["LastModified"].timestamp()

    def intact(self, sha: str, scratch: Path) -> bool:
        """Whether the object's bytes still hash to its name (downloaded into ``scratch`` and hashed)."""
        if self.age(sha) is None:  # missing (the HEAD's 404), not an outage
            return False
        dest = scratch / sha
        try:
            self.download(sha, dest)
            return sha256_file(dest) == sha
        finally:
            dest.unlink(missing_ok=True)

    def upload(self, path: Path, sha: str) -> None:
        digest = base64.b64encode(bytes.fromhex(sha)).decode()
        with self._errors(f"upload of {path.name}"), open(path, "rb") as f:
            # The server recomputes the SHA-256 and refuses the upload if a byte changed on the way.
            self.client.put_object(Bucket=self.bucket, Key=self.key(sha), Body=f, ChecksumSHA256=digest)

    def download(self, sha: str, dest: Path) -> None:
        with self._errors(f"download of {self.key(sha)}"):
            self.client.download_file(self.bucket, self.key(sha), str(dest))

    def objects(self) -> Iterator[tuple[str, str, float]]:
        """(key, sha, age in seconds) of every object."""
        root = "/".join(p for p in (self.prefix, "objects") if p) + "/"
        with self._errors("listing"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
                for o in page.get("Contents", []):
                    yield o["Key"], o["Key"].rsplit("/", 1)[-1], time.time() - o["LastModified"].timestamp()

    def delete(self, keys: builtins.list[str]) -> None:
        with self._errors("delete"):
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket,
                                           Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


class VersionCache:
    """This machine's content-addressed copies of remote versions; bounded, LRU, multi-process safe."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._locks = self.root / ".locks"
        self._locks.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        with open(self._locks / f"{name}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def get(self, key: str, fill: Callable[[Path], None]) -> Path:
        """The entry ``key``; ``fill(tmp_dir)`` writes it the first time (raising leaves no entry)."""
        final = self.root / key
        for _ in range(3):  # another process may evict the entry between our check and our use
            if not final.exists():
                self._fill(key, final, fill)
            try:
                os.utime(final)  # the LRU clock: last opened
                return final
            except FileNotFoundError:
                continue
        raise IntegrityError(f"cache entry {key} keeps disappearing: is {self.root} shared with a process "
                             "using a much smaller cache bound?")

    def _fill(self, key: str, final: Path, fill: Callable[[Path], None]) -> None:
        if not final.exists():
            with self._lock(key):
                if not final.exists():
                    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=self.root))
                    try:
                        fill(tmp)
                        for dirpath, _, files in os.walk(tmp):
                            for f in files:
                                os.chmod(os.path.join(dirpath, f), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                        os.rename(tmp, final)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
            self.evict(keep=key)

    def entries(self) -> builtins.list[tuple[float, int, Path]]:
        out = []
        for d in self.root.iterdir():
            if d.is_dir() and not d.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
                    out.append((d.stat().st_mtime, size, d))
        return sorted(out, key=lambda e: e[0])

    def evict(self, keep: str | None = None) -> int:
        """Remove least recently opened entries until the cache fits; returns how many went."""
        removed = 0
        with self._lock("evict"):
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            for _, size, d in entries:
                if total <= self.max_bytes:
                    break
                if d.name == keep:
                    continue
                trash = self.root / f".trash-{d.name}-{time.time_ns()}"
                with contextlib.suppress(FileNotFoundError):
                    os.rename(d, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                    total -= size
                    removed += 1
        return removed

    def quarantine(self, entry: Path) -> bool:
        """Move a (corrupt) entry aside, so the next open fetches the version again; False when ``entry`` is
        not one of this cache's entries. Quarantined entries stay for inspection until ``clean``."""
        entry = Path(entry)
        if entry.parent != self.root or entry.name.startswith("."):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.rename(entry, self.root / f".quarantine-{entry.name}-{time.time_ns()}")
        return True

    def check(self) -> int:
        """Re-hash every entry against its manifest; quarantine the corrupt ones. Returns how many."""
        bad = 0
        for _, _, d in self.entries():
            try:
                listed = json.loads((d / MANIFEST).read_text())["files"]
                ok = all(sha256_file(d / rel) == entry["sha256"] for rel, entry in listed.items())
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if not ok and self.quarantine(d):
                log.warning("cache entry %s was corrupt: quarantined (the next use fetches it again)", d.name)
                bad += 1
        return bad

    def clean(self, grace_s: float) -> int:
        """Remove temp/trash/quarantined directories (older than ``grace_s``)."""
        removed = 0
        for d in [*self.root.glob(".t*-*"), *self.root.glob(".quarantine-*")]:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - d.stat().st_mtime > grace_s:
                    shutil.rmtree(d, ignore_errors=True)
                    removed += 1
        return removed


class RemoteStore(KeyTables, RegistryStore):
    """PostgreSQL rows + S3 objects + a local cache; safe for many processes on many machines."""

    def __init__(self, db_url: str, artifacts_url: str, cache_dir: Path, *, cache_max_bytes: int = 20 << 30,
                 connect_timeout: float = 10) -> None:
        try:
            import psycopg
        except ImportError as e:
            raise MissingDependencyError("psycopg", "remote", "A PostgreSQL registry") from e
        parsed = urlparse(db_url)
        if parsed.scheme not in ("postgresql", "postgres"):
            raise UserInputError(f"ADAPTERHUB_REGISTRY_URL must be a postgresql:// URL, got scheme {parsed.scheme!r}")
        self._psycopg = psycopg
        self._db_url = db_url
        self._where = f"{parsed.hostname or 'localhost'}:{parsed.port or 5432}{parsed.path}"
        self._connect_timeout = connect_timeout
        self._mutex = threading.RLock()
        self._conn: Any = None
        self._used_at = 0.0
        self.objects = ObjectStore(artifacts_url)
        self.cache = VersionCache(cache_dir, cache_max_bytes)
        with self._db() as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS adapterhub_schema (version INTEGER PRIMARY KEY, "
                       "applied_at DOUBLE PRECISION NOT NULL)")
            applied = {r[0] for r in db.execute("SELECT version FROM adapterhub_schema")}
            for number, sql in MIGRATIONS:
                if number not in applied:
                    db.execute(sql)
                    db.execute("INSERT INTO adapterhub_schema VALUES (%s, %s)", (number, time.time()))

    # ---------------------------------------------------------------- plumbing
    @contextlib.contextmanager
    def _db(self) -> Iterator[Any]:
        """The connection (reconnected if it broke), one thread at a time; errors become one line."""
        psycopg = self._psycopg
        with self._mutex:
            try:
                if self._conn is not None and not self._conn.closed and not self._conn.broken and \
                        time.monotonic() - self._used_at > 5:
                    try:  # idle a while: the server may have restarted, and the first query would fail
                        self._conn.execute("SELECT 1")
                    except psycopg.OperationalError:
                        self._conn.close()
                if self._conn is None or self._conn.closed or self._conn.broken:
                    # keepalives and tcp_user_timeout: a dead peer fails the query in seconds, not minutes
                    self._conn = psycopg.connect(self._db_url, autocommit=True,
                                                 connect_timeout=int(self._connect_timeout), keepalives=1,
                                                 keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                                                 tcp_user_timeout=15000)
                yield self._conn
                self._used_at = time.monotonic()
            except psycopg.OperationalError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise StoreUnavailableError(f"registry database {self._where}: {first}") from e

    _placeholder = "%s"

    @contextlib.contextmanager
    def _key_tx(self) -> Iterator[Any]:
        with self._db() as db, db.transaction():
            yield db

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _record(self, row: tuple, aliases: tuple[str, ...] = ()) -> VersionRecord:
        name, version, h, kind, base, rank, size, created, metrics, base_fp = row
        return VersionRecord(name=name, version=version, content_hash=h, kind=kind, base_model=base, rank=rank,
                             size=size, created_at=created, aliases=aliases, metrics=dict(metrics or {}),
                             base_fingerprint=base_fp)

    def _one(self, sql: str, args: tuple) -> VersionRecord | None:
        with self._db() as db:
            row = db.execute(sql, args).fetchone()
            if row is None:
                return None
            aliases = tuple(r[0] for r in db.execute(
                "SELECT alias FROM aliases WHERE name=%s AND version=%s ORDER BY alias", (row[0], row[1])))
        return self._record(row, aliases)

    # ---------------------------------------------------------------- writing
    def _upload(self, src: Path) -> dict[str, dict[str, Any]]:
        """Upload ``src``'s files as objects; an object already there is downloaded and re-hashed first, and
        uploaded again when its bytes no longer match its name (a corrupt store is repaired, not trusted)."""
        files: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="adapterhub-check-") as tmp:
            self._upload_into(src, files, Path(tmp))
        return files

    def _upload_into(self, src: Path, files: dict[str, dict[str, Any]], scratch: Path) -> None:
        for p in sorted(src.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                sha = sha256_file(p)
                files[p.relative_to(src).as_posix()] = {"sha256": sha, "size": p.stat().st_size}
                age = self.objects.age(sha)
                if age is not None and not self.objects.intact(sha, scratch):  # never trust what is there
                    log.warning("object %s in %s was corrupt: uploaded again from %s", sha[:12], self.objects.url,
                                p.relative_to(src).as_posix())
                    age = None
                # Re-upload an object that gc might be about to take (old and perhaps unreferenced).
                if age is None or age > 60:
                    self.objects.upload(p, sha)

    def put(self, name: str, src: Path, content_hash: str, summary: dict[str, Any],
            manifest_for: Callable[[int], bytes]) -> tuple[VersionRecord, bool]:
        existing = self._one(f"SELECT {_COLS} FROM versions WHERE name=%s AND content_hash=%s "
                             "ORDER BY version LIMIT 1", (name, content_hash))
        if existing is not None:
            self._upload(Path(src))  # the same content again: its objects are checked, and repaired if corrupt
            return existing, False
        files = self._upload(Path(src))
        return self._insert(name, None, content_hash, summary, files, manifest_for)

    def put_exact(self, name: str, version: int, src: Path, content_hash: str, summary: dict[str, Any],
                  manifest: bytes, created_at: float | None = None) -> bool:
        """Store ``src`` as exactly ``name@version`` (copying a registry keeps its numbers). False when that
        version already holds this content; ConflictError when it holds other content."""
        have = self.get(name, version)
        if have is not None:
            if have.content_hash != content_hash:
                raise ConflictError(f"{name}@{version} already exists in the target with other content "
                                    f"(sha256:{have.content_hash[:12]})")
            return False
        files = self._upload(Path(src))
        self._insert(name, version, content_hash, {**summary, "created_at": created_at}, files, lambda _v: manifest)
        return True

    def _insert(self, name: str, version: int | None, content_hash: str, summary: dict[str, Any],
                files: dict[str, dict[str, Any]], manifest_for: Callable[[int], bytes]) -> tuple[VersionRecord, bool]:
        from psycopg.types.json import Jsonb

        with self._db() as db, db.transaction():
            # One writer per name at a time, on any machine: numbers are consecutive and unique.
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))
            row = db.execute(f"SELECT {_COLS} FROM versions WHERE name=%s AND content_hash=%s "
                             "ORDER BY version LIMIT 1", (name, content_hash)).fetchone()
            if row is not None and version is None:
                return self._record(row), False
            if version is None:
                (last,) = db.execute("SELECT MAX(version) FROM versions WHERE name=%s", (name,)).fetchone()
                version = (last or 0) + 1
            manifest = manifest_for(version)
            created = summary.get("created_at") or time.time()
            values = (name, version, content_hash, summary.get("kind", "adapter"), summary.get("base_model"),
                      summary.get("rank"), int(summary.get("size", 0)), created, Jsonb(summary.get("metrics") or {}),
                      summary.get("base_fingerprint"), Jsonb(files), manifest)
            db.execute(f"INSERT INTO versions ({_COLS}, files, manifest) VALUES "
                       "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", values)
        return VersionRecord(name=name, version=version, content_hash=content_hash, kind=str(values[3]),
                             base_model=summary.get("base_model"), rank=summary.get("rank"), size=int(values[6]),
                             created_at=created, metrics=dict(summary.get("metrics") or {}),
                             base_fingerprint=summary.get("base_fingerprint")), True

    # ---------------------------------------------------------------- reading
    def open(self, record: VersionRecord) -> Path:
        with self._db() as db:
            row = db.execute("SELECT files, manifest FROM versions WHERE name=%s AND version=%s",
                             (record.name, record.version)).fetchone()
        if row is None:
            raise IntegrityError(f"{record.ref} is no longer in the registry")
        files, manifest = row[0], bytes(row[1])
        key = f"{record.content_hash}-{hashlib.sha256(manifest).hexdigest()[:16]}"

        def fill(tmp: Path) -> None:
            for rel, entry in files.items():
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.objects.download(entry["sha256"], dest)
                got = sha256_file(dest)
                if got != entry["sha256"]:
                    raise IntegrityError(
                        f"{record.ref}: checksum mismatch in {rel} fetched from the object store (expected "
                        f"{entry['sha256'][:12]}…, got {got[:12]}…); not cached, not served",
                        path=self.objects.key(entry["sha256"]))
            (tmp / MANIFEST).write_bytes(manifest)

        return self.cache.get(key, fill)

    def get(self, name: str, version: int) -> VersionRecord | None:
        return self._one(f"SELECT {_COLS} FROM versions WHERE name=%s AND version=%s", (name, version))

    def latest(self, name: str) -> VersionRecord | None:
        return self._one(f"SELECT {_COLS} FROM versions WHERE name=%s ORDER BY version DESC LIMIT 1", (name,))

    def by_alias(self, name: str, alias: str) -> VersionRecord | None:
        cols = ", ".join(f"v.{c.strip()}" for c in _COLS.split(","))
        return self._one(f"SELECT {cols} FROM versions v JOIN aliases a ON a.name=v.name AND a.version=v.version "
                         "WHERE a.name=%s AND a.alias=%s", (name, alias))

    def by_hash_prefix(self, name: str, prefix: str) -> builtins.list[VersionRecord]:
        if not prefix or not all(c in "0123456789abcdef" for c in prefix):
            return []
        with self._db() as db:
            rows = db.execute(f"SELECT {_COLS} FROM versions WHERE name=%s AND content_hash LIKE %s ORDER BY version",
                              (name, prefix + "%")).fetchall()
            aliases: dict[int, builtins.list[str]] = {}
            for alias, version in db.execute("SELECT alias, version FROM aliases WHERE name=%s ORDER BY alias",
                                             (name,)):
                aliases.setdefault(version, []).append(alias)
        return [self._record(r, tuple(aliases.get(r[1], ()))) for r in rows]

    def list(self, name: str | None = None) -> builtins.list[VersionRecord]:
        where, args = ("WHERE name=%s", (name,)) if name else ("", ())
        with self._db() as db:
            rows = db.execute(f"SELECT {_COLS} FROM versions {where} ORDER BY name, version", args).fetchall()
            aliases: dict[tuple[str, int], builtins.list[str]] = {}
            for a_name, alias, version in db.execute(
                    f"SELECT name, alias, version FROM aliases {where} ORDER BY alias", args):
                aliases.setdefault((a_name, version), []).append(alias)
        return [self._record(r, tuple(aliases.get((r[0], r[1]), ()))) for r in rows]

    # ---------------------------------------------------------------- aliases
    def set_alias(self, name: str, alias: str, version: int, by: str, *, split: dict[int, int] | None = None,
                  note: str | None = None) -> int | None:
        """The move, tagged with an id of its own: when the connection breaks, the history says whether the
        commit happened before it did (then the move is reported done) or not (then it is made once more)."""
        move = uuid.uuid4().hex
        try:
            return self._set_alias(name, alias, version, by, split, note, move)
        except StoreUnavailableError as e:
            try:
                done, prev = self._committed_move(name, alias, move)
            except StoreUnavailableError:
                raise StoreUnavailableError(f"{e.message}; whether {name}@{alias} moved is unknown: see "
                                            f"'adapterhub history {name}'") from e
            if done:
                log.warning("%s@%s: the connection broke after the move was committed (%s); it is done", name,
                            alias, e.message)
                return prev
            return self._set_alias(name, alias, version, by, split, note, move)

    def _committed_move(self, name: str, alias: str, move: str) -> tuple[bool, int | None]:
        with self._db() as db:
            row = db.execute("SELECT id FROM alias_history WHERE move_id=%s", (move,)).fetchone()
            if row is None:
                return False, None
            before = db.execute("SELECT a.version FROM alias_history a WHERE a.name=%s AND a.alias=%s AND a.id < %s "
                                "ORDER BY a.id DESC LIMIT 1", (name, alias, row[0])).fetchone()
        return True, (int(before[0]) if before and before[0] is not None else None)

    def _set_alias(self, name: str, alias: str, version: int, by: str, split: dict[int, int] | None,
                   note: str | None, move: str) -> int | None:
        now, split_json = time.time(), _split_json(split)
        with self._db() as db, db.transaction():
            prev = db.execute("SELECT version FROM aliases WHERE name=%s AND alias=%s FOR UPDATE",
                              (name, alias)).fetchone()
            db.execute(
                "INSERT INTO aliases (name, alias, version, updated_at, updated_by, split) "
                "VALUES (%s,%s,%s,%s,%s,%s::jsonb) ON CONFLICT (name, alias) DO UPDATE SET "
                "version=excluded.version, updated_at=excluded.updated_at, updated_by=excluded.updated_by, "
                "split=excluded.split", (name, alias, version, now, by, split_json))
            db.execute("INSERT INTO alias_history (name, alias, version, at, moved_by, split, note, move_id) "
                       "VALUES (%s,%s,%s,%s,%s,%s::jsonb,%s,%s)", (name, alias, version, now, by, split_json, note,
                                                                   move))
        return int(prev[0]) if prev else None

    def alias_split(self, name: str, alias: str) -> dict[int, int] | None:
        with self._db() as db:
            row = db.execute("SELECT split FROM aliases WHERE name=%s AND alias=%s", (name, alias)).fetchone()
        return _split(row[0]) if row else None

    def remove_alias(self, name: str, alias: str, by: str) -> int | None:
        with self._db() as db, db.transaction():
            prev = db.execute("DELETE FROM aliases WHERE name=%s AND alias=%s RETURNING version",
                              (name, alias)).fetchone()
            if prev is None:
                return None
            db.execute("INSERT INTO alias_history (name, alias, version, at, moved_by) VALUES (%s,%s,%s,%s,%s)",
                       (name, alias, None, time.time(), by))
        return int(prev[0])

    def alias_history(self, name: str) -> builtins.list[AliasEvent]:
        with self._db() as db:
            rows = db.execute("SELECT name, alias, version, at, moved_by, split, note FROM alias_history "
                              "WHERE name=%s ORDER BY id", (name,)).fetchall()
        return [AliasEvent(name=r[0], alias=r[1], version=r[2], at=r[3], by=r[4], split=_split(r[5]), note=r[6])
                for r in rows]

    def set_gate(self, name: str, alias: str, requirements: builtins.list[str] | None, by: str) -> None:
        from psycopg.types.json import Jsonb

        with self._db() as db:
            if requirements is None:
                db.execute("DELETE FROM alias_gates WHERE name=%s AND alias=%s", (name, alias))
            else:
                db.execute("INSERT INTO alias_gates VALUES (%s,%s,%s,%s,%s) ON CONFLICT (name, alias) DO UPDATE SET "
                           "requirements=excluded.requirements, updated_at=excluded.updated_at, "
                           "updated_by=excluded.updated_by", (name, alias, Jsonb(requirements), time.time(), by))

    def get_gate(self, name: str, alias: str) -> builtins.list[str] | None:
        with self._db() as db:
            row = db.execute("SELECT requirements FROM alias_gates WHERE name=%s AND alias=%s",
                             (name, alias)).fetchone()
        return list(row[0]) if row else None

    def put_response(self, response_id: str, record: dict[str, Any], expires_at: float) -> None:
        from psycopg.types.json import Jsonb

        now = time.time()
        with self._db() as db:
            db.execute("INSERT INTO responses VALUES (%s,%s,%s,%s) ON CONFLICT (id) DO UPDATE SET "
                       "record=excluded.record, expires_at=excluded.expires_at",
                       (response_id, now, expires_at, Jsonb(record)))
            db.execute("DELETE FROM responses WHERE expires_at < %s", (now,))

    def get_response(self, response_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT record FROM responses WHERE id=%s AND expires_at >= %s",
                             (response_id, time.time())).fetchone()
        return dict(row[0]) if row else None

    def delete_response(self, response_id: str) -> bool:
        with self._db() as db:
            cur = db.execute("DELETE FROM responses WHERE id=%s AND expires_at >= %s", (response_id, time.time()))
        return bool(cur.rowcount)

    # ---------------------------------------------------------------- upkeep
    def delete(self, name: str, version: int) -> None:
        """Remove the row (and its aliases) in one transaction; its objects go at the next gc."""
        with self._db() as db, db.transaction():
            db.execute("DELETE FROM aliases WHERE name=%s AND version=%s", (name, version))
            db.execute("DELETE FROM versions WHERE name=%s AND version=%s", (name, version))

    def set_metrics(self, name: str, version: int, metrics: dict[str, Any]) -> None:
        from psycopg.types.json import Jsonb

        with self._db() as db:
            db.execute("UPDATE versions SET metrics = metrics || %s WHERE name=%s AND version=%s",
                       (Jsonb(metrics), name, version))

    def gc(self, grace_s: float) -> dict[str, int]:
        """Delete objects no version references that are older than ``grace_s`` (uploads of writers that
        died before their commit, files of deleted versions), and this machine's cache leftovers."""
        with self._db() as db:
            referenced = {r[0] for r in db.execute(
                "SELECT DISTINCT f.value->>'sha256' FROM versions, jsonb_each(files) AS f")}
        orphans = [key for key, sha, age in self.objects.objects() if sha not in referenced and age > grace_s]
        self.objects.delete(orphans)
        return {"orphan_objects_removed": len(orphans), "cache_entries_quarantined": self.cache.check(),
                "cache_leftovers_removed": self.cache.clean(grace_s), "cache_entries_evicted": self.cache.evict()}

    # ---------------------------------------------------------------- integrity
    shared = True

    def quarantine(self, path: Path) -> bool:
        return self.cache.quarantine(path)

    def verify_objects(self, record: VersionRecord) -> None:
        """Download every object of the version from the store and re-hash it (not this machine's cache)."""
        with self._db() as db:
            row = db.execute("SELECT files FROM versions WHERE name=%s AND version=%s",
                             (record.name, record.version)).fetchone()
        if row is None:
            raise IntegrityError(f"{record.ref} is no longer in the registry")
        with tempfile.TemporaryDirectory(prefix="adapterhub-check-") as tmp:
            for rel, entry in sorted(row[0].items()):
                if not self.objects.intact(entry["sha256"], Path(tmp)):
                    raise IntegrityError(f"{record.ref}: {rel} is missing or corrupt in the object store "
                                         f"({self.objects.key(entry['sha256'])}); re-import the version's files "
                                         "to repair it", path=self.objects.key(entry["sha256"]))

    def describe(self) -> str:
        return f"postgresql://{self._where} + {self.objects.url}"
