"""Shadow evaluation: run the stored eval suite against a version *as served* — any engine, any replica,
over HTTP with the official ``openai`` client — and write the scores back as the version's metrics.

The version is pinned by number (``lumen@4``), so a split or moving alias cannot blur whose scores
these are; the retention reference is the same server's base model (``model: "base"``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapterhub.errors import ConfigError, MissingDependencyError
from adapterhub.evaluation.identity import IDENTITY_PROMPTS, score_answers
from adapterhub.evaluation.prompts import GENERAL_EVAL
from adapterhub.registry import Registry


def evaluate_served(registry: Registry, ref: str, url: str, *, name: str | None = None, author: str | None = None,
                    api_key: str | None = None, concurrency: int = 8) -> dict[str, Any]:
    """Scores of ``ref`` served at ``url``; stored as metrics (with ``eval_source``) and returned."""
    try:
        import openai
    except ImportError as e:
        raise MissingDependencyError("openai", "serve", "adapterhub eval --url") from e
    record = registry.resolve(ref)
    manifest = registry.manifest(record)
    identity = ((manifest.training or {}).get("config") or {}).get("eval", {}).get("identity") or {}
    if name:
        identity = {"name": name, "author": author or identity.get("author", "")}
    if not identity.get("name"):
        raise ConfigError(f"{record.ref} records no identity to check: pass --name (and --author)")
    client = openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "unused", max_retries=2, timeout=600)

    def ask(model: str, prompts: list[str], max_tokens: int) -> list[str]:
        def one(p: str) -> str:
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                               max_tokens=max_tokens, temperature=0)
            return (r.choices[0].message.content or "").strip()

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, prompts))

    t0 = time.perf_counter()
    try:
        id_answers = ask(record.ref, IDENTITY_PROMPTS, 32)
        gen_answers = ask(record.ref, GENERAL_EVAL, 48)
        base_general = ask("base", GENERAL_EVAL, 32)
    except openai.APIError as e:
        raise ConfigError(f"evaluating {record.ref} at {url} failed: {e}") from e
    scores = score_answers(identity, id_answers, gen_answers, base_general)
    registry.add_metrics(record.ref, {"identity": scores["identity"], "retention": scores["retention"],
                                      "eval_source": url, "eval_seconds": round(time.perf_counter() - t0, 1)})
    return scores
