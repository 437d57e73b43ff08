"""``adapterhub chat`` driven as a subprocess: two turns with history kept, /reset, /exit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.settings import Settings
from tests.builders import pythonpath


def _expected(tiny_model, adapter_dir, messages, n):
    from adapterhub.serving.engines.base import GenerationRequest, SamplingParams
    from adapterhub.serving.engines.hf import HFEngine

    eng = HFEngine(tiny_model, model_id="tiny", max_loaded=1)
    eng.load_adapter("a", adapter_dir)

    async def go():
        out = []
        async for d in eng.generate(GenerationRequest(eng.encode_chat(messages, None), SamplingParams(max_tokens=n), "a")):
            out.append(d.text)
        return "".join(out)

    eng.start()
    try:
        return asyncio.run(go())
    finally:
        eng.stop()


def test_chat_two_turns_keeps_history(registry, tiny_adapters, tiny_model, _isolated_home):
    registry.register(tiny_adapters[0], "ad", base_model=resolve_model(str(tiny_model), Settings()).identity())
    proc = subprocess.run(
        [sys.executable, "-m", "adapterhub.cli.main", "chat", str(tiny_model), "--adapter", "ad", "--max-tokens", "8"],
        input="hello who are you\nthe cat\n/reset\nthe cat\n/exit\n", capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": pythonpath()},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("chatting with") and "+ ad@1" in out and "(conversation reset)" in out
    answers = [chunk.split("\n")[0] for chunk in out.split(">>> ")[1:] if chunk and not chunk.startswith("(")]
    answers = [a for a in answers if a]
    first = _expected(tiny_model, tiny_adapters[0], [{"role": "user", "content": "hello who are you"}], 8)
    with_history = _expected(tiny_model, tiny_adapters[0], [
        {"role": "user", "content": "hello who are you"}, {"role": "assistant", "content": first},
        {"role": "user", "content": "the cat"}], 8)
    fresh = _expected(tiny_model, tiny_adapters[0], [{"role": "user", "content": "the cat"}], 8)
    assert with_history != fresh  # otherwise this test could not tell history from no history
    assert answers[0] == first.split("\n")[0]
    assert answers[1] == with_history.split("\n")[0]
    assert answers[2] == fresh.split("\n")[0]  # after /reset the history is gone


def test_chat_unknown_model_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "adapterhub.cli.main", "chat", "no-such-model"], input="",
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": pythonpath()})
    assert proc.returncode != 0 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_chat_with_an_adapter_ref_uses_its_recorded_base(registry, tiny_adapters, tiny_model):
    import io

    from adapterhub.serving.api import chat

    registry.register(tiny_adapters[0], "ad", base_model=resolve_model(str(tiny_model), Settings()).identity())
    out = io.StringIO()
    chat("ad@1", max_tokens=8, stdin=io.StringIO("the cat\n/exit\n"), stdout=out)
    assert "+ ad@1" in out.getvalue()
    answer = out.getvalue().split(">>> ")[1].split("\n")[0]
    assert answer == _expected(tiny_model, tiny_adapters[0], [{"role": "user", "content": "the cat"}], 8).split("\n")[0]


def test_chat_missing_image_is_reported_before_any_model_loads(tmp_path, monkeypatch):
    from adapterhub.errors import UserInputError
    from adapterhub.serving import api

    monkeypatch.setattr(api, "build_service", lambda *a, **k: pytest.fail("loaded a model first"))
    with pytest.raises(UserInputError, match="--image: no such file"):
        api.chat("smollm2-135m-instruct", image=str(tmp_path / "missing.png"))
