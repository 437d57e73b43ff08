"""What the batched LoRA math costs on a CPU: one decode step's cost per linear of the demo model's layer
(8 rows, each on a different r=16 adapter), in one run, against the base linear. Operands stay hot in
cache, and a whole decode step also runs attention, norms, the output head and sampling, so the last
row (base / (base + LoRA) over the linears alone) is a floor for the served ratio, not the ratio itself:

* base: the bf16 linear itself (the baseline);
* bmm fp32: the hf engine's LoRA (gathered per-row A/B in fp32, two bmm, added in place);
* bmm bf16: the same with bf16 stacks (half the bytes);
* all-slots mm: one plain matmul over every slot's A, a mask, one matmul over every B ("A once for all rows");
* mul-sum: A applied by broadcasting instead of bmm.

Run: ``python -m benchmarks.lora_ops``. Median of 200 calls after 10 warm-up calls, microseconds.
"""

from __future__ import annotations

import torch

from benchmarks.common import median_time, report

SHAPES = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "o_proj": (576, 576),
          "gate_proj": (576, 1536), "up_proj": (576, 1536), "down_proj": (1536, 576)}


def _us(fn) -> float:
    return median_time(fn, 200, warmup=10) * 1e6


def _costs(i: int, o: int, rows: int, r: int) -> dict[str, float]:
    x = torch.randn(rows, 1, i, dtype=torch.bfloat16)
    y = torch.randn(rows, 1, o, dtype=torch.bfloat16)
    w = torch.randn(o, i, dtype=torch.bfloat16)
    a, b = torch.randn(rows, i, r), torch.randn(rows, r, o)
    ab, bb = a.bfloat16(), b.bfloat16()
    a_all, b_all = torch.randn(i, rows * r), torch.randn(rows * r, o)
    mask = torch.block_diag(*[torch.ones(1, r)] * rows)
    return {
        "base": _us(lambda: torch.nn.functional.linear(x, w)),
        "bmm fp32": _us(lambda: y.add_(torch.bmm(torch.bmm(x.float(), a), b))),
        "bmm bf16": _us(lambda: y.add_(torch.bmm(torch.bmm(x, ab), bb))),
        "all-slots mm": _us(lambda: y.view(rows, o).add_((x.view(rows, i).float() @ a_all).mul_(mask) @ b_all)),
        "mul-sum": _us(lambda: y.add_((x.view(rows, i, 1).float() * a).sum(1).view(rows, 1, r) @ b)),
    }


def main() -> None:
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    rows, r = 8, 16
    totals: dict[str, float] = {}
    out = []
    for name, (i, o) in SHAPES.items():
        cost = _costs(i, o, rows, r)
        out.append({"linear": f"{name} {i}->{o}", **{k: round(v, 1) for k, v in cost.items()}})
        for k, v in cost.items():
            totals[k] = totals.get(k, 0.0) + v
    out.append({"linear": "one layer (sum)", **{k: round(v, 1) for k, v in totals.items()}})
    base = totals["base"]
    out.append({"linear": "mixed / base-only bound", "base": 1.0,
                **{k: round(base / (base + v), 3) for k, v in totals.items() if k != "base"}})
    report("lora_ops", out, ["linear", *totals], extra={"batch_rows": rows, "rank": r})


if __name__ == "__main__":
    main()
