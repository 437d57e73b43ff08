"""Serving under open-loop traffic: requests arrive whenever they arrive (Poisson), many adapters, streamed
through the official async ``openai`` client against the real HTTP server on the demo model.

Each set-up runs at the same arrival rate with the same seeded arrivals, prompts and answer lengths;
base-only is the baseline measured in the same run. Reported per set-up: errors (and their statuses),
TTFT and inter-token latency p50/p99, output tokens/s over the run. Adapter popularity follows Punica's
four: ``distinct`` (every request its own adapter, round robin), ``uniform``, ``zipf`` (s = 1.0) and
``identical`` (one adapter).

Answer lengths: uniform in [--min-tokens, --max-tokens] with ``ignore_eos`` (so every set-up writes the
same number of tokens); prompts: the chat prompts of ``benchmarks.serving``.

Run: ``python -m benchmarks.load [--rate 1.0] [--requests 60] [--adapters 64] [--max-loaded 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from adapterhub.loading.bases import pull_demo
from adapterhub.models import DEMO_MODEL
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.metrics import percentile as pct
from adapterhub.settings import Settings
from benchmarks.common import report
from benchmarks.serving import PROMPTS


def make_adapters(base: Path, out: Path, n: int, r: int) -> list[Path]:
    """``n`` LoRA adapters (all linear layers, rank ``r``), each a small random perturbation of the base;
    one peft model re-randomized per adapter (loading the base once)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                          init_lora_weights=False))
    paths = []
    for i in range(n):
        torch.manual_seed(100 + i)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_A" in name:
                    p.normal_(0, 0.02)
                elif "lora_B" in name:
                    p.normal_(0, 0.02)
        pm.save_pretrained(str(out / f"a{i}"))
        paths.append(out / f"a{i}")
    return paths


def pick_models(kind: str, n_adapters: int, n: int, rng: random.Random) -> list[str]:
    if n_adapters == 0:
        return ["base"] * n
    if kind == "identical":
        return ["a0"] * n
    if kind == "distinct":
        return [f"a{i % n_adapters}" for i in range(n)]
    if kind == "uniform":
        return [f"a{rng.randrange(n_adapters)}" for _ in range(n)]
    weights = [1 / (k + 1) for k in range(n_adapters)]  # Zipf, s = 1.0: adapter k has weight 1/(k+1)
    return [f"a{k}" for k in rng.choices(range(n_adapters), weights=weights, k=n)]


async def one(client: Any, model: str, prompt: str, tokens: int, sent_at: float) -> dict[str, Any]:
    import openai

    out: dict[str, Any] = {"model": model, "ttft": None, "gaps": [], "tokens": 0, "error": None}
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=tokens, temperature=0,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        last = None
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].delta.content:
                if last is None:
                    out["ttft"] = now - sent_at
                else:
                    out["gaps"].append(now - last)
                last = now
            if chunk.usage is not None:
                out["tokens"] = chunk.usage.completion_tokens
    except openai.APIStatusError as e:
        out["error"] = str(e.status_code)
    except Exception as e:  # noqa: BLE001 - counted, reported
        out["error"] = type(e).__name__
    return out


async def open_loop(url: str, models: list[str], prompts: list[str], lengths: list[int],
                    arrivals: list[float]) -> tuple[list[dict[str, Any]], float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
    t0 = time.perf_counter()
    tasks = []
    for model, prompt, n, at in zip(models, prompts, lengths, arrivals):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(client, model, prompt, n, time.perf_counter())))
    results = list(await asyncio.gather(*tasks))
    return results, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=1.0, help="arrivals per second (Poisson)")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--adapters", type=int, default=64)
    ap.add_argument("--popularity", default="zipf,uniform", help="comma-separated: distinct, uniform, zipf, identical")
    ap.add_argument("--max-loaded", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--min-tokens", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from adapterhub.serving.api import create_app
    from adapterhub.serving.config import ServeConfig
    from adapterhub.serving.engines.hf import HFEngine
    from adapterhub.serving.server import BackgroundServer

    settings = Settings()
    base = pull_demo(settings)
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    registry = Registry(LocalStore(tmp / "registry"))
    t = time.perf_counter()
    for i, p in enumerate(make_adapters(base.path, tmp / "adapters", args.adapters, args.rank)):
        registry.register(p, f"a{i}", base_model=base.identity())
    print(f"{args.adapters} adapters r={args.rank} all-linear made and registered in {time.perf_counter() - t:.0f} s")

    rng = random.Random(args.seed)
    arrivals, at = [], 0.0
    for _ in range(args.requests):
        at += rng.expovariate(args.rate)
        arrivals.append(at)
    prompts = [PROMPTS[rng.randrange(len(PROMPTS))] for _ in range(args.requests)]
    lengths = [rng.randint(args.min_tokens, args.max_tokens) for _ in range(args.requests)]
    setups = [("base only", 0, "")] + [(f"{args.adapters} adapters, {k}", args.adapters, k)
                                        for k in args.popularity.split(",")]

    engine = HFEngine(base.path, model_id=DEMO_MODEL, fingerprint=base.fingerprint, dtype="bf16",
                      max_loaded=args.max_loaded, max_lora_rank=args.rank)
    app = create_app(ServeConfig(base=DEMO_MODEL, max_loaded=args.max_loaded, max_lora_rank=args.rank),
                     engine=engine, registry=registry, base_name=DEMO_MODEL)
    rows = []
    try:
        with BackgroundServer(app) as url:
            asyncio.run(open_loop(url, ["base"] * 2, prompts[:2], [4, 4], [0.0, 0.0]))  # warm-up
            for label, n_adapters, kind in setups:
                models = pick_models(kind, n_adapters, args.requests, random.Random(args.seed + 1))
                results, wall = asyncio.run(open_loop(url, models, prompts, lengths, arrivals))
                ok = [r for r in results if r["error"] is None]
                errors: dict[str, int] = {}
                for r in results:
                    if r["error"] is not None:
                        errors[r["error"]] = errors.get(r["error"], 0) + 1
                ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
                gaps = [g for r in ok for g in r["gaps"]]
                rows.append({
                    "set-up": label, "errors": f"{len(results) - len(ok)}/{len(results)}"
                    + (f" ({', '.join(f'{k}×{v}' for k, v in sorted(errors.items()))})" if errors else ""),
                    "ttft_p50_s": _r(pct(ttft, 50)), "ttft_p99_s": _r(pct(ttft, 99)),
                    "itl_p50_ms": _r(pct(gaps, 50), 1000), "itl_p99_ms": _r(pct(gaps, 99), 1000),
                    "out_tok_s": round(sum(r["tokens"] for r in ok) / wall, 1),
                    "distinct_adapters": len(set(models)) if n_adapters else 0,
                })
                print(rows[-1], flush=True)
    finally:
        engine.stop()
    base_row = rows[0]
    for r in rows:
        r["ttft_p50_vs_base"] = _ratio(r["ttft_p50_s"], base_row["ttft_p50_s"])
        r["ttft_p99_vs_base"] = _ratio(r["ttft_p99_s"], base_row["ttft_p99_s"])
        r["tok_s_vs_base"] = _ratio(r["out_tok_s"], base_row["out_tok_s"])
    print(f"open loop: Poisson {args.rate} req/s, {args.requests} requests, answers {args.min_tokens}-{args.max_tokens} "
          f"tokens (ignore_eos), --max-loaded {args.max_loaded}, demo model, hf engine")
    report("load", rows, ["set-up", "errors", "ttft_p50_s", "ttft_p99_s", "itl_p50_ms", "itl_p99_ms", "out_tok_s",
                          "ttft_p50_vs_base", "ttft_p99_vs_base", "tok_s_vs_base", "distinct_adapters"],
           extra={"rate": args.rate, "requests": args.requests, "adapters": args.adapters, "rank": args.rank,
                  "max_loaded": args.max_loaded, "tokens": [args.min_tokens, args.max_tokens],
                  "median_answer_tokens": statistics.median(lengths)})


def _r(v: float | None, scale: float = 1.0) -> float | None:
    return None if v is None else round(v * scale, 3 if scale == 1.0 else 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


if __name__ == "__main__":
    main()
