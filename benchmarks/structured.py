"""Cost of structured output on the hf engine (demo model), measured in one run, alternating set-ups,
best of 3 each:

* solo: one free row vs one row under a JSON schema (ms per token: the grammar mask's per-step cost);
* batch: 8 free rows (baseline) vs 8 rows of which 4 are under the JSON schema, every row on a different
  adapter-free base request (tok/s of the whole batch).

The schema ``{"story": string of at least 1000 characters}`` keeps a constrained row writing until
``--tokens``, so both set-ups decode the same number of tokens; free rows use ``ignore_eos``.

Run: ``python -m benchmarks.structured [--tokens 64]`` (pulls the demo model if needed).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json

from adapterhub.loading.bases import pull_demo, resolve_model
from adapterhub.models import DEMO_MODEL
from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
from adapterhub.serving.structured import Constraint
from adapterhub.settings import Settings
from benchmarks.common import report
from benchmarks.serving import PROMPTS, run_engine

SCHEMA = {"type": "object", "properties": {"story": {"type": "string", "minLength": 1000}}, "required": ["story"],
          "additionalProperties": False}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    from adapterhub.serving.engines.hf import HFEngine

    settings = Settings()
    pull_demo(settings)
    m = resolve_model(DEMO_MODEL, settings)
    engine = HFEngine(m.path, model_id=DEMO_MODEL, fingerprint=m.fingerprint, max_batch_size=8)
    prompts = [engine.encode_chat([{"role": "user", "content": p + " Answer in JSON."}], None) for p in PROMPTS]
    free = SamplingParams(max_tokens=args.tokens, ignore_eos=True)
    constrained = dataclasses.replace(free, constraint=Constraint("json", json.dumps(SCHEMA), "response_format"))
    engine.check_constraint(constrained.constraint)  # type: ignore[arg-type]
    setups = {
        "1 free row": [free],
        "1 JSON-schema row": [constrained],
        "8 free rows": [free] * 8,
        "8 rows, 4 under the JSON schema": [constrained if i % 2 else free for i in range(8)],
    }
    best: dict[str, tuple[float, int]] = {}
    for _ in range(3):
        for name, params in setups.items():
            reqs = [GenerationRequest(prompts[i], p) for i, p in enumerate(params)]
            t, n = asyncio.run(run_engine(engine, reqs))
            if name not in best or n / t > best[name][1] / best[name][0]:
                best[name] = (t, n)
    engine.stop()
    rows = []
    for name, (t, n) in best.items():
        baseline = best["1 free row" if name.startswith("1 ") else "8 free rows"]
        rows.append({"workload": name, "tokens": n, "tok_per_s": round(n / t, 1),
                     "ms_per_step": round(1000 * t / n * len(setups[name]), 1),
                     "vs_free": round((n / t) / (baseline[1] / baseline[0]), 3)})
    report("structured", rows, ["workload", "tokens", "tok_per_s", "ms_per_step", "vs_free"],
           extra={"tokens": args.tokens, "schema": SCHEMA})


if __name__ == "__main__":
    main()
