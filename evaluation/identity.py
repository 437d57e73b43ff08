"""Self-cognition scores: identity on held-out paraphrases, retention on held-out general prompts.

* identity — share of held-out identity questions (EN + ZH) whose answer names the new identity
  (the name, case-insensitive);
* retention — of the held-out general questions the *base* answers correctly (its answer contains one
  of the expected words), the share the adapter still answers correctly without mentioning the new
  name. A model that answers "What is the capital of France?" with "I am Lumen…" fails it. Correctness
  rather than wording: free-form greedy answers of a small model rephrase under tiny weight changes
  (a word-overlap measure scored 0.35 on an adapter that had not yet changed any answer's meaning).
"""

from __future__ import annotations

from typing import Any

from evaluation.prompts import EVAL_IDENTITY_EN, EVAL_IDENTITY_ZH, GENERAL_EVAL, GENERAL_EVAL_KEYS


def names_identity(text: str, name: str) -> bool:
    return name.lower() in text.lower()


def correct(text: str, keys: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(k in low for k in keys)


def identity_score(answers: list[str], name: str) -> float:
    return sum(names_identity(a, name) for a in answers) / max(1, len(answers))


def retention_score(adapter_answers: list[str], base_answers: list[str], name: str,
                    keys: list[tuple[str, ...]] | None = None) -> tuple[float, int]:
    """(score, number of questions the base answered correctly)."""
    keys = keys or [k for _, k in GENERAL_EVAL_KEYS]
    known = [i for i, b in enumerate(base_answers) if correct(b, keys[i])]
    kept = sum(correct(adapter_answers[i], keys[i]) and not names_identity(adapter_answers[i], name) for i in known)
    return kept / max(1, len(known)), len(known)


IDENTITY_PROMPTS = EVAL_IDENTITY_EN + EVAL_IDENTITY_ZH


def evaluate_identity(model: Any, tokenizer: Any, template: str | None, identity: dict[str, str],
                      base_general: list[str], max_new_tokens: int = 48) -> dict[str, Any]:
    """Both scores for a model with the adapter active, plus the answers for inspection."""
    from evaluation.generation import answer  # torch: only for in-process evaluation

    id_answers = answer(model, tokenizer, IDENTITY_PROMPTS, template=template, max_new_tokens=32)
    gen_answers = answer(model, tokenizer, GENERAL_EVAL, template=template, max_new_tokens=max_new_tokens)
    return score_answers(identity, id_answers, gen_answers, base_general)


def score_answers(identity: dict[str, str], id_answers: list[str], gen_answers: list[str],
                  base_general: list[str]) -> dict[str, Any]:
    """Identity and retention from answers to :data:`IDENTITY_PROMPTS` and ``GENERAL_EVAL`` (however they
    were produced: in-process or over HTTP from any engine)."""
    name = identity["name"]
    id_prompts = IDENTITY_PROMPTS
    retention, known = retention_score(gen_answers, base_general, name)
    keys = [k for _, k in GENERAL_EVAL_KEYS]
    misses_identity = [(q, a) for q, a in zip(id_prompts, id_answers) if not names_identity(a, name)]
    misses_retention = [(GENERAL_EVAL[i], gen_answers[i]) for i in range(len(GENERAL_EVAL))
                        if correct(base_general[i], keys[i])
                        and not (correct(gen_answers[i], keys[i]) and not names_identity(gen_answers[i], name))]
    return {
        "misses": {"identity": misses_identity, "retention": misses_retention},
        "identity": round(identity_score(id_answers, name), 4),
        "retention": round(retention, 4),
        "identity_n": len(id_prompts),
        "retention_n": known,
        "samples": {"identity": list(zip(id_prompts, id_answers))[:4],
                    "general": list(zip(GENERAL_EVAL, gen_answers))[:4]},
    }
