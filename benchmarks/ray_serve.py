"""What Ray Serve costs in front of the server (``adapterhub serve --ray``), on the demo model, in one run.

* Sequential: streamed 16-token chat answers (``ignore_eos``) on one adapter, one request at a time, through
  the single server (uvicorn, the baseline) and through Ray Serve with one engine replica (proxy → ingress →
  replica → the same app): median request time, time to first token and gap between tokens, and the ratio
  (goal: Ray ≤ 1.10× the single server). The TTFT difference is the routing; an inter-token difference is
  Ray's own processes (controller, proxy, ingress) taking CPU from the decode.
* Concurrent: 8 clients at once for a few rounds, output tokens per second, single server vs one replica vs
  two replicas (on this 2-core machine two replicas share the same cores: the number says what routing and a
  second engine cost here, not how a GPU cluster scales; see docs/ray.md).

Run: ``python -m benchmarks.ray_serve [--rounds 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time

import openai

from adapterhub.loading.bases import pull_demo
from adapterhub.models import DEMO_MODEL
from adapterhub.registry import Registry
from adapterhub.serving.config import ServeConfig
from adapterhub.settings import Settings
from benchmarks.common import report, scratch_dir
from benchmarks.load import make_adapters

TOKENS = 16


def _ask(url: str) -> tuple[float, float, float]:
    """One streamed 16-token answer: (time to first token, mean gap between tokens, total), seconds."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    t0 = time.perf_counter()
    first, last, gaps, n = None, 0.0, [], 0
    for chunk in client.chat.completions.create(model="bench", max_tokens=TOKENS, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": "Tell me about bread."}],
                                                extra_body={"ignore_eos": True}):
        now = time.perf_counter()
        if chunk.choices and chunk.choices[0].delta.content:
            n += 1
            if first is None:
                first = now - t0
            else:
                gaps.append(now - last)
            last = now
    assert first is not None and n > 1
    return first, statistics.mean(gaps), time.perf_counter() - t0


def _sequential(url: str, rounds: int) -> dict[str, float]:
    _ask(url)  # warm-up: the adapter loaded
    runs = [_ask(url) for _ in range(rounds)]
    return {k: statistics.median(r[i] for r in runs) for i, k in enumerate(("ttft", "itl", "p50"))}


async def _concurrent(url: str, clients: int, rounds: int) -> float:
    """Output tokens per second with ``clients`` requests in flight, over ``rounds`` rounds."""
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600) as client:

        async def one() -> int:
            out = await client.chat.completions.create(model="bench", max_tokens=TOKENS, temperature=0,
                                                       messages=[{"role": "user", "content": "Tell me about bread."}],
                                                       extra_body={"ignore_eos": True})
            return out.usage.completion_tokens

        t0 = time.perf_counter()
        tokens = 0
        for _ in range(rounds):
            tokens += sum(await asyncio.gather(*(one() for _ in range(clients))))
        return tokens / (time.perf_counter() - t0)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20, help="sequential requests per set-up")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--concurrent-rounds", type=int, default=3)
    args = ap.parse_args()

    import ray
    from ray import serve

    from adapterhub.deploy.ray.app import build_app
    from adapterhub.serving.api import build_service
    from adapterhub.serving.app import make_app
    from adapterhub.serving.server import BackgroundServer

    base = pull_demo(Settings())
    home = scratch_dir("bench-ray-")
    registry = Registry.open(Settings(home=home))
    [adapter] = make_adapters(base.path, home / "adapters", 1, 8)
    registry.register(adapter, "bench", base_model=base.identity())
    # Ray gives an actor as many torch threads as the CPUs it reserves (OMP_NUM_THREADS): 2, as the single
    # server uses on this 2-core machine, so the comparison measures Ray's routing, not a thread count.
    config = ServeConfig(base=str(base.path), served_name=DEMO_MODEL, max_loaded=2, max_lora_rank=8, replicas=1,
                         replica_cpus=2)
    results: dict[str, dict[str, float]] = {}

    stack = build_service(config, Settings(home=home))
    with BackgroundServer(make_app(stack)) as url:
        results["single server"] = {**_sequential(url, args.rounds),
                                    "tok_s": asyncio.run(_concurrent(url, args.clients, args.concurrent_rounds))}
    stack.engine.stop()

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"ADAPTERHUB_HOME": str(home), "HF_HUB_OFFLINE": "1"}})
    try:
        port = _port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        for replicas in (1, 2):
            # two replicas on 2 cores: one torch thread each (two threads each would oversubscribe the cores)
            scaled = config.model_copy(update={"replicas": replicas, "replica_cpus": 2 / replicas})
            serve.run(build_app(scaled, home=str(home)), name="adapterhub", route_prefix="/")
            row: dict[str, float] = _sequential(url, args.rounds) if replicas == 1 else {}
            row["tok_s"] = asyncio.run(_concurrent(url, args.clients, args.concurrent_rounds))
            results[f"Ray Serve, {replicas} replica{'s' if replicas > 1 else ''}"] = row
            serve.delete("adapterhub")
    finally:
        serve.shutdown()
        ray.shutdown()

    single = results["single server"]
    rows = []
    for name, r in results.items():
        one = "p50" in r
        rows.append({"set-up": name, "request p50 (ms)": round(r["p50"] * 1000, 1) if one else None,
                     "vs single": round(r["p50"] / single["p50"], 3) if one else None,
                     "TTFT p50 (ms)": round(r["ttft"] * 1000, 1) if one else None,
                     "inter-token (ms)": round(r["itl"] * 1000, 1) if one else None,
                     f"tok/s, {args.clients} concurrent": round(r["tok_s"], 1),
                     "tok/s vs single": round(r["tok_s"] / single["tok_s"], 3)})
    print(f"demo model, hf engine, one adapter r=8, {TOKENS}-token answers; {args.rounds} sequential requests, "
          f"{args.clients} concurrent × {args.concurrent_rounds} rounds")
    report("ray_serve", rows, list(rows[0]), extra={"rounds": args.rounds, "clients": args.clients})


if __name__ == "__main__":
    main()
