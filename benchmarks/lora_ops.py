"""What the batched LoRA math costs on a CPU: one decode step's cost per linear of the demo model's layer
(8 rows, each on a different r=16 adapter), in one run, against the base linear. Operands stay hot in
cache, and a whole decode step also runs attention, norms, the output head and sampling, so the last
row (base / (base + LoRA) over the linears alone) is a floor for the served ratio, not the ratio itself:

* base: the linear itself in the engine's dtype (bf16 on a CPU with bf16 instructions, else fp32; the baseline);
* bmm fp32: the hf engine's LoRA (gathered per-row A/B in fp32, two bmm, added in place);
* bmm bf16: the same with bf16 stacks (half the bytes; emulated, slow, on a CPU without bf16 instructions);
* all-slots mm: one plain matmul over every slot's A, a mask, one matmul over every B ("A once for all rows");
* mul-sum: A applied by broadcasting instead of bmm;
* fused kernel: the engine's compiled op (``cpu_kernel``): the same sum in one vectorized loop, each row's
  adapter read straight from the slot stacks.

A second table, ``decode_step``, is what a user sees: one decode step of the demo model (the engine's own
prefill and step functions, its default dtype), 8 rows on 8 different r=8 all-linear adapters with the bmm
path and with the fused kernel, against the same 8 rows on the base model, interleaved (median of 7 steps,
median over 5 rounds after one warm-up round), ms; and the prefill of those 8 prompts (median over the rounds).

Run: ``python -m benchmarks.lora_ops``. Median of 200 calls after 10 warm-up calls, microseconds.
"""

from __future__ import annotations

import time

import torch

from adapterhub.precision import torch_dtype
from adapterhub.serving.engines.hf import cpu_kernel
from benchmarks.common import median_time, report, scratch_dir

SHAPES = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "o_proj": (576, 576),
          "gate_proj": (576, 1536), "up_proj": (576, 1536), "down_proj": (1536, 576)}


def _us(fn) -> float:
    return median_time(fn, 200, warmup=10) * 1e6


def _costs(i: int, o: int, rows: int, r: int, dtype: torch.dtype) -> dict[str, float]:
    x = torch.randn(rows, 1, i, dtype=dtype)
    y = torch.randn(rows, 1, o, dtype=dtype)
    w = torch.randn(o, i, dtype=dtype)
    a, b = torch.randn(rows, i, r), torch.randn(rows, r, o)
    ab, bb = a.bfloat16(), b.bfloat16()
    a_all, b_all = torch.randn(i, rows * r), torch.randn(rows * r, o)
    mask = torch.block_diag(*[torch.ones(1, r)] * rows)
    fused = cpu_kernel.apply
    # The kernel reads the layer's slot stacks directly (slot 0 the base, rows on slots 1..rows).
    a_st, b_st = torch.randn(rows + 1, r, i), torch.randn(rows + 1, r, o)
    slots, ranks = torch.arange(1, rows + 1), torch.full((rows + 1,), r, dtype=torch.int32)
    out = {
        "base": _us(lambda: torch.nn.functional.linear(x, w)),
        "bmm fp32": _us(lambda: y.add_(torch.bmm(torch.bmm(x.float(), a), b))),
        "bmm bf16": _us(lambda: y.add_(torch.bmm(torch.bmm(x.to(ab.dtype), ab), bb))),
        "all-slots mm": _us(lambda: y.view(rows, o).add_((x.view(rows, i).float() @ a_all).mul_(mask) @ b_all)),
        "mul-sum": _us(lambda: y.add_((x.view(rows, i, 1).float() * a).sum(1).view(rows, 1, r) @ b)),
    }
    if fused is not None:
        out["fused kernel"] = _us(lambda: fused(y, x, a_st, b_st, slots, ranks))
    return out


def decode_step(rows: int = 8, rank: int = 8, rounds: int = 6) -> list[dict[str, object]]:
    """Decode-step time of the demo model: base rows vs rows on distinct adapters, bmm path vs fused kernel."""
    import statistics

    from adapterhub.loading.bases import pull_demo
    from adapterhub.serving.engines.hf import HFEngine
    from adapterhub.serving.engines.hf import batch as B
    from adapterhub.settings import Settings
    from benchmarks.load import make_adapters
    from benchmarks.serving import PROMPTS

    tmp = scratch_dir("bench-lora-ops-")
    base = pull_demo(Settings())
    engine = HFEngine(base.path, model_id="demo", fingerprint=base.fingerprint, max_lora_rank=rank)
    for n, path in enumerate(make_adapters(base.path, tmp, rows, rank)):
        engine.load_adapter(f"a{n}", path)
    prompts = [engine.encode_chat([{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}], None)
               for n in range(rows)]
    fused = cpu_kernel.apply

    def step_ms(slots: list[int], kernel) -> tuple[float, float]:
        cpu_kernel.apply = kernel
        try:
            t0 = time.perf_counter()
            batch, _ = B.prefill(engine.model, engine.slots, list(range(rows)), prompts, slots, engine.pad_id,
                                 engine.device)
            prefill = time.perf_counter() - t0
            batch.next_ids = torch.zeros(rows, dtype=torch.long)
            times = []
            for _ in range(8):
                t0 = time.perf_counter()
                B.decode_step(engine.model, engine.slots, batch, engine.device)
                times.append(time.perf_counter() - t0)
        finally:
            cpu_kernel.apply = fused
            engine.slots.ctx.indices = None
            engine.slots.release_gathered()
        return statistics.median(times[1:]) * 1e3, prefill * 1e3

    adapters = [engine.slots.slot_of(f"a{n}") for n in range(rows)]
    setups = {"base only": ([0] * rows, None), "8 adapters, bmm": (adapters, None)}
    if fused is not None:
        setups["8 adapters, fused kernel"] = (adapters, fused)
    times: dict[str, list[float]] = {k: [] for k in setups}
    prefills: dict[str, list[float]] = {k: [] for k in setups}
    with torch.inference_mode():
        for n in range(rounds):
            for name, (slots, kernel) in setups.items():
                ms, pre = step_ms(slots, kernel)
                if n:  # the first round warms up
                    times[name].append(ms)
                    prefills[name].append(pre)
    base_ms, base_pre = statistics.median(times["base only"]), statistics.median(prefills["base only"])
    return [{"set-up": name, "step_ms": round(statistics.median(v), 1),
             "base_step_vs_this": round(base_ms / statistics.median(v), 3),
             "prefill_ms": round(statistics.median(prefills[name]), 1),
             "base_prefill_vs_this": round(base_pre / statistics.median(prefills[name]), 3)}
            for name, v in times.items()]


def main() -> None:
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    if not cpu_kernel.prepare(wait=True):
        print(f"the fused kernel is not available ({cpu_kernel.state}): its column is left out")
    rows, r = 8, 16
    # The engine's activations: bf16 where the CPU computes it natively, else fp32 (bf16 is emulated there)
    dtype = torch_dtype("bf16", cuda=False)
    totals: dict[str, float] = {}
    out = []
    for name, (i, o) in SHAPES.items():
        cost = _costs(i, o, rows, r, dtype)
        out.append({"linear": f"{name} {i}->{o}", **{k: round(v, 1) for k, v in cost.items()}})
        for k, v in cost.items():
            totals[k] = totals.get(k, 0.0) + v
    out.append({"linear": "one layer (sum)", **{k: round(v, 1) for k, v in totals.items()}})
    base = totals["base"]
    out.append({"linear": "mixed / base-only bound", "base": 1.0,
                **{k: round(base / (base + v), 3) for k, v in totals.items() if k != "base"}})
    report("lora_ops", out, ["linear", *totals],
           extra={"batch_rows": rows, "rank": r, "activations": str(dtype), "decode_step": decode_step()})


if __name__ == "__main__":
    main()
