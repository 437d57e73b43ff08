"""The registry shared by many machines: PostgreSQL metadata + S3 objects + each machine's cache.

Real servers on 127.0.0.1 (PostgreSQL from Debian's binaries, moto's S3 server over HTTP); "machines"
are processes with their own home directory (hence their own cache) sharing the two servers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterhub.errors import IntegrityError
from adapterhub.registry import Registry
from adapterhub.registry.remote import RemoteStore
from adapterhub.settings import Settings
from tests.builders import pythonpath


def _variant(src: Path, dst: Path, tag: str) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg["revision"] = tag  # distinct content -> distinct hash
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": pythonpath(), "ADAPTERHUB_HOME": str(home)}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adapterhub.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_settings_select_the_shared_registry_and_versions_come_from_the_object_store(
        shared_registry, tiny_adapters, tmp_path, s3_server):
    reg = Registry.open(Settings())
    assert isinstance(reg.store, RemoteStore)
    rec, created = reg.register(tiny_adapters[0], "lumen", aliases=["production"])
    assert created and rec.ref == "lumen@1"
    local = reg.path("lumen@production")  # verified, from this machine's cache
    assert str(local).startswith(str(Settings().versions_cache_dir))
    assert (local / "adapter_model.safetensors").read_bytes() == (tiny_adapters[0] / "adapter_model.safetensors").read_bytes()
    # Another machine (its own home, so an empty cache) sees the version and fetches it.
    other = Registry.open(Settings(home=tmp_path / "machine-b"))
    assert [r.ref for r in other.list()] == ["lumen@1"] and other.resolve("lumen@production").version == 1
    other.verify("lumen@1")
    # A later open is a cache hit: it works even with the objects gone from the store.
    bucket = shared_registry[1].removeprefix("s3://").split("/")[0]
    s3 = s3_server.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == len(reg.manifest("lumen@1").files)  # one object per file, content-addressed
    for k in keys:
        s3.delete_object(Bucket=bucket, Key=k)
    assert reg.path("lumen@1") == local
    third = Registry.open(Settings(home=tmp_path / "machine-c"))  # a cold machine cannot get it now
    with pytest.raises(Exception, match="object store .*download .*failed"):
        third.path("lumen@1")


def test_a_corrupted_object_is_refused_and_never_cached(shared_registry, tiny_adapters, tmp_path, s3_server):
    reg = Registry.open(Settings())
    rec, _ = reg.register(tiny_adapters[1], "lumen")
    sha = reg.manifest(rec).files["adapter_model.safetensors"].sha256
    bucket, prefix = shared_registry[1].removeprefix("s3://").split("/", 1)
    key = f"{prefix}/objects/{sha[:2]}/{sha}"
    s3 = s3_server.client()
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-1] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    cold = Registry.open(Settings(home=tmp_path / "machine-b"))
    with pytest.raises(IntegrityError, match="lumen@1: checksum mismatch in adapter_model.safetensors"):
        cold.path("lumen@1")
    cache = Settings(home=tmp_path / "machine-b").versions_cache_dir
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == []
    out = _cli("verify", env={**_env(tmp_path / "machine-b")})
    assert out.returncode == 3 and "BAD  lumen@1: adapter_model.safetensors is missing or corrupt in the object store" in out.stdout


_WORKER = """
import sys
from pathlib import Path
from adapterhub.registry import Registry
from adapterhub.settings import Settings
reg = Registry.open(Settings())
for src in sys.argv[1:]:
    rec, created = reg.register(Path(src), "lumen")
    print(rec.version, flush=True)
"""


def test_two_machines_registering_at_once_get_versions_1_to_16(shared_registry, tiny_adapters, tmp_path):
    procs = []
    for m in ("a", "b"):
        srcs = [str(_variant(tiny_adapters[0], tmp_path / f"{m}{i}", f"{m}{i}")) for i in range(8)]
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, *srcs], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=_env(tmp_path / f"home-{m}")))
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    got = sorted(int(v) for out, _ in outs for v in out.split())
    assert got == list(range(1, 17))
    reg = Registry.open(Settings())
    assert [r.version for r in reg.list("lumen")] == list(range(1, 17))
    for r in reg.list("lumen"):
        reg.verify(r)


_KILLED_WORKER = """
import sys
from pathlib import Path
from adapterhub.registry import Registry
from adapterhub.settings import Settings
reg = Registry.open(Settings())
print("ready", flush=True)
for src in sys.argv[1:]:
    reg.register(Path(src), "lumen")
"""


def test_kill_9_at_random_points_never_shows_a_half_version_and_gc_removes_orphans(
        shared_registry, tiny_adapters, tmp_path, s3_server):
    rnd = random.Random(7)
    reg = Registry.open(Settings(home=tmp_path / "reader"))
    for attempt in range(20):
        srcs = [str(_variant(tiny_adapters[attempt % 4], tmp_path / f"k{attempt}-{j}", f"k{attempt}-{j}"))
                for j in range(3)]
        p = subprocess.Popen([sys.executable, "-c", _KILLED_WORKER, *srcs], stdout=subprocess.PIPE,
                             text=True, env=_env(tmp_path / "writer"))
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.4))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        # Whatever became visible is complete: every listed version opens and verifies on a cold machine.
        versions = [r.version for r in reg.list("lumen")]
        assert versions == list(range(1, len(versions) + 1))
        for r in reg.list("lumen"):
            Registry.open(Settings(home=tmp_path / f"cold-{attempt}")).verify(r)
    bucket, prefix = shared_registry[1].removeprefix("s3://").split("/", 1)
    referenced = {e.sha256 for r in reg.list() for e in reg.manifest(r).files.values()}
    s3 = s3_server.client()

    def objects() -> set[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/objects/")
        return {o["Key"].rsplit("/", 1)[-1] for page in pages for o in page.get("Contents", [])}

    # A grace period protects uploads that may still be on their way to a commit…
    out = _cli("registry", "gc", env=_env(tmp_path / "writer"))
    assert out.returncode == 0 and "orphan objects removed: 0" in out.stdout, out
    assert len(reg.list()) < 60 and objects() >= referenced  # writes were cut short; nothing referenced is lost
    # …and with none, every object no version references goes; the referenced ones stay.
    out = _cli("registry", "gc", "--grace", "0", env=_env(tmp_path / "writer"))
    assert out.returncode == 0, out.stderr
    assert objects() == referenced
    for r in reg.list():
        Registry.open(Settings(home=tmp_path / "after-gc")).verify(r)


def test_cache_is_bounded_and_evicts_the_least_recently_opened(shared_registry, tiny_adapters, tmp_path):
    reg = Registry.open(Settings())
    for i, src in enumerate(tiny_adapters[:3]):
        reg.register(src, f"ad{i}")
    total = sum(p.stat().st_size for i in range(3) for p in reg.path(f"ad{i}@1").rglob("*"))
    small = RemoteStore(*shared_registry, tmp_path / "small-cache", cache_max_bytes=total - 1)  # 2 of 3 fit
    r0, r1, r2 = (small.get(f"ad{i}", 1) for i in range(3))
    d0, d1 = small.open(r0), small.open(r1)
    time.sleep(0.05)
    small.open(r0)  # ad0 is now more recent than ad1
    time.sleep(0.05)
    d2 = small.open(r2)  # over the bound: the least recently opened (ad1) goes
    assert d0.exists() and d2.exists() and not d1.exists()
    assert small.open(r1).exists()  # fetched again on demand


def test_migrate_a_local_registry_keeps_numbers_aliases_gates_and_is_verified(
        pg_server, s3_server, tiny_adapters, tmp_path, monkeypatch, _isolated_home):
    local = Registry.open(Settings())
    for src in tiny_adapters[:3]:
        local.register(src, "lumen", metrics={"identity": 0.9})
    local.remove("lumen@2")
    local.set_alias("lumen@1", "production")
    local.set_split("lumen", "canary", {1: 90, 3: 10})
    local.set_gate("lumen", "production", ["identity>=0.8"])
    db_url, bucket = pg_server.new_database(), s3_server.new_bucket()
    env = {**_env(_isolated_home), **s3_server.env}
    out = _cli("registry", "migrate", "--to", db_url, "--artifacts", f"s3://{bucket}/r", env=env)
    assert out.returncode == 0, out.stderr
    assert "2 copied, 0 already there, 2 aliases, 1 gates" in out.stdout
    assert "copied  lumen@3" in out.stdout and "verified" in out.stdout
    again = _cli("registry", "migrate", "--to", db_url, "--artifacts", f"s3://{bucket}/r", env=env)
    assert again.returncode == 0 and "0 copied, 2 already there" in again.stdout
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    shared = Registry.open(Settings(home=tmp_path / "machine-b", registry_url=db_url,
                                    artifacts_url=f"s3://{bucket}/r"))
    assert [(r.ref, r.content_hash) for r in shared.list()] == [(r.ref, r.content_hash) for r in local.list()]
    assert shared.resolve("lumen@production").version == 1 and shared.alias_split("lumen", "canary") == {1: 90, 3: 10}
    assert shared.gate("lumen", "production") == ["identity>=0.8"]
    assert shared.resolve("lumen@3").metrics == {"identity": 0.9}
    assert shared.manifest("lumen@3").version == 3
    # The next version continues the numbering.
    rec, _ = shared.register(tiny_adapters[3], "lumen")
    assert rec.version == 4


def test_unreachable_or_misconfigured_shared_registry_is_one_line(tmp_path, _isolated_home, monkeypatch):
    from tests.services import free_port

    env = {**_env(_isolated_home), "ADAPTERHUB_REGISTRY_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
           "ADAPTERHUB_ARTIFACTS_URL": "s3://bucket/p"}
    pytest.importorskip("psycopg")
    out = _cli("list", env=env)
    assert out.returncode == 5 and out.stderr.startswith("error: registry database 127.0.0.1:") \
        and out.stderr.count("\n") == 1, out.stderr
    out = _cli("list", env={**env, "ADAPTERHUB_ARTIFACTS_URL": ""})
    assert out.returncode == 2 and "ADAPTERHUB_ARTIFACTS_URL" in out.stderr and out.stderr.count("\n") == 1
    out = _cli("list", env={**env, "ADAPTERHUB_REGISTRY_URL": "mysql://x/y"})
    assert out.returncode == 2 and "postgresql://" in out.stderr


_OPENER = """
import sys
from adapterhub.registry import Registry
from adapterhub.settings import Settings
reg = Registry.open(Settings())
print(reg.path(sys.argv[1]))
"""


def test_processes_on_one_host_share_one_cache_entry(shared_registry, tiny_adapters, tmp_path):
    Registry.open(Settings(home=tmp_path / "writer")).register(tiny_adapters[1], "lumen")
    host = tmp_path / "host"  # one home: the processes of one machine share its cache
    procs = [subprocess.Popen([sys.executable, "-c", _OPENER, "lumen@1"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(host)) for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e for _, e in outs]
    paths = {o.strip() for o, _ in outs}
    assert len(paths) == 1  # every process got the same, verified entry
    cache = Settings(home=host).versions_cache_dir
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [Path(paths.pop()).name]


def test_stored_responses_are_shared_between_machines_and_expire(shared_registry, tmp_path):
    """/v1/responses keeps stored responses in the registry's PostgreSQL: what one replica stores another
    reads and deletes; an expired record is gone for both."""
    one = RemoteStore(*shared_registry, tmp_path / "cache-1")
    two = RemoteStore(*shared_registry, tmp_path / "cache-2")
    record = {"response": {"id": "resp_1", "output": [{"type": "message"}]}, "messages": [], "pinned": "ad@2"}
    one.put_response("resp_1", record, expires_at=time.time() + 60)
    assert two.get_response("resp_1") == record
    one.put_response("resp_old", record, expires_at=time.time() - 1)
    assert two.get_response("resp_old") is None and two.delete_response("resp_old") is False
    assert two.delete_response("resp_1") is True
    assert one.get_response("resp_1") is None and one.delete_response("resp_1") is False


def test_the_first_call_after_a_database_restart_succeeds(shared_registry, pg_server, tiny_adapters, tmp_path):
    """The connection the store held died with the server: after idling it is checked and replaced, so the
    first lookup after a restart answers instead of failing with 'terminating connection'."""
    store = RemoteStore(*shared_registry, tmp_path / "cache")
    reg = Registry(store)
    reg.register(tiny_adapters[0], "ad")
    assert store.get("ad", 1) is not None
    pg_server.restart()
    time.sleep(5.5)  # the store pings a connection idle for more than 5 s before using it
    assert store.get("ad", 1) is not None
