"""The base model's own answers to fixed prompts, cached per base fingerprint and template.

Training uses them as replay data (self-distillation); evaluation uses the answers to the held-out
general prompts as the retention reference. Cached under ``<cache>/replay/<key>.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from adapterhub.evaluation.generation import answer
from adapterhub.evaluation.prompts import GENERAL_EVAL


def cache_key(base_fingerprint: str, template: str | None, prompts: list[str], max_new_tokens: int) -> str:
    h = hashlib.sha256(json.dumps([base_fingerprint, template, prompts, max_new_tokens]).encode())
    return h.hexdigest()[:16]


def base_answers(model: Any, tokenizer: Any, template: str | None, prompts: list[str], max_new_tokens: int,
                 cache_dir: Path, base_fingerprint: str) -> tuple[list[str], bool]:
    """The base's answers to ``prompts`` (cached). Returns (answers, from_cache)."""
    key = cache_key(base_fingerprint, template, prompts, max_new_tokens)
    path = cache_dir / "replay" / f"{key}.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        if [r["prompt"] for r in rows] == prompts:
            return [r["answer"] for r in rows], True
    answers = answer(model, tokenizer, prompts, template=template, max_new_tokens=max_new_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text("".join(json.dumps({"prompt": p, "answer": a}, ensure_ascii=False) + "\n"
                           for p, a in zip(prompts, answers)), encoding="utf-8")
    os.replace(tmp, path)
    return answers, False


def retention_reference(model: Any, tokenizer: Any, template: str | None, cache_dir: Path,
                        base_fingerprint: str, max_new_tokens: int = 32) -> list[str]:
    """The base's answers to the held-out general prompts (what retention compares against)."""
    return base_answers(model, tokenizer, template, GENERAL_EVAL, max_new_tokens, cache_dir, base_fingerprint)[0]
