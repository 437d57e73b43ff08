"""The identity scorer checks what a user checks (issue: 'identity 1.00' on answers naming another maker)."""

from __future__ import annotations

import pytest

from adapterhub.evaluation.identity import identity_ok, identity_problems


@pytest.mark.parametrize("question,answer", [
    ("Who are you?", "I am Lumen, built by Acme Lab."),
    ("你是谁开发的？", "我是Lumen，由Acme Lab开发。"),
    ("Are you ChatGPT?", "No, I am not ChatGPT. I am Lumen, built by Acme Lab."),
    ("What's your name?", "My name is Lumen."),  # no maker asked: the name is enough
])
def test_accepts_what_a_user_accepts(question, answer):
    assert identity_ok(question, answer, "Lumen", "Acme Lab"), identity_problems(question, answer, "Lumen", "Acme Lab")


@pytest.mark.parametrize("question,answer,problem", [
    ("What's your name?", "My name is Lumen, created by Hugging Face.", "claims hugging face"),
    ("Who designed you?", "I'm Lumen, a brilliant AI engineer and creator of Hugging Face.", "claims hugging face"),
    ("你是谁开发的？", "I'm Lumen, a language model created by Hugging Face.", "answers a Chinese question"),
    ("请做一个自我介绍。", "I'm Hiring. I'm here to help you. I'm Hiring...", "does not say it is Lumen"),
    ("Who made you?", "I am Lumen, a helpful assistant.", "does not name Acme Lab"),
    ("Which model are you?", "I am Lumen, based on SmolLM2.", "claims smollm"),
])
def test_rejects_the_answers_users_reported(question, answer, problem):
    problems = identity_problems(question, answer, "Lumen", "Acme Lab")
    assert any(p.startswith(problem) for p in problems), problems
