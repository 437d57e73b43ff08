"""Serving under open-loop traffic: requests arrive whenever they arrive (Poisson), many adapters, streamed
through the official async ``openai`` client against the real HTTP server on the demo model.

Each set-up runs at the same arrival rate with the same seeded arrivals, prompts and answer lengths (the set-ups
take turns at each rate: base, 64, 512 at the first, 64, 512, base at the next, and so on);
base-only is the baseline measured in the same run. Reported per set-up: errors (and their statuses),
TTFT and inter-token latency p50/p99, output tokens/s over the run. Adapter popularity follows Punica's
four: ``distinct`` (every request its own adapter, round robin), ``uniform``, ``zipf`` (s = 1.0) and
``identical`` (one adapter).

Answer lengths: uniform in [--min-tokens, --max-tokens] with ``ignore_eos`` (so every set-up writes the
same number of tokens); prompts: the chat prompts of ``benchmarks.serving``.

Each set-up is swept over arrival rates (``--rates``, ``--duration`` seconds of arrivals each); its capacity
is the rate where p99 TTFT passes ``--p99-limit`` (5 s), interpolated between the measured rates. Then every
set-up runs at half the base-only capacity (the issue's goal point), ``--goal-rounds`` times with fresh arrivals,
interleaved (each round starts with the next set-up), its rounds pooled into one row. ``--vllm-python`` adds vLLM's own
OpenAI server (``--enable-lora``, ``--max-loras`` = ``--max-loaded`` up to 8, every adapter in its CPU cache) on the
first N's mix, same arrivals, after ours. One server serves every set-up in turn, as a user's server would:
adapters loaded by one point (of any set-up) may still be resident at the next.

Run: ``python -m benchmarks.load [--rates 0.25,0.5,0.75,1.0] [--adapters 64,512] [--max-loaded 64]
[--vllm-python .venv-vllm/bin/python]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path
from typing import Any

from adapterhub.models import DEMO_MODEL
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.config import HF_MAX_BATCH, HF_MAX_LOADED, VLLM_MAX_LOADED, ServeConfig
from adapterhub.serving.metrics import percentile as pct
from adapterhub.settings import Settings
from benchmarks.common import bench_base, report, run_name, scratch_dir
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

    async with AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600) as client:
        t0 = time.perf_counter()
        tasks = []
        for model, prompt, n, at in zip(models, prompts, lengths, arrivals):
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client, model, prompt, n, time.perf_counter())))
        results = list(await asyncio.gather(*tasks))
        return results, time.perf_counter() - t0


def summarize(label: str, rate: float, models: list[str], results: list[dict[str, Any]], wall: float,
              n_adapters: int) -> dict[str, Any]:
    ok = [r for r in results if r["error"] is None]
    errors: dict[str, int] = {}
    for r in results:
        if r["error"] is not None:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    return {
        "set-up": label, "rate": rate, "errors": f"{len(results) - len(ok)}/{len(results)}"
        + (f" ({', '.join(f'{k}×{v}' for k, v in sorted(errors.items()))})" if errors else ""),
        "ttft_p50_s": _r(pct(ttft, 50)), "ttft_p99_s": _r(pct(ttft, 99)),
        "itl_p50_ms": _r(pct(gaps, 50), 1000), "itl_p99_ms": _r(pct(gaps, 99), 1000),
        "out_tok_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "distinct_adapters": len(set(models)) if n_adapters else 0,
    }


Sums = dict[str, tuple[float, float]]  # metric -> (sum, count)

WAITS = {"adapter_wait": "adapterhub_adapter_wait_seconds", "batch_wait": "adapterhub_queue_seconds",
         "ttft": "adapterhub_time_to_first_token_seconds", "slot_wait": "adapterhub_adapter_slot_wait_seconds",
         "fetch": "adapterhub_adapter_fetch_seconds", "copy": "adapterhub_adapter_load_seconds"}


def server_sums(url: str) -> Sums:
    """(sum, count) of the server's own timing histograms over every version ({} when it has none: vLLM)."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    out: dict[str, tuple[float, float]] = {}
    for key, metric in WAITS.items():
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "_sum"))
        count = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "_count"))
        if f"{metric}_count" in text:
            out[key] = (total, count)
    hits = [line for line in text.splitlines() if line.startswith("adapterhub_adapter_host_cache_total{")]
    out["host_hits"] = (sum(float(x.rsplit(" ", 1)[1]) for x in hits if 'result="hit"' in x), 0.0)
    out["loads"] = (sum(float(x.rsplit(" ", 1)[1]) for x in hits), 0.0)
    return out


def sums_delta(before: Sums, after: Sums, into: Sums | None = None) -> Sums:
    """What the server's (sum, count) pairs grew by between two reads, added to ``into`` (pooling rounds)."""
    out = dict(into or {})
    for key, (s1, c1) in after.items():
        s0, c0 = before.get(key, (0.0, 0.0))
        d0, d1 = out.get(key, (0.0, 0.0))
        out[key] = (d0 + s1 - s0, d1 + c1 - c0)
    return out


def ttft_parts(before: Sums, after: Sums) -> dict[str, Any]:
    return parts_of(sums_delta(before, after))


def parts_of(delta: Sums) -> dict[str, Any]:
    """Where the server says a point's time to first token went (means over the point's requests): waiting
    for the adapter (slot, turn, load), then for the batch, the rest being the prefill; and its loads."""
    out: dict[str, Any] = {"server_ttft_mean_s": None, "server_adapter_wait_mean_s": None,
                           "server_batch_wait_mean_s": None, "loads": None, "host_cache_hits": None}
    if "ttft" not in delta:  # not our server
        return out
    for key in ("ttft", "adapter_wait", "batch_wait"):
        total, count = delta.get(key, (0.0, 0.0))
        out[f"server_{key}_mean_s"] = round(total / count, 3) if count > 0 else None
    out["loads"] = int(delta["loads"][0])
    out["host_cache_hits"] = int(delta["host_hits"][0])
    return out


def capacity(points: list[dict[str, Any]], limit_s: float) -> float | str:
    """The arrival rate at which p99 TTFT reaches ``limit_s`` (linear between the two rates around it), with no
    errors below it; ``≥ top`` when no measured rate passes it, ``< lowest`` when the lowest already does."""
    ordered = sorted(points, key=lambda p: p["rate"])

    def fails(p: dict[str, Any]) -> bool:
        return p["ttft_p99_s"] is None or p["ttft_p99_s"] > limit_s or not p["errors"].startswith("0/")

    for i, p in enumerate(ordered):
        if fails(p):
            if i == 0:
                return f"< {p['rate']}"
            lo, hi = ordered[i - 1], p
            if hi["ttft_p99_s"] is None or not hi["errors"].startswith("0/"):
                return lo["rate"]
            frac = (limit_s - lo["ttft_p99_s"]) / (hi["ttft_p99_s"] - lo["ttft_p99_s"])
            return round(lo["rate"] + frac * (hi["rate"] - lo["rate"]), 3)
    return f"≥ {ordered[-1]['rate']}"


def in_turn(items: list[Any], i: int) -> list[Any]:
    """``items`` starting at the i-th (wrapping): turn i of a rotation, so none always goes first."""
    k = i % len(items)
    return items[k:] + items[:k]


def arrivals_for(rate: float, n: int, seed: int) -> list[float]:
    rng, at, out = random.Random(seed), 0.0, []
    for _ in range(n):
        at += rng.expovariate(rate)
        out.append(at)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="0.25,0.5,0.75,1.0", help="arrival rates to sweep (requests/s, Poisson)")
    ap.add_argument("--duration", type=float, default=45.0, help="seconds of arrivals per rate (at least 10 requests)")
    ap.add_argument("--adapters", default="64,512", help="comma-separated adapter counts N")
    ap.add_argument("--popularity", default="zipf", help="comma-separated: distinct, uniform, zipf, identical")
    ap.add_argument("--max-loaded", type=int, default=HF_MAX_LOADED, help="the hf engine's (the server's default)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--max-batch-size", type=int, default=HF_MAX_BATCH, help="the hf engine's (the server's default)")
    ap.add_argument("--min-tokens", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--p99-limit", type=float, default=5.0, help="capacity: the rate where p99 TTFT passes this")
    ap.add_argument("--goal-requests", type=int, default=40,
                    help="requests at half the base-only capacity, per set-up and round (0: skip that point)")
    ap.add_argument("--goal-rounds", type=int, default=3,
                    help="rounds at the goal point, each with its own arrivals; a round runs every set-up once, "
                         "starting one set-up later each round; a set-up's row pools its rounds")
    ap.add_argument("--vllm-python", default="", help="a Python with vLLM: its own server on the first N's mix")
    ap.add_argument("--vllm-rates", default="", help="arrival rates for vLLM's server (default: --rates)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="load", help="results go to docs/bench_NAME.json (a short run beside the full one)")
    ap.add_argument("--random-weights", metavar="DIR", type=Path,
                    help="a config + tokenizer dir: that architecture with random weights (a machine without the "
                         "demo model)")
    args = ap.parse_args()
    if args.vllm_rates and not args.vllm_python:
        ap.error("--vllm-rates needs --vllm-python (they are the rates of vLLM's server)")
    if args.max_batch_size < 1:
        ap.error("--max-batch-size must be at least 1")
    if args.goal_rounds < 1:
        ap.error("--goal-rounds must be at least 1 (--goal-requests 0 skips the goal point)")

    from adapterhub.serving.api import create_app
    from adapterhub.serving.engines.hf import HFEngine
    from adapterhub.serving.server import BackgroundServer

    rates = [float(x) for x in args.rates.split(",")]
    counts = [int(x) for x in args.adapters.split(",")]
    settings = Settings()
    tmp = scratch_dir("bench-load-")
    base = bench_base(args.random_weights, settings, tmp)
    name = run_name(args.name, args.random_weights)
    registry = Registry(LocalStore(tmp / "registry"))
    t = time.perf_counter()
    paths = make_adapters(base.path, tmp / "adapters", max(counts), args.rank)
    for i, p in enumerate(paths):
        registry.register(p, f"a{i}", base_model=base.identity())
    print(f"{len(paths)} adapters r={args.rank} all-linear made and registered in {time.perf_counter() - t:.0f} s",
          flush=True)

    setups = [("base only", 0, "")] + [(f"{n} adapters, {k}", n, k) for n in counts for k in args.popularity.split(",")]

    def workload(rate: float, n_requests: int, n_adapters: int, kind: str,
                 seed: int = args.seed) -> tuple[list[str], list[str], list[int], list[float]]:
        rng = random.Random(seed)
        prompts = [PROMPTS[rng.randrange(len(PROMPTS))] for _ in range(n_requests)]
        lengths = [rng.randint(args.min_tokens, args.max_tokens) for _ in range(n_requests)]
        models = pick_models(kind, n_adapters, n_requests, random.Random(seed + 1))
        return models, prompts, lengths, arrivals_for(rate, n_requests, seed + 2)

    def sweep(url: str, label: str, n_adapters: int, kind: str, rates: list[float] = rates) -> list[dict[str, Any]]:
        points = []
        for rate in rates:
            n_requests = max(10, round(rate * args.duration))
            models, prompts, lengths, arrivals = workload(rate, n_requests, n_adapters, kind)
            before = server_sums(url)
            results, wall = asyncio.run(open_loop(url, models, prompts, lengths, arrivals))
            points.append(summarize(label, rate, models, results, wall, n_adapters))
            points[-1].update(ttft_parts(before, server_sums(url)))
            print(points[-1], flush=True)
            if saturated(points):
                break
        return points

    def saturated(points: list[dict[str, Any]]) -> bool:
        """Higher rates would only queue longer."""
        return bool(points) and (points[-1]["ttft_p99_s"] is None or points[-1]["ttft_p99_s"] > 3 * args.p99_limit)

    pooled: dict[str, dict[str, Any]] = {}  # goal point: set-up -> its rounds' models, results, walls, server sums

    def goal_round(url: str, label: str, n_adapters: int, kind: str, rate: float, round_: int) -> None:
        models, prompts, lengths, arrivals = workload(rate, args.goal_requests, n_adapters, kind,
                                                      seed=args.seed + 1000 * (round_ + 1))
        before = server_sums(url)
        results, wall = asyncio.run(open_loop(url, models, prompts, lengths, arrivals))
        after = server_sums(url)
        row = summarize(label, round(rate, 3), models, results, wall, n_adapters)
        print(f"goal point, round {round_ + 1}", row, flush=True)
        p = pooled.setdefault(label, {"models": [], "results": [], "wall": 0.0, "sums": {}, "n": n_adapters})
        p["models"] += models
        p["results"] += results
        p["wall"] += wall
        p["sums"] = sums_delta(before, after, p["sums"])

    def goal_row(label: str, rate: float) -> dict[str, Any]:
        p = pooled[label]
        row = summarize(label, round(rate, 3), p["models"], p["results"], p["wall"], p["n"])
        row.update(parts_of(p["sums"]))
        return row

    engine = HFEngine(base.path, model_id=DEMO_MODEL, fingerprint=base.fingerprint, dtype="bf16",
                      max_loaded=args.max_loaded, max_lora_rank=args.rank, max_batch_size=args.max_batch_size)
    app = create_app(ServeConfig(base=DEMO_MODEL, max_loaded=args.max_loaded, max_lora_rank=args.rank,
                                 max_batch_size=args.max_batch_size),
                     engine=engine, registry=registry, base_name=DEMO_MODEL)
    sweeps: dict[str, list[dict[str, Any]]] = {}
    goal: list[dict[str, Any]] = []
    caps: dict[str, float | str] = {}
    try:
        with BackgroundServer(app) as url:
            asyncio.run(open_loop(url, ["base"] * 2, PROMPTS[:2], [4, 4], [0.0, 0.0]))  # warm-up
            # Interleaved: at each rate every set-up runs once, starting one set-up later at each rate, so a VM
            # whose speed drifts (or a set-up that runs after a saturated one) does not favour any of them.
            for i, rate in enumerate(rates):
                for label, n_adapters, kind in in_turn(setups, i):
                    if not saturated(sweeps.get(label, [])):
                        sweeps.setdefault(label, []).extend(sweep(url, label, n_adapters, kind, [rate]))
            sweeps = {label: sweeps[label] for label, _, _ in setups}
            caps = {label: capacity(sweeps[label], args.p99_limit) for label, _, _ in setups}
            base_cap = caps["base only"]
            half = base_cap / 2 if isinstance(base_cap, float) else None
            if half and args.goal_requests:
                for round_ in range(args.goal_rounds):  # interleaved: conditions drift alike for every set-up
                    for label, n_adapters, kind in in_turn(setups, round_):
                        goal_round(url, label, n_adapters, kind, half, round_)
                goal = [goal_row(label, half) for label, _, _ in setups]
    finally:
        engine.stop()

    if args.vllm_python:  # vLLM's own OpenAI server, the first N's mix, same requests (its own rates)
        from benchmarks.serving_vllm import free_port, raw_vllm_server, wait_ready

        n = counts[0]
        kind = args.popularity.split(",")[0]
        label = f"vllm serve, {n} adapters, {kind}"
        port = free_port()
        proc = raw_vllm_server(base.path, paths[:n], args.rank, port, python=args.vllm_python,
                               max_loras=min(args.max_loaded, VLLM_MAX_LOADED), max_cpu_loras=n)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc)
            vllm_rates = [float(x) for x in args.vllm_rates.split(",")] if args.vllm_rates else rates
            sweeps[label] = sweep(url, label, n, kind, vllm_rates)
            caps[label] = capacity(sweeps[label], args.p99_limit)
            if goal and half:
                for round_ in range(args.goal_rounds):
                    goal_round(url, label, n, kind, half, round_)
                goal.append(goal_row(label, half))
        except Exception as e:  # noqa: BLE001 - the hf results above are still reported
            print(f"vLLM's server failed: {type(e).__name__}: {e}", flush=True)
            caps[label] = f"failed: {type(e).__name__}"
        finally:
            proc.terminate()
            proc.wait(60)

    base_cap = caps["base only"]
    summary = []
    for label, cap in caps.items():
        ratio = round(cap / base_cap, 2) if isinstance(cap, float) and isinstance(base_cap, float) else None
        summary.append({"set-up": label, "capacity_req_s": cap, "capacity_vs_base": ratio})
    if goal:
        base_goal = goal[0]
        for r in goal:
            r["ttft_p50_vs_base"] = _ratio(r["ttft_p50_s"], base_goal["ttft_p50_s"])
            r["ttft_p99_vs_base"] = _ratio(r["ttft_p99_s"], base_goal["ttft_p99_s"])
            r["tok_s_vs_base"] = _ratio(r["out_tok_s"], base_goal["out_tok_s"])
    rows = [p for pts in sweeps.values() for p in pts]
    plot(sweeps, args.p99_limit, name)
    print(f"open loop: Poisson arrivals, answers {args.min_tokens}-{args.max_tokens} tokens (ignore_eos), "
          f"--max-loaded {args.max_loaded}, --max-batch-size {args.max_batch_size}, {'random weights' if args.random_weights else 'demo model'}, "
          f"hf engine on {engine.device}")
    report(name, rows, ["set-up", "rate", "errors", "ttft_p50_s", "ttft_p99_s", "itl_p50_ms", "itl_p99_ms",
                          "out_tok_s", "distinct_adapters", "server_ttft_mean_s", "server_adapter_wait_mean_s",
                          "server_batch_wait_mean_s", "loads", "host_cache_hits"],
           extra={"capacity": summary, "at_half_base_capacity": goal, "p99_ttft_limit_s": args.p99_limit,
                  "rank": args.rank, "max_loaded": args.max_loaded, "max_batch_size": args.max_batch_size, "tokens": [args.min_tokens, args.max_tokens],
                  "seconds_of_arrivals_per_rate": args.duration,
                  "goal_requests_per_round": args.goal_requests, "goal_rounds": args.goal_rounds})


def plot(sweeps: dict[str, list[dict[str, Any]]], limit_s: float, name: str) -> None:
    """TTFT p50 (dashed) and p99 (solid) against the arrival rate, one colour per set-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.common import DOCS

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, points) in enumerate(sweeps.items()):
        pts = [p for p in points if p["ttft_p99_s"] is not None]
        color = f"C{i}"
        ax.plot([p["rate"] for p in pts], [p["ttft_p99_s"] for p in pts], "-o", color=color, label=f"{label} p99")
        ax.plot([p["rate"] for p in pts], [p["ttft_p50_s"] for p in pts], "--", color=color, alpha=0.6)
    ax.axhline(limit_s, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (requests/s, Poisson)")
    ax.set_ylabel("time to first token (s): p99 solid, p50 dashed")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(DOCS / f"bench_{name}.png", dpi=110)
    plt.close(fig)


def _r(v: float | None, scale: float = 1.0) -> float | None:
    return None if v is None else round(v * scale, 3 if scale == 1.0 else 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


if __name__ == "__main__":
    main()
