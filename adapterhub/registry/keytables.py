"""The API-key tables of a registry store, in SQL both SQLite and PostgreSQL run (``?`` placeholders;
:class:`KeyTables` turns them into ``%s`` for psycopg). A store mixes this in and says how to get a
connection inside a transaction (:meth:`KeyTables._key_tx`).

Tables: ``api_keys`` (one row per key, the secret's hash unique), ``key_events`` (the keys' history),
``key_usage`` (requests and tokens per key, model and UTC day; added to, never overwritten) and
``key_windows`` (each serving replica's requests and tokens per key in the last minute, so replicas on
one registry enforce a shared rate limit).
"""

from __future__ import annotations

import builtins
import json
import time
from contextlib import AbstractContextManager
from typing import Any

from adapterhub.errors import ConflictError
from adapterhub.registry.keys import KeyEvent, KeyRecord, UsageRow

SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY, secret_hash TEXT NOT NULL UNIQUE, models TEXT NOT NULL, rpm INTEGER, tpm INTEGER,
    admin INTEGER NOT NULL, created_at REAL NOT NULL, created_by TEXT NOT NULL, expires_at REAL,
    revoked_at REAL, last_used_at REAL
);
CREATE TABLE IF NOT EXISTS key_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, key_name TEXT NOT NULL, action TEXT NOT NULL,
    actor TEXT NOT NULL, detail TEXT
);
CREATE TABLE IF NOT EXISTS key_usage (
    key_name TEXT NOT NULL, model TEXT NOT NULL, day TEXT NOT NULL, requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, PRIMARY KEY (key_name, model, day)
);
CREATE TABLE IF NOT EXISTS key_windows (
    replica TEXT NOT NULL, key_name TEXT NOT NULL, at REAL NOT NULL, requests INTEGER NOT NULL,
    tokens INTEGER NOT NULL, PRIMARY KEY (replica, key_name)
);
"""
POSTGRES_DDL = (SQLITE_DDL.replace(" IF NOT EXISTS", "").replace("REAL", "DOUBLE PRECISION")
                .replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
                .replace("requests INTEGER", "requests BIGINT").replace("tokens INTEGER", "tokens BIGINT"))
_KEY_COLS = ("name, secret_hash, models, rpm, tpm, admin, created_at, created_by, expires_at, revoked_at, "
             "last_used_at")
WINDOW_S = 60.0  # the rate limits' sliding window


def _key(row: tuple) -> KeyRecord:
    name, h, models, rpm, tpm, admin, created, by, expires, revoked, used = row
    return KeyRecord(name=name, models=tuple(json.loads(models)), rpm=rpm, tpm=tpm, admin=bool(admin),
                     created_at=created, created_by=by, expires_at=expires, revoked_at=revoked, last_used_at=used,
                     secret_hash=h)


class KeyTables:
    """The key methods of :class:`~adapterhub.registry.store.RegistryStore` on SQL."""

    _placeholder = "?"

    def _key_tx(self) -> AbstractContextManager[Any]:  # pragma: no cover - each store provides it
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def _rows(self, sql: str, args: tuple = ()) -> builtins.list[tuple]:
        with self._key_tx() as db:
            return [tuple(r) for r in db.execute(self._sql(sql), args).fetchall()]

    def put_key(self, record: KeyRecord) -> None:
        with self._key_tx() as db:
            cur = db.execute(self._sql(f"INSERT INTO api_keys ({_KEY_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                                       "ON CONFLICT (name) DO NOTHING"),
                             (record.name, record.secret_hash, json.dumps(list(record.models)), record.rpm,
                              record.tpm, int(record.admin), record.created_at, record.created_by, record.expires_at,
                              None, None))
            if cur.rowcount == 0:
                raise ConflictError(f"a key named '{record.name}' already exists (names are never reused, "
                                    "revoked ones included)")

    def update_key(self, name: str, *, models: tuple[str, ...], rpm: int | None, tpm: int | None) -> None:
        with self._key_tx() as db:
            db.execute(self._sql("UPDATE api_keys SET models=?, rpm=?, tpm=? WHERE name=?"),
                       (json.dumps(list(models)), rpm, tpm, name))

    def revoke_key(self, name: str, at: float) -> None:
        with self._key_tx() as db:
            db.execute(self._sql("UPDATE api_keys SET revoked_at=? WHERE name=? AND revoked_at IS NULL"), (at, name))

    def list_keys(self) -> builtins.list[KeyRecord]:
        return [_key(r) for r in self._rows(f"SELECT {_KEY_COLS} FROM api_keys ORDER BY name")]

    def add_key_event(self, event: KeyEvent) -> None:
        with self._key_tx() as db:
            db.execute(self._sql("INSERT INTO key_events (at, key_name, action, actor, detail) VALUES (?,?,?,?,?)"),
                       (event.at, event.key, event.action, event.by, event.detail))

    def key_events(self, name: str | None = None) -> builtins.list[KeyEvent]:
        where, args = ("WHERE key_name=?", (name,)) if name else ("", ())
        rows = self._rows(f"SELECT at, key_name, action, actor, detail FROM key_events {where} ORDER BY id", args)
        return [KeyEvent(*r) for r in rows]

    def add_key_usage(self, rows: builtins.list[UsageRow], last_used: dict[str, float]) -> None:
        """Add ``rows`` to the usage totals and note when each key was last used, in one transaction."""
        with self._key_tx() as db:
            for u in rows:
                db.execute(self._sql(
                    "INSERT INTO key_usage VALUES (?,?,?,?,?,?) ON CONFLICT (key_name, model, day) DO UPDATE SET "
                    "requests = key_usage.requests + excluded.requests, "
                    "prompt_tokens = key_usage.prompt_tokens + excluded.prompt_tokens, "
                    "completion_tokens = key_usage.completion_tokens + excluded.completion_tokens"),
                    (u.key, u.model, u.day, u.requests, u.prompt_tokens, u.completion_tokens))
            for name, at in last_used.items():
                db.execute(self._sql("UPDATE api_keys SET last_used_at=? WHERE name=? AND "
                                     "(last_used_at IS NULL OR last_used_at < ?)"), (at, name, at))

    def key_usage(self, name: str | None = None) -> builtins.list[UsageRow]:
        where, args = ("WHERE key_name=?", (name,)) if name else ("", ())
        rows = self._rows("SELECT key_name, model, day, requests, prompt_tokens, completion_tokens FROM key_usage "
                          f"{where} ORDER BY day, key_name, model", args)
        return [UsageRow(*r) for r in rows]

    def share_key_counts(self, replica: str, counts: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        """Publish this replica's requests and tokens per key in the last minute; return the other live
        replicas' totals per key (rows older than the window are ignored and cleaned up)."""
        now = time.time()
        with self._key_tx() as db:
            db.execute(self._sql("DELETE FROM key_windows WHERE at < ?"), (now - WINDOW_S,))
            db.execute(self._sql("DELETE FROM key_windows WHERE replica=?"), (replica,))
            for name, (requests, tokens) in counts.items():
                if requests or tokens:
                    db.execute(self._sql("INSERT INTO key_windows VALUES (?,?,?,?,?)"),
                               (replica, name, now, requests, tokens))
            rows = db.execute(self._sql("SELECT key_name, SUM(requests), SUM(tokens) FROM key_windows "
                                        "WHERE replica <> ? GROUP BY key_name"), (replica,)).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

