"""What a shared registry does when its own pieces go wrong (issue 32, items 6-11): corrupt objects in the
store and corrupt copies in a machine's cache, imports killed half-way, the object store down, a
connection that breaks right after a commit, a forced removal under aliases. Real PostgreSQL, moto's S3
server and a TCP proxy, started by the tests; the CLI through its entry point where a user would use it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

from adapterhub.registry import Registry
from adapterhub.registry.registry import STAGING_PREFIX
from adapterhub.registry.remote import RemoteStore
from adapterhub.settings import Settings
from tests.builders import pythonpath
from tests.services import PausableProxy


def _cli(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": pythonpath(), "ADAPTERHUB_HOME": str(home), "COLUMNS": "200", **env}
    full.pop("ADAPTERHUB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "adapterhub.cli.main", *args], capture_output=True, text=True,
                          env=full, timeout=300)


def _object(shared_registry, reg: Registry, rec, rel: str = "adapter_model.safetensors") -> tuple[str, str]:
    sha = reg.manifest(rec).files[rel].sha256
    bucket, prefix = shared_registry[1].removeprefix("s3://").split("/", 1)
    return bucket, f"{prefix}/objects/{sha[:2]}/{sha}"


def _corrupt_object(s3_server, bucket: str, key: str) -> None:
    s3 = s3_server.client()
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))


def _intact(s3_server, bucket: str, key: str) -> bool:
    import hashlib

    body = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest() == key.rsplit("/", 1)[-1]


def test_verify_checks_the_stores_objects_not_only_this_machines_cache(shared_registry, s3_server, tiny_adapters,
                                                                       tmp_path):
    reg = Registry.open(Settings(home=tmp_path / "a"))
    rec, _ = reg.register(tiny_adapters[0], "lumen", base_model={"id": "tiny"})
    reg.path(rec)  # this machine's cache is warm and good
    bucket, key = _object(shared_registry, reg, rec)
    _corrupt_object(s3_server, bucket, key)
    out = _cli("verify", home=tmp_path / "a")  # on a shared registry: the store's objects by default
    assert out.returncode == 3 and "BAD" in out.stdout and "corrupt in the object store" in out.stdout, out
    assert key in out.stdout
    local = _cli("verify", "--local", home=tmp_path / "a")
    assert local.returncode == 0 and "ok   lumen@1" in local.stdout, local


def test_a_corrupt_cache_copy_heals_and_gc_quarantines_one(shared_registry, tiny_adapters, tmp_path):
    reg = Registry.open(Settings(home=tmp_path / "a"))
    rec, _ = reg.register(tiny_adapters[0], "lumen", base_model={"id": "tiny"})
    good = (reg.path(rec) / "adapter_model.safetensors").read_bytes()

    def corrupt_cached() -> Path:
        f = reg.path(rec, verify=False) / "adapter_model.safetensors"
        os.chmod(f, 0o644)
        data = bytearray(f.read_bytes())
        data[100] ^= 0xFF
        f.write_bytes(bytes(data))
        return f

    corrupt_cached()
    # The next use (what the server does when it loads the version again) fetches a good copy.
    assert (reg.path(rec) / "adapter_model.safetensors").read_bytes() == good
    cache_root = reg.path(rec, verify=False).parent
    assert len(list(cache_root.glob(".quarantine-*"))) == 1
    corrupt_cached()
    counts = reg.gc(3600)
    assert counts["cache_entries_quarantined"] == 1 and len(list(cache_root.glob(".quarantine-*"))) == 2
    assert (reg.path(rec) / "adapter_model.safetensors").read_bytes() == good
    assert reg.gc(0)["cache_leftovers_removed"] >= 2 and not list(cache_root.glob(".quarantine-*"))


def test_gc_removes_the_staging_copy_of_a_killed_import(tiny_adapters, tmp_path):
    # An import killed (here: it exits abruptly) while the store takes its files: its copy stays in the
    # system temp directory, under its process id.
    script = f"""
import os, sys
from pathlib import Path
from adapterhub.registry import Registry
from adapterhub.settings import Settings
reg = Registry.open(Settings(home=Path({str(tmp_path / 'home')!r})))
reg.store.put = lambda *a, **k: os._exit(9)
reg.register(Path({str(tiny_adapters[0])!r}), "lumen", base_model={{"id": "tiny"}})
"""
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": pythonpath()}, timeout=120)
    assert proc.returncode == 9
    mine = [d for d in Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*")
            if (d / "adapter_config.json").exists() and not d.name.startswith(f"{STAGING_PREFIX}{os.getpid()}-")]
    assert mine, "the killed import left no staging copy to clean up"
    alive = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-"))  # a live import's: kept
    try:
        out = _cli("registry", "gc", home=tmp_path / "home")
        assert out.returncode == 0 and "staging copies removed" in out.stdout, out
        assert not any(d.exists() for d in mine) and alive.exists()
    finally:
        alive.rmdir()


def test_outages_and_bad_requirements_are_one_line_errors(shared_registry, tiny_adapters, tmp_path):
    out = _cli("import", str(tiny_adapters[0]), "--name", "lumen", "--base", "tiny", home=tmp_path,
               AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_MAX_ATTEMPTS="1")
    assert out.returncode == 5, out
    assert out.stderr.startswith("error: object store") and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "ADAPTERHUB_DEBUG" not in out.stderr
    Registry.open(Settings(home=tmp_path)).register(tiny_adapters[0], "lumen", base_model={"id": "tiny"})
    bad = _cli("promote", "lumen@1", "production", "--require", "identity>=1.2.3", home=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --require: '1.2.3' is not a number in " \
        "'identity>=1.2.3'", bad.stderr


@pytest.mark.parametrize("cut_at", [b"COMMIT", b"BEGIN"], ids=["after-commit", "before-anything"])
def test_a_move_whose_connection_breaks_is_reported_as_what_happened(shared_registry, tiny_adapters, tmp_path,
                                                                      cut_at):
    db_url, artifacts = shared_registry
    reg = Registry.open(Settings(home=tmp_path / "a"))
    reg.register(tiny_adapters[0], "lumen", base_model={"id": "tiny"}, aliases=["production"])
    reg.register(tiny_adapters[1], "lumen", base_model={"id": "tiny"})
    u = urlparse(db_url)
    proxy = PausableProxy(u.hostname, u.port)
    store = RemoteStore(db_url.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{proxy.port}"), artifacts,
                        tmp_path / "cache")
    try:
        proxied = Registry(store, actor="bob")
        proxy.drop_reply(cut_at)
        record, prev = proxied.set_alias("lumen@2", "production")
        assert (record.version, prev) == (2, 1)
        assert proxy._drop_at is None, "the connection was never cut"
    finally:
        store.close()
        proxy.close()
    moves = [(e.version, e.by) for e in reg.alias_history("lumen")]
    assert moves == [(1, reg.actor), (2, "bob")], moves  # done once: neither lost nor repeated
    assert reg.resolve("lumen@production").version == 2


def test_rm_force_leaves_no_alias_pointing_at_the_removed_version(registry, tiny_adapters):
    for a in tiny_adapters[:3]:
        registry.register(a, "lumen", base_model={"id": "tiny"})
    registry.set_split("lumen", "production", {1: 50, 2: 30, 3: 20})
    registry.set_alias("lumen@3", "staging")
    registry.remove("lumen@3", force=True)
    assert registry.alias_split("lumen", "production") == {1: 50, 2: 30}
    registry.remove("lumen@1", force=True)
    assert registry.alias_split("lumen", "production") is None
    assert registry.resolve("lumen@production").version == 2
    events = [(e.alias, e.version, e.split, e.note) for e in registry.alias_history("lumen")][-3:]
    assert events == [("production", 1, {1: 50, 2: 30}, "lumen@3 removed (rm --force)"),
                      ("staging", None, None, None),
                      ("production", 2, None, "lumen@1 removed (rm --force)")], events


def test_import_repairs_a_corrupt_object_instead_of_trusting_it(shared_registry, s3_server, tiny_adapters, tmp_path):
    reg = Registry.open(Settings(home=tmp_path / "a"))
    rec, _ = reg.register(tiny_adapters[0], "lumen", base_model={"id": "tiny"})
    bucket, key = _object(shared_registry, reg, rec)
    _corrupt_object(s3_server, bucket, key)
    again, created = reg.register(tiny_adapters[0], "lumen", base_model={"id": "tiny"})
    assert not created and again.version == 1 and _intact(s3_server, bucket, key)
    _corrupt_object(s3_server, bucket, key)
    other, created = reg.register(tiny_adapters[0], "lumen-copy", base_model={"id": "tiny"})
    assert created and _intact(s3_server, bucket, key)
    fresh = Registry.open(Settings(home=tmp_path / "b"))  # another machine, empty cache
    fresh.verify(other, remote=True)
    fresh.verify(rec, remote=True)
