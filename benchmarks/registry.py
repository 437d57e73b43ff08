"""Registry at 10,000 versions: list and resolve, against a file-only registry scanning manifests.

Run: ``python -m benchmarks.registry [--versions 10000]``. Goals (issue): list ≤ 200 ms, resolve ≤ 5 ms.
The first versions are registered through ``Registry.register`` (validation, hashing, fsync, rename)
to time a real write; the rest are added as rows + manifest files directly, which is what list and
resolve read.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import time
from pathlib import Path

from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from benchmarks.common import report, scratch_dir, timeit


def make_adapter(d: Path, seed: int) -> Path:
    import struct

    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "base_model_name_or_path": "base"}))
    header = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
              {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
              "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
              {"dtype": "F32", "shape": [8, 4], "data_offsets": [128, 256]}}
    raw = json.dumps(header).encode()
    rnd = random.Random(seed)
    (d / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + rnd.randbytes(256))
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--names", type=int, default=100)
    args = ap.parse_args()
    root = scratch_dir("bench-registry-")
    reg = Registry(LocalStore(root / "registry"))
    src = root / "src"

    n_real = 50
    t0 = time.perf_counter()
    for i in range(n_real):
        reg.register(make_adapter(src / str(i), i), f"adapter-{i % args.names:03d}")
    register_ms = (time.perf_counter() - t0) / n_real * 1000

    # Fill up to N versions: rows in one transaction + a manifest file per version dir.
    db = sqlite3.connect(root / "registry" / "registry.db")
    next_v = {f"adapter-{k:03d}": 1 + len(reg.list(f"adapter-{k:03d}")) for k in range(args.names)}
    rows = []
    for i in range(n_real, args.versions):
        name = f"adapter-{i % args.names:03d}"
        v = next_v[name]
        next_v[name] += 1
        h = f"{random.getrandbits(256):064x}"
        d = root / "registry" / "versions" / name / str(v)
        d.mkdir(parents=True, exist_ok=True)
        (d / "adapterhub.json").write_text(json.dumps({"name": name, "version": v, "content_hash": h,
                                                       "kind": "adapter", "base_model": {"id": "base"}}))
        rows.append((name, v, h, "adapter", "base", 4, 1024, time.time(), "{}"))
    with db:
        db.executemany("INSERT INTO versions (name, version, content_hash, kind, base_model, rank, size, created_at, "
                       "metrics) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        db.execute("INSERT INTO aliases (name, alias, version, updated_at, updated_by) "
                   "VALUES ('adapter-007','production',42,0,'bench')")
    db.close()
    reg = Registry(LocalStore(root / "registry"))
    assert len(reg.list()) == args.versions
    target = reg.list("adapter-007")[41]

    def scan_all() -> list[dict]:
        return [json.loads(p.read_text()) for p in (root / "registry" / "versions").glob("*/*/adapterhub.json")]

    def scan_resolve_latest() -> int:
        return max(int(p.name) for p in (root / "registry" / "versions" / "adapter-007").iterdir())

    def scan_resolve_hash() -> dict:
        prefix = target.content_hash[:10]
        for p in (root / "registry" / "versions" / "adapter-007").glob("*/adapterhub.json"):
            m = json.loads(p.read_text())
            if m["content_hash"].startswith(prefix):
                return m
        raise LookupError

    results = [
        ("list all (file scan, baseline)", timeit(scan_all, 3)),
        ("list all (adapterhub)", timeit(reg.list, 5)),
        ("resolve name (dir scan, baseline)", timeit(scan_resolve_latest, 50)),
        ("resolve name (adapterhub)", timeit(lambda: reg.resolve("adapter-007"), 200)),
        ("resolve name@42", timeit(lambda: reg.resolve("adapter-007@42"), 200)),
        ("resolve name@production", timeit(lambda: reg.resolve("adapter-007@production"), 200)),
        ("resolve name@sha256 (manifest scan, baseline)", timeit(scan_resolve_hash, 20)),
        ("resolve name@sha256:<10 hex>", timeit(lambda: reg.resolve(f"adapter-007@sha256:{target.content_hash[:10]}"), 200)),
    ]
    base = {"list": results[0][1], "resolve": results[2][1], "hash": results[6][1]}
    rows_out = []
    for label, secs in results:
        kind = "list" if label.startswith("list") else ("hash" if "sha256" in label else "resolve")
        rows_out.append({"operation": label, "ms": round(secs * 1000, 3),
                         "speedup_vs_baseline": round(base[kind] / secs, 1)})
    print(f"{args.versions} versions over {args.names} names; register (real, with fsync): {register_ms:.1f} ms/version")
    report("registry", rows_out, ["operation", "ms", "speedup_vs_baseline"], chart=("operation", "ms", "milliseconds"),
           extra={"versions": args.versions, "register_ms": round(register_ms, 1)})


if __name__ == "__main__":
    main()
