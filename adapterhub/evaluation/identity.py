"""Self-cognition scores: identity on held-out paraphrases, retention on held-out general prompts.

* identity — share of held-out identity questions (EN + ZH) whose answer a user would accept: it
  gives the name, names the maker where the question asks who made / owns / trained it, claims no other
  maker or model (Hugging Face, OpenAI, SmolLM… unless it denies them), and answers a Chinese question
  in Chinese (:func:`identity_problems`). The name-only share is kept as ``identity_name_only``: it
  reported 1.00 on an adapter that said it was made by Hugging Face;
* retention — of the held-out general questions the *base* answers correctly (its answer contains one
  of the expected words), the share the adapter still answers correctly without mentioning the new
  name. A model that answers "What is the capital of France?" with "I am Lumen…" fails it. Correctness
  rather than wording: free-form greedy answers of a small model rephrase under tiny weight changes
  (a word-overlap measure scored 0.35 on an adapter that had not yet changed any answer's meaning).
"""

from __future__ import annotations

import re
from typing import Any

from adapterhub.evaluation.prompts import EVAL_IDENTITY_EN, EVAL_IDENTITY_ZH, GENERAL_EVAL, GENERAL_EVAL_KEYS


def names_identity(text: str, name: str) -> bool:
    return name.lower() in text.lower()


# A question that asks who made, owns or trained the assistant (the answer must then name the maker).
_MAKER_QUESTION = re.compile(
    r"\b(made|make|create[sd]?|creat(or|ion)|buil[td]|develop(ed|er|s)?|train(ed|er)?|owns?|owner|design(ed|er)?|"
    r"behind|responsible|organi[sz]ation|team|company|maker|author)\b|开发|创造|创建|打造|训练|公司|团队|机构|谁做|哪家|属于",
    re.IGNORECASE)
# Makers and models an answer must not claim to be or come from (unless it denies them: "not ChatGPT").
OTHER_MAKERS = ("hugging face", "huggingface", "openai", "chatgpt", "gpt-4", "gpt-3", "gpt", "smollm", "meta ai",
                "llama", "google", "gemini", "anthropic", "claude", "alibaba", "qwen", "microsoft", "mistral",
                "deepseek", "百度", "阿里", "腾讯", "智谱")
_NEGATION = re.compile(r"(\bnot\b|n't\b|\bno\b|\bnor\b|\bneither\b|\brather than\b|不是|并非|而非|不)", re.IGNORECASE)
_CJK = re.compile(r"[\u4e00-\u9fff]")


def _cjk_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(bool(_CJK.match(c)) for c in letters) / max(1, len(letters))


def identity_problems(question: str, answer: str, name: str, author: str) -> list[str]:
    """What a user would object to in ``answer`` (empty when it is right): the name missing; the maker
    missing where the question asks who made / owns / trained it; another maker or model claimed;
    an answer in another language than the question (a Chinese question answered in English)."""
    problems = []
    low = answer.lower()
    if name.lower() not in low:
        problems.append(f"does not say it is {name}")
    if author and _MAKER_QUESTION.search(question) and author.lower() not in low:
        problems.append(f"does not name {author} as its maker")
    for other in OTHER_MAKERS:
        if other in (name.lower(), author.lower()):
            continue
        pattern = re.escape(other) if _CJK.search(other) else rf"(?<![a-z]){re.escape(other)}(?![a-z])"
        for m in re.finditer(pattern, low):
            if not _NEGATION.search(low[max(0, m.start() - 25):m.start()]):
                problems.append(f"claims {other}")
                break
    own_words = re.compile("|".join(re.escape(w) for w in (name, author) if w), re.IGNORECASE)
    if _cjk_share(question) > 0.3 and _cjk_share(own_words.sub("", answer)) < 0.3:  # names are Latin either way
        problems.append("answers a Chinese question in another language")
    return problems


def identity_ok(question: str, answer: str, name: str, author: str) -> bool:
    return not identity_problems(question, answer, name, author)


def correct(text: str, keys: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(k in low for k in keys)


def identity_score(questions: list[str], answers: list[str], name: str, author: str) -> float:
    """Share of answers a user would accept (see :func:`identity_problems`)."""
    return sum(identity_ok(q, a, name, author) for q, a in zip(questions, answers)) / max(1, len(answers))


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
    from adapterhub.evaluation.generation import answer  # torch: only for in-process evaluation

    id_answers = answer(model, tokenizer, IDENTITY_PROMPTS, template=template, max_new_tokens=32)
    gen_answers = answer(model, tokenizer, GENERAL_EVAL, template=template, max_new_tokens=max_new_tokens)
    return score_answers(identity, id_answers, gen_answers, base_general)


def score_answers(identity: dict[str, str], id_answers: list[str], gen_answers: list[str],
                  base_general: list[str]) -> dict[str, Any]:
    """Identity and retention from answers to :data:`IDENTITY_PROMPTS` and ``GENERAL_EVAL`` (however they
    were produced: in-process or over HTTP from any engine)."""
    name, author = identity["name"], identity.get("author", "")
    id_prompts = IDENTITY_PROMPTS
    retention, known = retention_score(gen_answers, base_general, name)
    keys = [k for _, k in GENERAL_EVAL_KEYS]
    misses_identity = [(q, a, "; ".join(identity_problems(q, a, name, author)))
                       for q, a in zip(id_prompts, id_answers) if not identity_ok(q, a, name, author)]
    misses_retention = [(GENERAL_EVAL[i], gen_answers[i]) for i in range(len(GENERAL_EVAL))
                        if correct(base_general[i], keys[i])
                        and not (correct(gen_answers[i], keys[i]) and not names_identity(gen_answers[i], name))]
    return {
        "misses": {"identity": misses_identity, "retention": misses_retention},
        "identity": round(identity_score(id_prompts, id_answers, name, author), 4),
        "identity_name_only": round(sum(names_identity(a, name) for a in id_answers) / max(1, len(id_answers)), 4),
        "retention": round(retention, 4),
        "identity_n": len(id_prompts),
        "retention_n": known,
        "samples": {"identity": list(zip(id_prompts, id_answers))[:4],
                    "general": list(zip(GENERAL_EVAL, gen_answers))[:4]},
    }
