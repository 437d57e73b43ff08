"""Replay data: keep the base's general abilities while teaching something narrow.

The default source is self-distillation: the base model's own greedy answers to built-in general
prompts, generated once and cached under ``<home>/cache/replay/<key>.jsonl`` where the key hashes the
base fingerprint, template, prompts and answer length. A user file in any supported format works too.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from adapterhub.evaluation.reference import base_answers
from adapterhub.training.builtin_data import GENERAL_REPLAY
from adapterhub.training.config import DataSection, ReplaySection
from adapterhub.training.data import Conversation, detect_format, read_records, to_conversation


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
