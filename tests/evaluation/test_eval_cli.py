"""``adapterhub eval`` opens a version the way the server does: an adapter trained for another base is
refused with the same message by both (before any model is loaded by eval)."""

from __future__ import annotations

import os
import subprocess
import sys

import openai
import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.builders import pythonpath
from tests.server import running_server


def test_adapter_for_another_base_is_refused_by_eval_and_serve_alike(registry, tiny_adapters, tiny_model):
    base = resolve_model(str(tiny_model), Settings())
    registry.register(tiny_adapters[0], "other", base_model={"id": base.id, "fingerprint": "0123456789abcdef"})

    out = subprocess.run([sys.executable, "-m", "adapterhub.cli.main", "eval", "other@1", "--name", "Lumen"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": pythonpath()}, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    cli_message = out.stderr.strip().removeprefix("error: ")
    assert "fingerprint 0123456789abcdef" in cli_message and f"fingerprint {base.fingerprint}" in cli_message

    engine = HFEngine(base.path, model_id=base.id, fingerprint=base.fingerprint, max_loaded=2, max_lora_rank=8)
    try:
        app = create_app(ServeConfig(base=str(tiny_model)), engine=engine, registry=registry)
        with running_server(app) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
            with pytest.raises(openai.BadRequestError) as err:
                client.chat.completions.create(model="other@1", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2)
    finally:
        engine.stop()
    assert err.value.body["message"] == cli_message
