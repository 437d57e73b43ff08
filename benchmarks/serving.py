"""Serving throughput on the demo model, all measured in one run.

* base-only: a batch of requests for the base model through the hf engine;
* mixed: the same batch with every request on a different one of 8 adapters (our batched LoRA);
* naive swapping (baseline): peft with the 8 adapters loaded, one request at a time, ``set_adapter``;
* peft mixed: one peft ``generate(adapter_names=…)`` call for the whole mixed batch (for reference);
* hot-load: p50 of loading an adapter into a free slot;
* HTTP overhead: the mixed workload through the server with the openai client vs the engine directly;
* sampler cost (``--only sampler`` runs just this): the 8-adapter mixed batch with the argmax-only
  sampler the engine had before the sampler pipeline (baseline), with the pipeline and no extra
  parameters, with ``logprobs=5`` on every row, and with half the rows using penalties, logit bias and
  top-k sampling (the other half plain greedy). Every row decodes exactly ``--tokens`` (``ignore_eos``) so
  the set-ups do the same work; runs alternate, best of 3 each.

Run: ``python -m benchmarks.serving [--requests 8] [--tokens 64]`` (pulls the demo model if needed). On a GPU
machine everything (baselines too) runs on CUDA. ``--random-weights DIR`` benchmarks a randomly initialised
model built from the config and tokenizer files in DIR, for a machine that cannot fetch the demo model:
throughput does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import torch

from adapterhub.loading.bases import pull_demo, resolve_model
from adapterhub.models import DEMO_MODEL
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.settings import Settings
from benchmarks.common import report, scratch_dir

PROMPTS = [
    "Write a long story about a lighthouse keeper.", "Explain how rainbows form, in detail.",
    "Describe a day in the life of a farmer.", "Write a letter to a friend about your travels.",
    "Explain how a bicycle works.", "Tell me about the history of bread.",
    "Describe the ocean to someone who has never seen it.", "Write a poem about autumn leaves.",
]


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_model(src: Path, out: Path) -> Path:
    """A model with ``src``'s config and tokenizer and seeded random bf16 weights."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".gguf")):
            shutil.copy(f, out / f.name)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(src)), dtype=torch.bfloat16).save_pretrained(
        str(out))
    return out


def make_adapters(base: Path, out: Path, n: int, r: int = 16) -> list[Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(n):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16)
        pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                              init_lora_weights=False))
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.01)  # keep outputs fluent: a small random perturbation of the base
        pm.save_pretrained(str(out / f"a{i}"))
        paths.append(out / f"a{i}")
    return paths


async def staggered(engine, requests, gap_s: float) -> dict[str, float]:
    """Requests arriving ``gap_s`` apart: time to first token, latency and throughput."""
    async def one(i, req):
        await asyncio.sleep(i * gap_s)
        t0, first, n = time.perf_counter(), None, 0
        async for d in engine.generate(req):
            if first is None and d.text:
                first = time.perf_counter() - t0
            if d.finish_reason is not None:
                n = d.completion_tokens
        return first or 0.0, time.perf_counter() - t0, n

    t0 = time.perf_counter()
    res = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    wall = time.perf_counter() - t0
    return {"ttft_p50_s": round(statistics.median(r[0] for r in res), 3),
            "latency_mean_s": round(statistics.mean(r[1] for r in res), 2),
            "tok_per_s": round(sum(r[2] for r in res) / wall, 1)}


async def run_engine(engine, requests) -> tuple[float, int]:
    async def one(req):
        n = 0
        async for d in engine.generate(req):
            if d.finish_reason is not None:
                n = d.completion_tokens
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(r) for r in requests))
    return time.perf_counter() - t0, sum(counts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--random-weights", metavar="DIR", type=Path,
                    help="a config + tokenizer dir: benchmark that architecture with random weights")
    ap.add_argument("--only", choices=["sampler"], help="run one section only")
    args = ap.parse_args()
    settings = Settings()
    tmp = scratch_dir("bench-serving-")
    if args.random_weights:
        base = resolve_model(str(random_model(args.random_weights, tmp / "random-base")), settings)
    else:
        base = pull_demo(settings)
    paths = make_adapters(base.path, tmp / "adapters", args.adapters)
    registry = Registry(LocalStore(tmp / "registry"))
    for i, p in enumerate(paths):
        registry.register(p, f"a{i}", base_model=base.identity())

    from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
    from adapterhub.serving.engines.hf import HFEngine

    engine = HFEngine(base.path, model_id=DEMO_MODEL, fingerprint=base.fingerprint, max_loaded=args.adapters,
                      max_batch_size=args.requests)
    engine.start()
    tok = engine.tokenizer
    prompts = [engine.encode_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], None)
               for i in range(args.requests)]
    params = SamplingParams(max_tokens=args.tokens)

    # hot-load p50: load each adapter into a free slot, unload, repeat
    loads = []
    for _ in range(3):
        for i in range(len(paths)):
            t0 = time.perf_counter()
            engine.load_adapter(f"k{i}", registry.path(f"a{i}"))
            loads.append(time.perf_counter() - t0)
        for i in range(len(paths)):
            engine.unload_adapter(f"k{i}")
    for i in range(len(paths)):
        engine.load_adapter(f"a{i}", registry.path(f"a{i}"))

    def reqs(mixed: bool):
        return [GenerationRequest(prompts[i], params, f"a{i % args.adapters}" if mixed else None)
                for i in range(args.requests)]

    if args.only == "sampler":
        sampler_costs(engine, prompts, args)
        engine.stop()
        return

    asyncio.run(run_engine(engine, reqs(False)))  # warm-up
    t_base, n_base = asyncio.run(run_engine(engine, reqs(False)))
    t_mixed, n_mixed = asyncio.run(run_engine(engine, reqs(True)))
    # Continuous batching vs static batches (the same engine, joining switched off) on staggered arrivals:
    # the gap is a quarter of one request's solo decode time, so most requests arrive mid-batch.
    t_one, n_one = asyncio.run(run_engine(engine, reqs(True)[:1]))
    gap = t_one / 4
    arrivals = {}
    for mode in (False, True):
        engine.continuous = mode
        arrivals["continuous" if mode else "static"] = asyncio.run(staggered(engine, reqs(True), gap))
    engine.continuous = True

    for i in range(len(paths)):  # the server's adapter manager loads them again under its own keys
        engine.unload_adapter(f"a{i}")

    # HTTP: same mixed workload through the server and the official client
    import openai

    from adapterhub.serving.api import create_app
    from adapterhub.serving.config import ServeConfig
    from adapterhub.serving.server import BackgroundServer

    app = create_app(ServeConfig(base=DEMO_MODEL, max_loaded=args.adapters), engine=engine, registry=registry,
                     base_name=DEMO_MODEL)
    with BackgroundServer(app) as url:

        async def http_mixed() -> tuple[float, int]:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
            t0 = time.perf_counter()
            rs = await asyncio.gather(*(client.chat.completions.create(
                model=f"a{i % args.adapters}", max_tokens=args.tokens, temperature=0,
                messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(args.requests)))
            return time.perf_counter() - t0, sum(r.usage.completion_tokens for r in rs)

        asyncio.run(http_mixed())  # loads adapters through the manager
        t_http, n_http = asyncio.run(http_mixed())
    engine.stop()
    del engine

    # baselines with plain peft
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.bfloat16).to(DEVICE)
    pm = PeftModel.from_pretrained(model, str(paths[0]), adapter_name="a0")
    for i, p in enumerate(paths[1:], 1):
        pm.load_adapter(str(p), adapter_name=f"a{i}")
    pm.eval()
    eos = list(engine_eos(tok))

    @torch.no_grad()
    def naive() -> tuple[float, int]:
        t0, n = time.perf_counter(), 0
        for i in range(args.requests):
            pm.set_adapter(f"a{i % args.adapters}")
            ids = torch.tensor([prompts[i]], device=DEVICE)
            out = pm.generate(input_ids=ids, max_new_tokens=args.tokens, do_sample=False, eos_token_id=eos,
                              pad_token_id=tok.pad_token_id)
            n += _gen_len(out[0][len(prompts[i]):].tolist(), eos)
        return time.perf_counter() - t0, n

    @torch.no_grad()
    def peft_mixed() -> tuple[float, int]:
        tok.padding_side = "left"
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts], device=DEVICE)
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
        mask = mask.to(DEVICE)
        t0 = time.perf_counter()
        out = pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.tokens, do_sample=False,
                          eos_token_id=eos, pad_token_id=tok.pad_token_id,
                          adapter_names=[f"a{i % args.adapters}" for i in range(args.requests)])
        n = sum(_gen_len(row[width:].tolist(), eos) for row in out)
        return time.perf_counter() - t0, n

    t_naive, n_naive = naive()
    t_pm, n_pm = peft_mixed()

    tps = {
        "naive swap (peft set_adapter, 1 at a time)": n_naive / t_naive,
        "peft mixed batch (adapter_names=)": n_pm / t_pm,
        "adapterhub base-only batch": n_base / t_base,
        "adapterhub 8-adapter mixed batch": n_mixed / t_mixed,
        "adapterhub mixed via HTTP (openai client)": n_http / t_http,
    }
    rows = [{"workload": k, "tok_per_s": round(v, 1), "vs_naive": round(v / tps[next(iter(tps))], 2),
             "vs_base_only": round(v / tps["adapterhub base-only batch"], 2)} for k, v in tps.items()]
    p50 = statistics.median(loads) * 1000
    http_overhead = (t_http / n_http) / (t_mixed / n_mixed) - 1
    weights = "random weights" if args.random_weights else "demo model"
    print(f"{DEVICE}, {weights}: {args.requests} requests × {args.tokens} tokens, greedy, bf16, "
          f"{args.adapters} adapters r=16 all-linear")
    arch = ""
    if args.random_weights:  # the architecture in the name: e.g. serving_random_gpt_neox
        import json

        model_type = json.loads((args.random_weights / "config.json").read_text()).get("model_type", "")
        arch = "" if model_type == "llama" else f"_{model_type}"
    name = "serving" + ("" if DEVICE == "cpu" else f"_{DEVICE}") + ("_random" if args.random_weights else "") + arch
    report(name, rows, ["workload", "tok_per_s", "vs_naive", "vs_base_only"],
           chart=("workload", "tok_per_s", "generated tokens / s"),
           extra={"hot_load_p50_ms": round(p50, 1), "hot_load_max_ms": round(max(loads) * 1000, 1),
                  "http_overhead": round(http_overhead, 3), "requests": args.requests, "tokens": args.tokens,
                  "device": DEVICE, "weights": weights, "staggered_gap_s": round(gap, 3),
                  "staggered_static": arrivals["static"], "staggered_continuous": arrivals["continuous"]})
    print(f"hot-load p50 {p50:.1f} ms (max {max(loads) * 1000:.1f} ms over {len(loads)} loads); "
          f"HTTP overhead vs engine: {http_overhead * 100:+.1f}% per token")
    st, co = arrivals["static"], arrivals["continuous"]
    print(f"staggered arrivals ({args.requests} requests, one every {gap * 1000:.0f} ms): time to first token p50 "
          f"{st['ttft_p50_s']} s static vs {co['ttft_p50_s']} s continuous "
          f"({st['ttft_p50_s'] / max(co['ttft_p50_s'], 1e-9):.1f}x); mean latency {st['latency_mean_s']} s vs "
          f"{co['latency_mean_s']} s; {st['tok_per_s']} vs {co['tok_per_s']} tok/s")


def sampler_costs(engine, prompts, args) -> dict[str, float]:
    """tok/s of the mixed batch under four sampler set-ups, alternating runs, best of 3 each."""
    import dataclasses

    from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
    from adapterhub.serving.engines.hf.sampler import Picks

    class ArgmaxOnly:  # what the engine did for greedy rows before the sampler pipeline
        processors = ()

        def __call__(self, logits, rows):
            return Picks(logits.argmax(dim=-1).cpu())

    plain = SamplingParams(max_tokens=args.tokens, ignore_eos=True)  # every row decodes exactly --tokens
    extras = dataclasses.replace(plain, temperature=0.8, top_k=40, presence_penalty=0.5, frequency_penalty=0.3,
                                 repetition_penalty=1.1, logit_bias=((13, -5.0),), seed=0)
    setups = {
        "argmax-only sampler (before the pipeline)": (ArgmaxOnly(), [plain] * args.requests),
        "sampler pipeline, no extra parameters": (engine.sampler, [plain] * args.requests),
        "sampler pipeline, logprobs=5 on every row": (engine.sampler, [dataclasses.replace(plain, logprobs=5)]
                                                      * args.requests),
        "sampler pipeline, half the rows with penalties/bias/top-k": (
            engine.sampler, [extras if i % 2 else plain for i in range(args.requests)]),
    }
    pipeline = engine.sampler
    best: dict[str, float] = {}
    for _ in range(3):
        for name, (sampler, params) in setups.items():
            engine.sampler = sampler
            batch = [GenerationRequest(prompts[i], params[i], f"a{i % args.adapters}") for i in range(args.requests)]
            t, n = asyncio.run(run_engine(engine, batch))
            best[name] = max(best.get(name, 0.0), n / t)
    engine.sampler = pipeline
    base = best["argmax-only sampler (before the pipeline)"]
    rows = [{"workload": k, "tok_per_s": round(v, 1), "vs_argmax_only": round(v / base, 3)} for k, v in best.items()]
    report("serving_sampler" + ("" if DEVICE == "cpu" else f"_{DEVICE}"), rows,
           ["workload", "tok_per_s", "vs_argmax_only"],
           extra={"requests": args.requests, "tokens": args.tokens, "adapters": args.adapters, "device": DEVICE})
    return best


def engine_eos(tok) -> set[int]:
    ids = {tok.eos_token_id}
    tid = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(tid, int) and tid >= 0:
        ids.add(tid)
    return {i for i in ids if i is not None}


def _gen_len(ids: list[int], eos: list[int]) -> int:
    for j, t in enumerate(ids):
        if t in eos:
            return j
    return len(ids)


if __name__ == "__main__":
    main()
