"""vLLM engine throughput on the demo model, all measured in one run (run it in the vLLM venv).

* base-only: a batch of requests for the base model through our vLLM engine;
* mixed: the same batch with every request on a different one of 8 adapters;
* our HTTP layer vs raw vLLM: the mixed workload through ``adapterhub``'s server (vLLM engine) and through
  vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server --enable-lora``), the same
  official ``openai`` client and requests against both.

Run: ``make bench-vllm`` or ``.venv-vllm/bin/python -m benchmarks.serving_vllm [--requests 8] [--tokens 64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

from adapterhub.loading.bases import pull_demo
from adapterhub.models import DEMO_MODEL
from adapterhub.precision import dtype_name
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.settings import Settings
from benchmarks.common import report, scratch_dir
from benchmarks.serving import PROMPTS, make_adapters, run_engine


async def http_mixed(url: str, n: int, tokens: int, models: list[str]) -> tuple[float, int]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=900)
    t0 = time.perf_counter()
    rs = await asyncio.gather(*(client.chat.completions.create(
        model=models[i % len(models)], max_tokens=tokens, temperature=0,
        messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(n)))
    dt = time.perf_counter() - t0
    await client.close()
    return dt, sum(r.usage.completion_tokens for r in rs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_vllm_server(base: Path, adapters: list[Path], rank: int, port: int, *, python: str = sys.executable,
                    max_loras: int | None = None, max_cpu_loras: int | None = None) -> subprocess.Popen[bytes]:
    """vLLM's own OpenAI server with ``adapters`` as LoRA modules a0, a1, … (by default all in GPU slots)."""
    max_loras = max_loras or len(adapters) + 1
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base),
           "--host", "127.0.0.1", "--port", str(port), "--enable-lora", "--max-lora-rank", str(rank),
           "--max-loras", str(max_loras), "--max-cpu-loras", str(max_cpu_loras or 2 * (len(adapters) + 1)),
           "--no-enable-prefix-caching", "--max-model-len", "1024", "--dtype", dtype_name("bf16", model_path=base),
           "--lora-modules", *(f"a{i}={p}" for i, p in enumerate(adapters))]
    if not _cuda():
        cmd += ["--gpu-memory-utilization", "0.4"]  # our engine's default share of RAM on CPU builds
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("vLLM server did not come up")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    settings = Settings()
    base = pull_demo(settings)
    tmp = scratch_dir("bench-vllm-")
    paths = make_adapters(base.path, tmp / "adapters", args.adapters, r=args.rank)
    registry = Registry(LocalStore(tmp / "registry"))
    for i, p in enumerate(paths):
        registry.register(p, f"a{i}", base_model=base.identity())

    from adapterhub.serving.api import create_app
    from adapterhub.serving.config import ServeConfig
    from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
    from adapterhub.serving.engines.vllm import VLLMEngine
    from adapterhub.serving.server import BackgroundServer

    engine = VLLMEngine(base.path, model_id=DEMO_MODEL, fingerprint=base.fingerprint, dtype="bf16",
                        max_loaded=args.adapters, max_lora_rank=args.rank, extra_args={"max_model_len": "1024"})
    prompts = [engine.encode_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], None)
               for i in range(args.requests)]
    params = SamplingParams(max_tokens=args.tokens)
    for i in range(args.adapters):
        engine.load_adapter(f"a{i}", registry.path(f"a{i}"))

    def reqs(mixed: bool) -> list[GenerationRequest]:
        return [GenerationRequest(prompts[i], params, f"a{i % args.adapters}" if mixed else None)
                for i in range(args.requests)]

    asyncio.run(run_engine(engine, reqs(False)))  # warm-up
    asyncio.run(run_engine(engine, reqs(True)))  # vLLM loads each adapter on first use
    t_base, n_base = asyncio.run(run_engine(engine, reqs(False)))
    t_mixed, n_mixed = asyncio.run(run_engine(engine, reqs(True)))
    for i in range(args.adapters):  # the server's adapter manager loads them again under its own keys
        engine.unload_adapter(f"a{i}")

    models = [f"a{i}" for i in range(args.adapters)]
    app = create_app(ServeConfig(base=DEMO_MODEL, engine="vllm", max_loaded=args.adapters,
                                 max_lora_rank=args.rank), engine=engine, registry=registry, base_name=DEMO_MODEL)
    with BackgroundServer(app) as url:
        asyncio.run(http_mixed(url, args.requests, args.tokens, models))  # loads through the manager
        t_ours, n_ours = asyncio.run(http_mixed(url, args.requests, args.tokens, models))
    engine.stop()
    del engine

    port = free_port()
    raw_url = f"http://127.0.0.1:{port}"
    proc = raw_vllm_server(base.path, paths, args.rank, port)
    try:
        wait_ready(raw_url, proc)
        asyncio.run(http_mixed(raw_url, args.requests, args.tokens, models))  # warm-up, loads the adapters
        t_raw, n_raw = asyncio.run(http_mixed(raw_url, args.requests, args.tokens, models))
    finally:
        proc.terminate()
        proc.wait(60)

    tps = {
        "vllm engine base-only batch": n_base / t_base,
        "vllm engine 8-adapter mixed batch": n_mixed / t_mixed,
        "raw vLLM OpenAI server, mixed (baseline)": n_raw / t_raw,
        "adapterhub server on vLLM, mixed": n_ours / t_ours,
    }
    rows = [{"workload": k, "tok_per_s": round(v, 1),
             "vs_base_only": round(v / tps["vllm engine base-only batch"], 2),
             "vs_raw_vllm_http": round(v / tps["raw vLLM OpenAI server, mixed (baseline)"], 2)}
            for k, v in tps.items()]
    overhead = (t_ours / n_ours) / (t_raw / n_raw) - 1
    device = "cuda" if _cuda() else "cpu"
    print(f"vLLM on {device}: {args.requests} requests × {args.tokens} tokens, greedy, "
          f"{dtype_name('bf16', model_path=base.path)} (bf16 where the CPU or GPU has it), "
          f"{args.adapters} adapters r={args.rank} all-linear")
    report(f"serving_vllm_{device}", rows, ["workload", "tok_per_s", "vs_base_only", "vs_raw_vllm_http"],
           extra={"device": device, "dtype": dtype_name("bf16", model_path=base.path), "http_overhead_vs_raw_vllm": round(overhead, 3), "requests": args.requests,
                  "tokens": args.tokens, "adapters": args.adapters, "rank": args.rank})
    print(f"our HTTP layer vs raw vLLM server: {overhead * 100:+.1f}% time per token")


if __name__ == "__main__":
    main()
