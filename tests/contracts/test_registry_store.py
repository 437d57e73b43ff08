"""RegistryStore contract: every storage backend passes this suite: the local files + SQLite store, and
the shared PostgreSQL + S3 store (a real PostgreSQL and moto's S3 server, both on 127.0.0.1).

The store is driven directly, below the Registry API, with real files: what a user of the registry
would notice if a backend got it wrong (lost or half-visible versions, duplicate numbers, aliases
pointing nowhere, files that differ from what was put).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from adapterhub.registry.local import LocalStore
from adapterhub.registry.manifest import MANIFEST
from adapterhub.registry.store import RegistryStore

STORES = ["local", "postgres+s3"]


@pytest.fixture(params=STORES)
def open_store(request, tmp_path):
    """Opens a store on one shared location (each call: a new client, as another process or machine
    would; each remote client has its own cache directory)."""
    opened: list[RegistryStore] = []
    if request.param == "postgres+s3":
        db_url, artifacts = request.getfixturevalue("shared_registry")
        from adapterhub.registry.remote import RemoteStore

        def make() -> RegistryStore:
            return RemoteStore(db_url, artifacts, tmp_path / f"cache-{len(opened)}")
    else:
        def make() -> RegistryStore:
            return LocalStore(tmp_path / "registry")

    def factory() -> RegistryStore:
        store = make()
        opened.append(store)
        return store

    yield factory
    for s in opened:
        s.close()


def _src(tmp_path: Path, content: str, name: str = "src") -> Path:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps({"content": content}))
    (d / "adapter_model.safetensors").write_bytes(content.encode() * 3)
    return d


def _manifest(name: str, content_hash: str) -> Callable[[int], bytes]:
    return lambda version: json.dumps({"name": name, "version": version, "content_hash": content_hash}).encode()


def _put(store: RegistryStore, tmp_path: Path, name: str, content: str, **summary):
    src = _src(tmp_path, content, f"src-{name}-{content}")
    h = f"{abs(hash(content)):064x}"[:64]
    return store.put(name, src, h, {"kind": "adapter", "size": 3, **summary}, _manifest(name, h))


def test_put_numbers_versions_and_open_gives_the_files(open_store, tmp_path):
    store = open_store()
    r1, created1 = _put(store, tmp_path, "lumen", "a", base_model="tiny", base_fingerprint="fp1", rank=8)
    r2, created2 = _put(store, tmp_path, "lumen", "b")
    assert (r1.version, r2.version, created1, created2) == (1, 2, True, True)
    assert (r1.base_model, r1.base_fingerprint, r1.rank, r1.kind) == ("tiny", "fp1", 8, "adapter")
    d = store.open(r1)
    assert sorted(p.name for p in d.iterdir()) == sorted(["adapter_config.json", "adapter_model.safetensors",
                                                          MANIFEST])
    assert json.loads((d / MANIFEST).read_text())["version"] == 1  # manifest written with its number
    assert (d / "adapter_model.safetensors").read_bytes() == b"aaa"
    assert (tmp_path / "src-lumen-a" / "adapter_model.safetensors").exists()  # the source is not consumed
    assert store.get("lumen", 2) == r2 and store.latest("lumen") == r2 and store.get("lumen", 3) is None
    assert [r.ref for r in store.list()] == ["lumen@1", "lumen@2"]


def test_same_content_returns_the_existing_version(open_store, tmp_path):
    store = open_store()
    r1, _ = _put(store, tmp_path, "lumen", "a")
    again, created = _put(store, tmp_path, "lumen", "a")
    assert not created and again.version == r1.version and len(store.list("lumen")) == 1
    other, created = _put(store, tmp_path, "other", "a")  # per name: another name gets its own version 1
    assert created and other.ref == "other@1"


def test_aliases_move_with_history(open_store, tmp_path):
    store = open_store()
    _put(store, tmp_path, "lumen", "a")
    _put(store, tmp_path, "lumen", "b")
    assert store.set_alias("lumen", "production", 1, "alice") is None
    assert store.set_alias("lumen", "production", 2, "bob") == 1
    assert store.by_alias("lumen", "production").version == 2
    assert store.get("lumen", 2).aliases == ("production",) and store.get("lumen", 1).aliases == ()
    assert [r.aliases for r in store.list("lumen")] == [(), ("production",)]
    assert store.remove_alias("lumen", "production", "carol") == 2
    assert store.by_alias("lumen", "production") is None and store.remove_alias("lumen", "production", "x") is None
    assert [(e.version, e.by) for e in store.alias_history("lumen")] == [(1, "alice"), (2, "bob"), (None, "carol")]


def test_hash_prefix_lookup(open_store, tmp_path):
    store = open_store()
    r, _ = _put(store, tmp_path, "lumen", "a")
    assert store.by_hash_prefix("lumen", r.content_hash[:10]) == [r]
    assert store.by_hash_prefix("lumen", "f" * 10 if not r.content_hash.startswith("f" * 10) else "0" * 10) == []


def test_delete_removes_version_and_its_aliases(open_store, tmp_path):
    store = open_store()
    r, _ = _put(store, tmp_path, "lumen", "a")
    store.set_alias("lumen", "production", 1, "alice")
    store.delete("lumen", 1)
    assert store.get("lumen", 1) is None and store.by_alias("lumen", "production") is None
    assert store.list() == []
    r2, _ = _put(store, tmp_path, "lumen", "b")
    assert r2.version == 1  # numbering continues from what is visible


def test_metrics_merge(open_store, tmp_path):
    store = open_store()
    _put(store, tmp_path, "lumen", "a", metrics={"identity": 0.5})
    store.set_metrics("lumen", 1, {"retention": 0.9})
    store.set_metrics("lumen", 1, {"identity": 0.96})
    assert store.get("lumen", 1).metrics == {"identity": 0.96, "retention": 0.9}


def test_failed_put_leaves_nothing_visible(open_store, tmp_path):
    store = open_store()

    def broken(version: int) -> bytes:
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        store.put("lumen", _src(tmp_path, "a"), "ab" * 32, {"kind": "adapter", "size": 1}, broken)
    assert store.list() == [] and store.latest("lumen") is None
    assert open_store().list() == []  # also for a client opened afterwards
    r, _ = _put(store, tmp_path, "lumen", "b")
    assert r.version == 1


def test_other_clients_see_writes(open_store, tmp_path):
    a, b = open_store(), open_store()
    _put(a, tmp_path, "lumen", "a")
    b.set_alias("lumen", "production", 1, "bob")
    assert a.by_alias("lumen", "production").version == 1
    assert [r.ref for r in b.list()] == ["lumen@1"]


def test_concurrent_writers_get_consecutive_unique_versions(open_store, tmp_path):
    stores = [open_store() for _ in range(4)]
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for j in range(3):
                _put(stores[i], tmp_path, "lumen", f"w{i}-{j}")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [r.version for r in open_store().list("lumen")] == list(range(1, 13))


def test_split_aliases_and_gates(open_store, tmp_path):
    store = open_store()
    _put(store, tmp_path, "lumen", "a")
    _put(store, tmp_path, "lumen", "b")
    store.set_alias("lumen", "production", 1, "alice", split={1: 90, 2: 10})
    assert store.alias_split("lumen", "production") == {1: 90, 2: 10}
    assert open_store().by_alias("lumen", "production").version == 1  # the primary, for plain readers
    store.set_alias("lumen", "production", 2, "bob", note="rollback")
    assert store.alias_split("lumen", "production") is None
    events = store.alias_history("lumen")
    assert [(e.split, e.note) for e in events] == [({1: 90, 2: 10}, None), (None, "rollback")]
    assert store.get_gate("lumen", "production") is None
    store.set_gate("lumen", "production", ["identity>=0.95"], "alice")
    assert open_store().get_gate("lumen", "production") == ["identity>=0.95"]
    store.set_gate("lumen", "production", None, "alice")
    assert store.get_gate("lumen", "production") is None


def test_keys_are_shared_unique_and_metered(open_store):
    from adapterhub.errors import ConflictError
    from adapterhub.registry.keys import KeyEvent, KeyRecord, UsageRow

    store, other = open_store(), open_store()  # e.g. the CLI on one machine, a server on another
    record = KeyRecord("team-a", ("team-a-*",), rpm=5, created_at=1.0, created_by="ops", secret_hash="ab" * 32)
    store.put_key(record)
    with pytest.raises(ConflictError):
        other.put_key(KeyRecord("team-a", ("*",), secret_hash="cd" * 32))
    [seen] = other.list_keys()
    assert (seen.name, seen.models, seen.rpm, seen.tpm, seen.secret_hash) == ("team-a", ("team-a-*",), 5, None, "ab" * 32)
    store.update_key("team-a", models=("team-a-*", "shared"), rpm=None, tpm=100)
    store.revoke_key("team-a", 7.0)
    [seen] = other.list_keys()
    assert (seen.models, seen.rpm, seen.tpm, seen.revoked_at) == (("team-a-*", "shared"), None, 100, 7.0)
    # Usage adds up across writers (two replicas flushing the same key, model and day).
    store.add_key_usage([UsageRow("team-a", "lumen@1", "2026-12-03", 2, 10, 4)], {"team-a": 5.0})
    other.add_key_usage([UsageRow("team-a", "lumen@1", "2026-12-03", 1, 3, 1),
                         UsageRow("team-a", "tiny", "2026-12-03", 1, 2, 2)], {"team-a": 4.0})
    assert store.key_usage("team-a") == [UsageRow("team-a", "lumen@1", "2026-12-03", 3, 13, 5),
                                         UsageRow("team-a", "tiny", "2026-12-03", 1, 2, 2)]
    assert store.key_usage("nobody") == [] and store.list_keys()[0].last_used_at == 5.0  # latest use wins
    store.add_key_event(KeyEvent(1.0, "team-a", "created", "ops", "models=team-a-*"))
    other.add_key_event(KeyEvent(2.0, "team-a", "revoked", "ops"))
    assert [(e.action, e.by) for e in store.key_events("team-a")] == [("created", "ops"), ("revoked", "ops")]
    # Replicas see each other's last-minute counts, never their own.
    assert store.share_key_counts("r1", {"team-a": (3, 30)}) == {}
    assert other.share_key_counts("r2", {"team-a": (2, 5)}) == {"team-a": (3, 30)}
    assert store.share_key_counts("r1", {"team-a": (4, 31)}) == {"team-a": (2, 5)}
    assert other.share_key_counts("r2", {}) == {"team-a": (4, 31)}
