"""Image questions for LLaVA-style models: sample answers during training and held-out accuracy.

Prompts are rendered the way the server renders an OpenAI request with an image part and a text part
(through the processor and the chat template), and answered greedily, one image at a time.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from adapterhub.errors import ConfigError


def answer_images(model: Any, processor: Any, template: str | None, items: list[tuple[Any, str]],
                  max_new_tokens: int = 32) -> list[str]:
    """Greedy answers to (PIL image, question) pairs."""
    answers = []
    was_training = model.training
    model.eval()
    try:
        for image, question in items:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            text = processor.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                 add_generation_prompt=True)
            enc = processor(images=[image], text=[text], return_tensors="pt").to(model.device)
            enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=processor.tokenizer.pad_token_id)
            answers.append(processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                           .strip())
    finally:
        model.train(was_training)
    return answers


def normalize(text: str) -> str:
    return re.sub(r"[\s.!,;:]+$", "", text.strip().lower())


def read_qa(path: Path) -> list[dict[str, str]]:
    """Held-out records: ``image``, ``question`` and ``answer`` (LLaVA-style ``conversations`` also accepted),
    optionally ``kind`` (scores are also given per kind)."""
    try:
        rows = json.loads(path.read_text()) if path.suffix == ".json" else [
            json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as e:
        raise ConfigError(f"eval.image_qa: {path} is not valid JSON / JSON lines ({e})") from None
    out = []
    for i, r in enumerate(rows if isinstance(rows, list) else [rows]):
        try:
            if "conversations" in r:
                q = next(t["value"] for t in r["conversations"] if t["from"] in ("human", "user"))
                a = next(t["value"] for t in r["conversations"] if t["from"] in ("gpt", "assistant"))
                r = {**r, "question": q.replace("<image>", "").strip(), "answer": a}
            out.append({"image": r["image"], "question": r["question"], "answer": r["answer"],
                        "kind": r.get("kind", "")})
        except (KeyError, TypeError, StopIteration, AttributeError):
            raise ConfigError(f"eval.image_qa: record {i} of {path} needs image, question and answer (or LLaVA "
                              "conversations)") from None
    if not out:
        raise ConfigError(f"eval.image_qa: {path} holds no records")
    return out


def score_image_qa(model: Any, processor: Any, template: str | None, path: Path, folder: Path,
                   max_new_tokens: int = 8) -> dict[str, Any]:
    """Exact-match accuracy (case, surrounding space and final punctuation ignored), overall and per kind,
    with every raw answer kept for inspection."""
    from PIL import Image

    rows = read_qa(path)
    answers = answer_images(model, processor, template,
                            [(Image.open(folder / r["image"]).convert("RGB"), r["question"]) for r in rows],
                            max_new_tokens)
    hits: dict[str, list[bool]] = defaultdict(list)
    raw = []
    for r, a in zip(rows, answers):
        ok = normalize(a) == normalize(r["answer"])
        hits[""].append(ok)
        if r["kind"]:
            hits[r["kind"]].append(ok)
        raw.append({"image": r["image"], "question": r["question"], "expected": r["answer"], "answer": a, "ok": ok})
    scores: dict[str, Any] = {("image_qa" if k == "" else f"image_qa_{k}"): round(sum(v) / len(v), 4)
                              for k, v in hits.items()}
    scores["image_qa_n"] = len(rows)
    scores["answers"] = raw
    return scores
