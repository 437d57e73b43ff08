"""What ``--deterministic`` costs and what it changes, on the demo model in one run.

For each mode (default batching, ``--deterministic``): 4 different greedy chat requests of 32 tokens
(``ignore_eos``) sent alone one after another, then the same 4 sent together through the HTTP server.
Reported: how many answers sent together differ from the same request sent alone, and the wall time of
the 4 sent together (the default mode's is the baseline).

Run: ``python -m benchmarks.deterministic``.
"""

from __future__ import annotations

import asyncio
import time

import openai

from adapterhub.loading.bases import pull_demo
from adapterhub.models import DEMO_MODEL
from adapterhub.settings import Settings
from benchmarks.common import report

PROMPTS = ["Write a long story about a lighthouse keeper.", "Explain how rainbows form, in detail.",
           "Describe a day in the life of a farmer.", "Tell me about the history of bread."]


def run(deterministic: bool) -> dict:
    from adapterhub.serving.api import create_app
    from adapterhub.serving.config import ServeConfig
    from adapterhub.serving.server import BackgroundServer

    pull_demo(Settings())
    app = create_app(ServeConfig(base=DEMO_MODEL, deterministic=deterministic, dtype="bf16"), use_registry=False)
    engine = app.state.stack.engine
    try:
        with BackgroundServer(app) as url:
            async def ask(p: str) -> str:
                client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
                out = await client.chat.completions.create(model=DEMO_MODEL, max_tokens=32, temperature=0,
                                                           messages=[{"role": "user", "content": p}],
                                                           extra_body={"ignore_eos": True})
                return out.choices[0].message.content or ""

            async def together() -> list[str]:
                return await asyncio.gather(*(ask(p) for p in PROMPTS))

            asyncio.run(ask("hi"))  # warm-up
            alone = [asyncio.run(ask(p)) for p in PROMPTS]
            t0 = time.perf_counter()
            both = asyncio.run(together())
            wall = time.perf_counter() - t0
    finally:
        engine.stop()
    return {"mode": "--deterministic" if deterministic else "default (batched)",
            "differ_from_alone": f"{sum(a != b for a, b in zip(alone, both))}/4", "together_wall_s": round(wall, 2),
            "peak_rows": engine.peak_rows}


def main() -> None:
    rows = [run(False), run(True)]
    for r in rows:
        r["wall_vs_default"] = round(r["together_wall_s"] / rows[0]["together_wall_s"], 2)
    print("demo model (bf16 requested: fp32 where the CPU has no bf16), hf engine; 4 greedy chat requests × 32 tokens")
    report("deterministic", rows, ["mode", "differ_from_alone", "together_wall_s", "wall_vs_default", "peak_rows"])


if __name__ == "__main__":
    main()
