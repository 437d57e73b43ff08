"""Replay data: keep the base's general abilities while teaching something narrow.

The default source is self-distillation: the base model's own greedy answers to built-in general
prompts, generated once and cached under ``<home>/cache/replay/<key>.jsonl`` where the key hashes the
base fingerprint, template, prompts and answer length. A user file in any supported format works too.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

from training.builtin_data import GENERAL_EVAL, GENERAL_REPLAY
from training.config import DataSection, ReplaySection
from training.data import Conversation, detect_format, read_records, to_conversation
from training.generation import answer


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


def mix_count(n_train: int, ratio: float) -> int:
    return int(round(n_train * ratio))


def build_replay(section: ReplaySection, n_train: int, *, model: Any, tokenizer: Any, template: str | None,
                 cache_dir: Path, base_fingerprint: str, seed: int) -> tuple[list[Conversation], dict[str, Any]]:
    """``round(ratio × n_train)`` replay conversations, cycling through the pool without bias."""
    want = mix_count(n_train, section.ratio)
    if want == 0:
        return [], {"replay": 0}
    if section.source == "self-distill":
        answers, cached = base_answers(model, tokenizer, template, GENERAL_REPLAY, section.max_new_tokens,
                                       cache_dir, base_fingerprint)
        pool = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                for p, a in zip(GENERAL_REPLAY, answers) if a.strip()]
        info: dict[str, Any] = {"replay_source": "self-distill", "replay_cached": cached}
    else:
        records = read_records(Path(section.source).expanduser())
        fmt = detect_format(records[0])
        pool = [to_conversation(r, fmt, DataSection(path=section.source), i) for i, r in enumerate(records)]
        info = {"replay_source": section.source}
    rng = random.Random(seed)
    out: list[Conversation] = []
    while len(out) < want:
        batch = pool[:]
        rng.shuffle(batch)
        out.extend(batch[: want - len(out)])
    info["replay"] = len(out)
    return out, info


def retention_reference(model: Any, tokenizer: Any, template: str | None, cache_dir: Path,
                        base_fingerprint: str, max_new_tokens: int = 32) -> list[str]:
    """The base's answers to the held-out general prompts (what retention compares against)."""
    return base_answers(model, tokenizer, template, GENERAL_EVAL, max_new_tokens, cache_dir, base_fingerprint)[0]
