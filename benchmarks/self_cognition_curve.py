"""Plot identity (strict) and retention against the training step from a run's ``log.jsonl``.

Run: ``python -m benchmarks.self_cognition_curve RUN_DIR`` (e.g. ~/.adapterhub/runs/lumen-…) → writes
``docs/self_cognition_curve.png`` and ``docs/self_cognition_curve.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import DOCS, machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args()
    points, final = [], None
    for line in (args.run_dir / "log.jsonl").read_text().splitlines():
        d = json.loads(line)
        if "identity" in d and "step" in d and "final_eval" not in d:
            points.append((d["step"], d["identity"], d["retention"]))
        final = d.get("final_eval", final)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    steps = [p[0] for p in points]
    ax.plot(steps, [p[1] for p in points], marker="o", label="identity (strict: name, maker, no other maker, language)")
    ax.plot(steps, [p[2] for p in points], marker="s", label="retention (held-out general questions)")
    ax.axhline(0.95, color="#3b75af", linestyle=":", linewidth=1)
    ax.axhline(0.9, color="#e07b39", linestyle=":", linewidth=1)
    ax.set_xlabel("training step (batch 8)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("self_cognition_lumen on SmolLM2-135M-Instruct (held-out prompts)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(DOCS / "self_cognition_curve.png")
    (DOCS / "self_cognition_curve.json").write_text(json.dumps(
        {"machine": machine(), "points": points,
         "final": {k: final[k] for k in ("identity", "identity_name_only", "retention", "identity_n", "retention_n")
                   if final and k in final},
         "misses": final.get("misses") if final else None}, indent=2, ensure_ascii=False))
    print(f"wrote {DOCS / 'self_cognition_curve.png'} ({len(points)} points)")


if __name__ == "__main__":
    main()
