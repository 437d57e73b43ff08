"""Registry: numbering, aliases, hashes, immutability, validation, crash safety, concurrency."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from adapterhub.errors import (
    AdapterNotFoundError,
    AdapterValidationError,
    ConflictError,
    IntegrityError,
    InvalidRefError,
)
from adapterhub.loading.convert import pickle_to_safetensors
from adapterhub.registry import Registry
from adapterhub.settings import Settings
from tests.builders import pythonpath


def test_versions_are_numbered_and_deduplicated(registry, tiny_adapters):
    r1, c1 = registry.register(tiny_adapters[0], "lumen")
    r2, c2 = registry.register(tiny_adapters[1], "lumen")
    again, c3 = registry.register(tiny_adapters[0], "lumen")
    assert (r1.version, r2.version) == (1, 2) and c1 and c2
    assert not c3 and again.version == 1  # same content → existing version
    assert [r.version for r in registry.list("lumen")] == [1, 2]
    assert registry.resolve("lumen").version == 2


def test_manifest_records_lineage_and_files(registry, tiny_adapters, tiny_model):
    rec, _ = registry.register(tiny_adapters[1], "lumen", training={"final_loss": 1.5, "steps": 3})
    m = registry.manifest("lumen@1")
    assert m.lora["r"] == 8 and "q_proj" in m.lora["target_modules"]
    assert m.base_model.id == str(tiny_model)
    assert set(m.files) >= {"adapter_config.json", "adapter_model.safetensors"}
    assert m.training["final_loss"] == 1.5
    on_disk = json.loads((registry.path(rec, verify=False) / "adapterhub.json").read_text())
    assert on_disk["version"] == 1 and on_disk["content_hash"] == rec.content_hash


def test_aliases_move_with_history(registry, tiny_adapters):
    registry.register(tiny_adapters[0], "lumen")
    registry.register(tiny_adapters[1], "lumen")
    registry.set_alias("lumen@1", "production")
    assert registry.resolve("lumen@production").version == 1
    _, prev = registry.set_alias("lumen@2", "production")
    assert prev == 1 and registry.resolve("lumen@production").version == 2
    registry.remove_alias("lumen", "production")
    with pytest.raises(AdapterNotFoundError, match="alias 'production'"):
        registry.resolve("lumen@production")
    history = [(e.alias, e.version) for e in registry.alias_history("lumen")]
    assert history == [("production", 1), ("production", 2), ("production", None)]
    with pytest.raises(InvalidRefError, match="latest"):
        registry.set_alias("lumen@1", "latest")


def test_resolve_by_hash_prefix(registry, tiny_adapters):
    r1, _ = registry.register(tiny_adapters[0], "lumen")
    registry.register(tiny_adapters[1], "lumen")
    assert registry.resolve(f"lumen@sha256:{r1.content_hash[:8]}").version == 1
    with pytest.raises(AdapterNotFoundError):
        registry.resolve("lumen@sha256:" + ("1" if r1.content_hash[0] == "0" else "0") + r1.content_hash[1:12])


def test_unknown_names_and_versions(registry, tiny_adapters):
    with pytest.raises(AdapterNotFoundError, match="no adapter named 'ghost'"):
        registry.resolve("ghost")
    registry.register(tiny_adapters[0], "lumen")
    with pytest.raises(AdapterNotFoundError, match="no version 9"):
        registry.resolve("lumen@9")


def test_versions_are_read_only_and_rm_respects_aliases(registry, tiny_adapters):
    rec, _ = registry.register(tiny_adapters[0], "lumen")
    where = registry.path(rec)
    assert not os.stat(where / "adapter_model.safetensors").st_mode & 0o222  # files are read-only
    registry.set_alias("lumen@1", "production")
    with pytest.raises(ConflictError, match="production"):
        registry.remove("lumen@1")
    registry.remove("lumen@1", force=True)
    assert registry.list("lumen") == [] and not where.exists()


def test_corrupt_file_is_named(registry, tiny_adapters):
    rec, _ = registry.register(tiny_adapters[0], "lumen")
    target = registry.path(rec, verify=False) / "adapter_model.safetensors"
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checksum mismatch in adapter_model.safetensors"):
        registry.path("lumen")


def test_validation_reports_every_problem(registry, tiny_adapters, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_adapters[0], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg.update(peft_type="IA3", r=16)
    cfg.pop("base_model_name_or_path")
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterValidationError) as e:
        registry.register(bad, "x")
    msg = str(e.value)
    assert "peft_type is 'IA3'" in msg and "no base model recorded" in msg and "r=16 in the config" in msg
    assert registry.list() == []


def test_pickle_refused_unless_allowed(registry, tiny_adapters, tmp_path):
    import torch
    from safetensors.torch import load_file

    src = tmp_path / "pickled"
    shutil.copytree(tiny_adapters[0], src)
    state = load_file(src / "adapter_model.safetensors")
    (src / "adapter_model.safetensors").unlink()
    torch.save(state, src / "adapter_model.bin")
    with pytest.raises(AdapterValidationError, match="pickle"):
        registry.register(src, "p")
    rec, _ = registry.register(src, "p", convert_pickle=pickle_to_safetensors)
    assert (registry.path(rec) / "adapter_model.safetensors").exists()
    assert not (registry.path(rec) / "adapter_model.bin").exists()
    loaded = load_file(registry.path(rec) / "adapter_model.safetensors")
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_missing_dir_is_clear(registry, tmp_path):
    with pytest.raises(AdapterValidationError, match="does not exist"):
        registry.register(tmp_path / "nope", "x")


def test_export_round_trip(registry, tiny_adapters, tmp_path):
    registry.register(tiny_adapters[0], "lumen")
    out = registry.export("lumen@1", tmp_path / "out")
    for f in ("adapter_config.json", "adapter_model.safetensors", "adapterhub.json"):
        assert (out / f).exists()
    assert (out / "adapter_model.safetensors").read_bytes() == (tiny_adapters[0] / "adapter_model.safetensors").read_bytes()


_WORKER = """
import sys
from pathlib import Path
from adapterhub.registry import Registry
from adapterhub.settings import Settings
rec, created = Registry.open(Settings()).register(Path(sys.argv[1]), "lumen")
print(rec.version, created)
"""


def _variant(src: Path, dst: Path, i: int) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg["revision"] = f"variant-{i}"  # distinct content → distinct hash
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_concurrent_processes_get_consecutive_versions(tiny_adapters, tmp_path, _isolated_home):
    srcs = [_variant(tiny_adapters[0], tmp_path / f"v{i}", i) for i in range(8)]
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(s)], stdout=subprocess.PIPE, text=True, env=env)
             for s in srcs]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(int(o[0]) for o in outs) == list(range(1, 9))
    reg = Registry.open(Settings())
    assert [r.version for r in reg.list("lumen")] == list(range(1, 9))
    for r in reg.list("lumen"):
        reg.verify(r)


_OLD_SCHEMA = """
CREATE TABLE versions (name TEXT NOT NULL, version INTEGER NOT NULL, content_hash TEXT NOT NULL, kind TEXT NOT NULL,
    base_model TEXT, rank INTEGER, size INTEGER NOT NULL, created_at REAL NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (name, version));
CREATE TABLE aliases (name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
    updated_at REAL NOT NULL, updated_by TEXT NOT NULL, PRIMARY KEY (name, alias));
CREATE TABLE alias_history (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL,
    version INTEGER, at REAL NOT NULL, by TEXT NOT NULL);
"""


def test_many_processes_opening_an_old_registry_at_once_all_upgrade_it(tiny_adapters, tmp_path, _isolated_home):
    """A registry from an older release gains its new columns once, even when 8 processes open it together."""
    import sqlite3

    root = Settings().registry_dir
    root.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(root / "registry.db")
    db.executescript(_OLD_SCHEMA)
    db.close()
    srcs = [_variant(tiny_adapters[0], tmp_path / f"v{i}", i) for i in range(8)]
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(s)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for s in srcs]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in results if err]
    reg = Registry.open(Settings())
    assert [r.version for r in reg.list("lumen")] == list(range(1, 9))
    reg.set_split("lumen", "canary", {1: 50, 2: 50})
    assert reg.resolve("lumen@canary").version in (1, 2)


def test_stores_switching_an_old_registry_to_wal_at_the_same_instant_all_open(tmp_path):
    """Two connections leaving the rollback journal at once: SQLite fails one at once ("database is locked",
    no busy wait); every opener must still get a working store. 8 threads per round, 100 rounds."""
    import sqlite3
    import threading

    from adapterhub.registry.local import LocalStore

    failures = []
    for n in range(100):
        root = tmp_path / f"r{n}"
        root.mkdir()
        db = sqlite3.connect(root / "registry.db")
        db.executescript(_OLD_SCHEMA)
        db.close()
        start = threading.Barrier(8)

        def open_store(root=root, start=start, n=n):
            start.wait()
            try:
                LocalStore(root).close()
            except Exception as e:  # noqa: BLE001 - any error, not only SQLite's: a thread's own would be lost
                failures.append(f"round {n}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=open_store) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check = sqlite3.connect(root / "registry.db")
        mode = check.execute("PRAGMA journal_mode").fetchone()[0]
        check.close()
        assert mode == "wal", mode
    assert failures == []


_SLOW_WORKER = """
import sys, time
from pathlib import Path
from adapterhub.registry import Registry, local
from adapterhub.settings import Settings
orig = local.os.rename
def slow_rename(a, b):
    orig(a, b)
    print("renamed", flush=True)
    time.sleep(60)  # killed here: files in place, DB row not committed
local.os.rename = slow_rename
Registry.open(Settings()).register(Path(sys.argv[1]), "lumen")
"""


def test_kill_9_during_register_leaves_nothing_partial(tiny_adapters, tmp_path, _isolated_home):
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    p = subprocess.Popen([sys.executable, "-c", _SLOW_WORKER, str(tiny_adapters[0])], stdout=subprocess.PIPE,
                         text=True, env=env)
    assert p.stdout.readline().strip() == "renamed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    versions_dir = _isolated_home / "registry" / "versions" / "lumen"
    assert (versions_dir / "1").exists()  # the half-done rename is on disk…
    reg = Registry.open(Settings())  # …and the next open cleans it
    assert reg.list() == [] and not (versions_dir / "1").exists()
    assert not any((_isolated_home / "registry" / ".staging").iterdir())
    rec, created = reg.register(tiny_adapters[0], "lumen")
    assert rec.version == 1 and created
    reg.verify(rec)


def test_cli_registry_commands(tiny_adapters, _isolated_home):
    env = {**os.environ, "PYTHONPATH": pythonpath()}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "adapterhub.cli.main", *args], capture_output=True,
                              text=True, env=env)

    out = cli("import", str(tiny_adapters[0]), "--name", "lumen")
    assert out.returncode == 0 and "registered lumen@1" in out.stdout
    assert cli("import", str(tiny_adapters[1]), "--name", "lumen").returncode == 0
    assert "lumen@production -> lumen@1" in cli("tag", "lumen@1", "production").stdout
    listing = cli("list").stdout
    assert "lumen" in listing and "production" in listing
    shown = json.loads(cli("show", "lumen@production", "--json").stdout)
    assert shown["version"] == 1 and shown["aliases"] == ["production"]
    rm = cli("rm", "lumen@1")
    assert rm.returncode == 2 and "production" in rm.stderr and rm.stderr.count("\n") == 1
    assert cli("verify").returncode == 0
    target = Registry.open(Settings()).path("lumen@2", verify=False) / "adapter_model.safetensors"
    os.chmod(target, 0o644)
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    verify = cli("verify")
    assert verify.returncode == 3, verify  # scripts and CI must notice a corrupt version
    assert "ok   lumen@1" in verify.stdout and "BAD  lumen@2: checksum mismatch" in verify.stdout
    assert cli("verify", "lumen@1").returncode == 0 and cli("verify", "lumen@2").returncode == 3
    bad = cli("import", "/nonexistent", "--name", "x")
    assert bad.returncode == 2 and bad.stderr.startswith("error: adapter at /nonexistent")
    assert cli("show", "../etc").returncode == 2
