"""Self-cognition scores: identity on held-out paraphrases, retention on held-out general prompts.

* identity — share of held-out identity questions (EN + ZH) whose answer names the new identity
  (the name, case-insensitive);
* retention — share of held-out general prompts where the adapter's answer does not mention the new
  name and still agrees with the base's answer: word-sequence similarity (difflib ratio over the first
  30 words) ≥ 0.5. A model that answers "What is the capital of France?" with "I am Lumen…" fails it.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from training.builtin_data import EVAL_IDENTITY_EN, EVAL_IDENTITY_ZH, GENERAL_EVAL
from training.generation import answer

AGREEMENT = 0.5


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())[:30]


def names_identity(text: str, name: str) -> bool:
    return name.lower() in text.lower()


def agrees(adapter: str, base: str, name: str) -> bool:
    if names_identity(adapter, name) and not names_identity(base, name):
        return False
    return difflib.SequenceMatcher(None, _words(adapter), _words(base)).ratio() >= AGREEMENT


def identity_score(answers: list[str], name: str) -> float:
    return sum(names_identity(a, name) for a in answers) / max(1, len(answers))


def retention_score(adapter_answers: list[str], base_answers: list[str], name: str) -> float:
    pairs = list(zip(adapter_answers, base_answers))
    return sum(agrees(a, b, name) for a, b in pairs) / max(1, len(pairs))


def evaluate_identity(model: Any, tokenizer: Any, template: str | None, identity: dict[str, str],
                      base_general: list[str], max_new_tokens: int = 48) -> dict[str, Any]:
    """Both scores for a model with the adapter active, plus the answers for inspection."""
    name = identity["name"]
    id_prompts = EVAL_IDENTITY_EN + EVAL_IDENTITY_ZH
    id_answers = answer(model, tokenizer, id_prompts, template=template, max_new_tokens=32)
    gen_answers = answer(model, tokenizer, GENERAL_EVAL, template=template, max_new_tokens=max_new_tokens)
    return {
        "identity": round(identity_score(id_answers, name), 4),
        "retention": round(retention_score(gen_answers, base_general, name), 4),
        "identity_n": len(id_prompts),
        "retention_n": len(GENERAL_EVAL),
        "samples": {"identity": list(zip(id_prompts, id_answers))[:4],
                    "general": list(zip(GENERAL_EVAL, gen_answers))[:4]},
    }
