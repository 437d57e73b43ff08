"""What adapters of different ranks cost in one batch (issue 30, item 3), on the demo model in process.

A server started with ``--max-lora-rank 64`` decodes 8 concurrent requests (``--tokens`` each, ignore_eos,
greedy) in these mixes: base only (the baseline), all rank 8, ranks 8×5/16×2/64, seven base rows and one
of rank 64, all rank 64. Each mix runs with the engine's rank-aware LoRA (a layer computes at the largest
rank among its rows, or in groups of neighbouring ranks where ``lora.plan_rank_groups``' cost model says
that is cheaper) and with the earlier
behaviour of padding every row to the server's rank 64 (``lora.RANK_AWARE = False``), alternating, best
of ``--repeat``. On a CPU with the compiled LoRA kernel (``cpu_kernel``: each row at its own rank, read from
the slot stacks; what the engine serves there) each mix also runs through it, and the two bmm columns are
then the fallback path's (a CPU without a compiler; on CUDA they are what serves). Adapters: random LoRA on
all linear layers. Decode tokens/s over the whole batch.

Run: ``python -m benchmarks.ranks [--tokens 32] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from adapterhub.models import DEMO_MODEL
from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
from adapterhub.serving.engines.hf import HFEngine, cpu_kernel, lora
from adapterhub.settings import Settings
from benchmarks.common import bench_base, report, run_name, scratch_dir
from benchmarks.load import make_adapters
from benchmarks.serving import PROMPTS

MIXES = {
    "base only": [None] * 8,
    "all rank 8": [8] * 8,
    "ranks 8×5, 16×2, 64": [8] * 5 + [16, 16, 64],
    "base ×7, rank 64": [None] * 7 + [64],
    "all rank 64": [64] * 8,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rows", type=int, default=8, help="batch rows: each mix repeated to this many (a multiple of 8)")
    ap.add_argument("--random-weights", metavar="DIR", type=Path,
                    help="a config + tokenizer dir: that architecture with random weights (a machine without the "
                         "demo model)")
    args = ap.parse_args()
    if args.rows < 8 or args.rows % 8:
        ap.error(f"--rows {args.rows}: a multiple of 8 (each 8-row mix is repeated)")

    tmp = scratch_dir("bench-ranks-")
    base = bench_base(args.random_weights, Settings(), tmp)
    times = args.rows // 8
    paths = {r: make_adapters(base.path, tmp / f"r{r}", 8 if r == 8 else 2, r) for r in (8, 16, 64)}
    engine = HFEngine(base.path, model_id=DEMO_MODEL, fingerprint=base.fingerprint, dtype="bf16", max_loaded=12,
                      max_lora_rank=64)
    for r, ps in paths.items():
        for i, p in enumerate(ps):
            engine.load_adapter(f"r{r}-{i}", p)
    prompts = [engine.encode_chat([{"role": "user", "content": p}], None) for p in PROMPTS] * times
    params = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)

    def keys(mix: list[int | None]) -> list[str | None]:
        used: dict[int, int] = {}
        out: list[str | None] = []
        for r in mix * times:
            if r is None:
                out.append(None)
                continue
            i = used.get(r, 0)
            used[r] = i + 1
            out.append(f"r{r}-{i % len(paths[r])}")
        return out

    async def batch(mix: list[int | None]) -> float:
        async def one(prompt: list[int], key: str | None) -> int:
            last = 0
            async for d in engine.generate(GenerationRequest(prompt, params, key)):
                last = d.completion_tokens
            return last

        t0 = time.perf_counter()
        tokens = await asyncio.gather(*(one(p, k) for p, k in zip(prompts, keys(mix))))
        return sum(tokens) / (time.perf_counter() - t0)

    engine.start()
    saved = cpu_kernel.apply
    kernel = cpu_kernel.apply if engine.device.type == "cpu" and cpu_kernel.prepare(wait=True) else None
    # (mode, rank-aware): the CPU kernel (always each row's own rank), then the bmm path aware and padded
    modes = ([("kernel", True)] if kernel is not None else []) + [("bmm", True), ("bmm", False)]
    best: dict[tuple[str, str, bool], float] = {}
    try:
        asyncio.run(batch(MIXES["all rank 8"]))  # warm-up
        for _ in range(args.repeat):
            for label, mix in MIXES.items():
                for mode, aware in modes:
                    if all(r is None for r in mix) and (mode, aware) != modes[0]:
                        continue  # base rows compute no LoRA on any path
                    cpu_kernel.apply = kernel if mode == "kernel" else None
                    lora.RANK_AWARE = aware
                    key = (label, mode, aware)
                    best[key] = max(best.get(key, 0.0), asyncio.run(batch(mix)))
    finally:
        lora.RANK_AWARE = True
        cpu_kernel.apply = saved if kernel is None else kernel
        engine.stop()
    base_tps = best[("base only", *modes[0])]
    rows = []
    for label in MIXES:
        if all(r is None for r in MIXES[label]):
            for mode, aware in modes:
                best[(label, mode, aware)] = base_tps
        fused = best.get((label, "kernel", True))
        aware = best[(label, "bmm", True)]
        padded = best[(label, "bmm", False)]
        rows.append({"mix (8 rows)": label if times == 1 else f"{label}, ×{times}",
                     "kernel_tok_s": None if fused is None else round(fused, 1),
                     "rank_aware_tok_s": round(aware, 1), "padded_to_64_tok_s": round(padded, 1),
                     "kernel_vs_base": None if fused is None else round(fused / base_tps, 3),
                     "aware_vs_base": round(aware / base_tps, 3), "padded_vs_base": round(padded / base_tps, 3),
                     "aware_vs_padded": round(aware / padded, 3)})
    report(run_name("ranks", args.random_weights), rows,
           ["mix (8 rows)", "kernel_tok_s", "rank_aware_tok_s", "padded_to_64_tok_s", "kernel_vs_base",
            "aware_vs_base", "padded_vs_base", "aware_vs_padded"],
           extra={"tokens": args.tokens, "repeat": args.repeat, "batch_rows": 8 * times, "max_lora_rank": 64, "model": DEMO_MODEL + (" (random weights)" if args.random_weights else ""),
                  "device": str(engine.device), "lora_dtype": str(engine.slots.dtype)})


if __name__ == "__main__":
    main()
