"""The shared registry (PostgreSQL + S3) at 10,000 versions, against the embedded SQLite registry in the
same run; and a cold fetch of a demo-size adapter from the object store against a warm cache hit.

Run: ``python -m benchmarks.registry_shared [--versions 10000]`` (needs Debian's PostgreSQL binaries and
``moto[server]``, as the tests do; both servers run on 127.0.0.1). The first 50 versions are registered
through ``Registry.register`` on both stores; the rest are inserted as rows, which is what list and
resolve read. The object store is moto's server, a thread of this process: a cold fetch here measures
our fetch path (download, SHA-256 check, rename into the cache) on loopback, not a real network.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import time
from pathlib import Path

from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.registry.remote import RemoteStore
from benchmarks.common import median_time, report, scratch_dir
from benchmarks.registry import make_adapter


def p50_ms(fn, n: int) -> float:
    return median_time(fn, n) * 1000


def demo_size_adapter(out: Path) -> Path:
    """A LoRA with the demo config's shape (r=16 on all linears of SmolLM2-135M), built with peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from adapterhub.loading.bases import resolve_model
    from adapterhub.settings import Settings

    path = resolve_model("smollm2-135m-instruct", Settings(), pull=False).path
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.01)
    peft_model.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "smollm2-135m-instruct"
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


def fill_rows(reg: Registry, store_kind: str, conn, versions: int, names: int, start: int) -> None:
    next_v = {f"adapter-{k:03d}": 1 + len(reg.list(f"adapter-{k:03d}")) for k in range(names)}
    rows = []
    for i in range(start, versions):
        name = f"adapter-{i % names:03d}"
        v = next_v[name]
        next_v[name] += 1
        rows.append((name, v, f"{random.getrandbits(256):064x}", "adapter", "base", 4, 1024, time.time()))
    if store_kind == "sqlite":
        with conn:
            conn.executemany("INSERT INTO versions (name, version, content_hash, kind, base_model, rank, size, "
                             "created_at) VALUES (?,?,?,?,?,?,?,?)", rows)
    else:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO versions (name, version, content_hash, kind, base_model, rank, size, "
                            "created_at, files, manifest) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,'{}'::jsonb,'')", rows)


def main() -> None:
    from tests.services import PostgresServer, S3Server, postgres_bindir

    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--names", type=int, default=100)
    args = ap.parse_args()
    bindir = postgres_bindir()
    if bindir is None:
        raise SystemExit("needs PostgreSQL's binaries: apt-get install postgresql")
    root = scratch_dir("bench-shared-")
    pg, s3 = PostgresServer(bindir), S3Server()
    import os

    os.environ.update(s3.env)
    try:
        bucket = s3.new_bucket()
        db_url = pg.new_database()
        remote = Registry(RemoteStore(db_url, f"s3://{bucket}/r", root / "cache"))
        local = Registry(LocalStore(root / "local"))
        src = root / "src"
        register_ms = {}
        for kind, reg in (("sqlite", local), ("postgres", remote)):
            t0 = time.perf_counter()
            for i in range(50):
                reg.register(make_adapter(src / str(i), i), f"adapter-{i % args.names:03d}")
            register_ms[kind] = (time.perf_counter() - t0) / 50 * 1000
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as pconn:
            fill_rows(remote, "postgres", pconn, args.versions, args.names, 50)
        sconn = sqlite3.connect(root / "local" / "registry.db")
        fill_rows(local, "sqlite", sconn, args.versions, args.names, 50)
        sconn.close()
        for reg in (local, remote):
            reg.set_alias("adapter-007@42", "production")
            assert len(reg.list()) == args.versions
        rows = []
        ops = [("list all", lambda r: r.list(), 5), ("resolve name", lambda r: r.resolve("adapter-007"), 200),
               ("resolve name@42", lambda r: r.resolve("adapter-007@42"), 200),
               ("resolve name@production", lambda r: r.resolve("adapter-007@production"), 200),
               ("resolve name@sha256:<10 hex>", lambda r: r.resolve(f"adapter-007@sha256:{prefix[id(r)]}"), 200)]
        prefix = {id(r): r.resolve("adapter-007@42").content_hash[:10] for r in (local, remote)}
        for label, fn, n in ops:
            base = p50_ms(lambda fn=fn: fn(local), n)
            pgms = p50_ms(lambda fn=fn: fn(remote), n)
            rows.append({"operation": f"{label} (p50)", "sqlite_ms": round(base, 3), "postgres_ms": round(pgms, 3),
                         "postgres_vs_sqlite": round(pgms / base, 2)})
        rows.append({"operation": "register (50 real versions, mean)", "sqlite_ms": round(register_ms["sqlite"], 1),
                     "postgres_ms": round(register_ms["postgres"], 1),
                     "postgres_vs_sqlite": round(register_ms["postgres"] / register_ms["sqlite"], 2)})

        demo = demo_size_adapter(root / "demo-adapter")
        rec, _ = remote.register(demo, "demo")
        size_mb = rec.size / 1e6
        colds = []
        for i in range(5):
            cold = RemoteStore(db_url, f"s3://{bucket}/r", root / f"cold-{i}")
            t0 = time.perf_counter()
            cold.open(rec)
            colds.append(time.perf_counter() - t0)
            cold.close()
        warm = RemoteStore(db_url, f"s3://{bucket}/r", root / "cold-0")
        warm_ms = p50_ms(lambda: warm.open(rec), 50)
        cold_ms = statistics.median(colds) * 1000
        fetch = [{"operation": f"open demo-size adapter ({size_mb:.1f} MB), cold: fetch + verify (p50 of 5)",
                  "ms": round(cold_ms, 1)},
                 {"operation": "open it again, warm cache hit (p50 of 50)", "ms": round(warm_ms, 2)},
                 {"operation": "cold / warm", "ms": round(cold_ms / warm_ms, 1)}]
        print(f"{args.versions} versions over {args.names} names")
        report("registry_shared", rows, ["operation", "sqlite_ms", "postgres_ms", "postgres_vs_sqlite"],
               extra={"versions": args.versions, "fetch": fetch, "adapter_mb": round(size_mb, 1)})
        for f in fetch:
            print(f"{f['operation']}: {f['ms']}")
    finally:
        s3.stop()
        pg.stop()


if __name__ == "__main__":
    main()
