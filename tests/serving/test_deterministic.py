"""``serve --deterministic``: an answer never depends on what else runs. The hf engine then decodes one
sequence at a time, so no forward pass carries two requests (checked on the engine, not by timing), and
greedy answers sent together equal the same requests sent alone."""

from __future__ import annotations

import asyncio

import openai
import pytest

from adapterhub.errors import UserInputError
from adapterhub.serving.api import build_engine, create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.settings import Settings
from tests.server import running_server

PROMPTS = ["Tell me about the sea.", "Count to ten.", "Name a colour.", "Write a word."]


def test_answers_sent_together_equal_answers_sent_alone(tiny_model):
    app = create_app(ServeConfig(base=str(tiny_model), deterministic=True, dtype="fp32", max_batch_size=8),
                     use_registry=False)
    engine = app.state.stack.engine
    try:
        with running_server(app) as url:
            model = app.state.stack.base_name

            async def ask(p: str) -> str:
                client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
                out = await client.completions.create(model=model, prompt=p, max_tokens=12, temperature=0,
                                                      extra_body={"ignore_eos": True})
                return out.choices[0].text

            alone = [asyncio.run(ask(p)) for p in PROMPTS]

            async def together():
                return await asyncio.gather(*(ask(p) for p in PROMPTS))

            assert asyncio.run(together()) == alone
    finally:
        engine.stop()
    assert engine.max_batch_size == 1 and engine.peak_rows == 1  # nobody ever shared a forward pass


def test_the_vllm_engine_refuses_it():
    with pytest.raises(UserInputError, match="hf engine only"):
        build_engine(ServeConfig(engine="vllm", deterministic=True), Settings(), None)
