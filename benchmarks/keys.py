"""The cost of tenant keys (``--auth keys``) on the demo model, measured in one run.

* End to end: 16-token chat answers (``ignore_eos``) on one adapter through the HTTP server with the
  official client, one request at a time, alternating a tenant key (scope globs, rpm and tpm limits:
  the full check — lookup, scope, limiter, usage meter) with the server's own ``--api-key`` (baseline:
  one constant-time comparison). Medians and their ratio.
* In process: the checking steps of one request alone (authenticate, scope check, rpm pre-check,
  admission, settlement), µs per request, as a share of the median 16-token request.
* Revocation: a second server on the same registry; seconds from ``keys revoke`` until that server
  refuses the key (polling every 20 ms), over several keys.

Run: ``python -m benchmarks.keys [--rounds 30] [--revocations 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
import openai

from adapterhub.loading.bases import pull_demo
from adapterhub.models import DEMO_MODEL
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.settings import Settings
from benchmarks.common import report, scratch_dir
from benchmarks.load import make_adapters

ROOT = "bench-root-key"


def _ask(url: str, key: str) -> float:
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=300)
    t0 = time.perf_counter()
    out = client.chat.completions.create(model="team-a-bot", max_tokens=16, temperature=0,
                                         messages=[{"role": "user", "content": "Tell me about bread."}],
                                         extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 16
    return time.perf_counter() - t0


async def _check_cost(store, secret: str, n: int) -> float:
    """Seconds per request of the key-checking steps alone (no HTTP, no model), on a key ring of its own."""
    from adapterhub.serving.metrics import Metrics
    from adapterhub.serving.tenants import Caller, KeyRing, check_scope, current_caller

    async def call(fn, *a):
        return fn(*a)

    keys = KeyRing(store, call, Metrics())
    await keys.refresh()
    t0 = time.perf_counter()
    for _ in range(n):
        key = await keys.authenticate(secret)
        caller = Caller(key, admin=key.admin)
        current_caller.set(caller)
        check_scope("team-a-bot@1", {DEMO_MODEL, "base"}, DEMO_MODEL)
        keys.precheck(caller)
        charge = keys.admit(caller, 40)
        keys.settle(charge, "team-a-bot@1", 24, 16)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30, help="requests per key kind (alternating)")
    ap.add_argument("--revocations", type=int, default=10)
    args = ap.parse_args()

    from adapterhub.serving.api import build_service
    from adapterhub.serving.app import make_app
    from adapterhub.serving.config import ServeConfig
    from adapterhub.serving.engines.hf import HFEngine
    from adapterhub.serving.server import BackgroundServer

    base = pull_demo(Settings())
    tmp = scratch_dir("bench-keys-")
    ops = Registry(LocalStore(tmp / "registry"), actor="ops")
    [adapter] = make_adapters(base.path, tmp / "adapters", 1, 8)
    ops.register(adapter, "team-a-bot", base_model=base.identity())
    _, secret = ops.keys.create("team-a", ["team-a-*", "shared-*"], rpm=100_000, tpm=10**9)
    config = ServeConfig(base=DEMO_MODEL, max_loaded=2, max_lora_rank=8, auth="keys", api_key=ROOT)

    engines = [HFEngine(base.path, model_id=DEMO_MODEL, fingerprint=base.fingerprint, dtype="bf16", max_loaded=2,
                        max_lora_rank=8) for _ in range(2)]
    first, second = (BackgroundServer(make_app(build_service(config, registry=Registry(LocalStore(tmp / "registry")),
                                                             engine=e, base_name=DEMO_MODEL))) for e in engines)
    try:
        with first as url, second as url2:
            for key in (ROOT, secret):  # warm-up: the adapter loaded, both paths taken once
                _ask(url, key)
            plain, keyed = [], []
            for _ in range(args.rounds):
                plain.append(_ask(url, ROOT))
                keyed.append(_ask(url, secret))
            per_check = asyncio.run(_check_cost(LocalStore(tmp / "registry"), secret, 2000))

            waits = []
            for i in range(args.revocations):
                _, s = ops.keys.create(f"short-{i}", ["*"])
                headers = {"Authorization": f"Bearer {s}"}
                assert httpx.get(url2 + "/v1/models", headers=headers).status_code == 200
                t0 = time.perf_counter()
                ops.keys.revoke(f"short-{i}")
                while httpx.get(url2 + "/v1/models", headers=headers).status_code != 401:
                    time.sleep(0.02)
                waits.append(time.perf_counter() - t0)
    finally:
        for e in engines:
            e.stop()
    p, k = statistics.median(plain), statistics.median(keyed)
    rows = [
        {"measure": "16-token request, --api-key (baseline)", "value": round(p * 1000, 1), "unit": "ms (median)"},
        {"measure": "16-token request, tenant key with limits", "value": round(k * 1000, 1), "unit": "ms (median)"},
        {"measure": "tenant key / baseline", "value": round(k / p, 3), "unit": "ratio"},
        {"measure": "key checking steps alone, per request", "value": round(per_check * 1e6, 1), "unit": "µs"},
        {"measure": "key checking / 16-token request", "value": round(100 * per_check / k, 4), "unit": "%"},
        {"measure": "revoke → refused by a 2nd server, p50", "value": round(statistics.median(waits), 3),
         "unit": "s"},
        {"measure": "revoke → refused by a 2nd server, max", "value": round(max(waits), 3), "unit": "s"},
    ]
    print(f"demo model, hf engine, one adapter r=8; {args.rounds} requests per key kind, alternating; "
          f"{args.revocations} revocations")
    report("keys", rows, ["measure", "value", "unit"],
           extra={"rounds": args.rounds, "revocations": args.revocations, "plain_s": _r(plain),
                  "keyed_s": _r(keyed), "revocation_s": _r(waits)})


def _r(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


if __name__ == "__main__":
    main()
