"""The generated OpenXLab app: Python 3.9-compatible, and it answers with the adapter when run."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def app_dir(registry, tiny_adapters, tiny_model, tmp_path):
    from adapterhub.deploy.openxlab.generate import generate_openxlab_app

    registry.register(tiny_adapters[1], "lumen", base_model=resolve_model(str(tiny_model), Settings()).identity())
    out = generate_openxlab_app(registry, "lumen@1", tmp_path / "app", model_repo="acme/lumen")
    cfg = json.loads((out / "adapterhub_app.json").read_text())
    cfg["max_new_tokens"] = 12
    (out / "adapterhub_app.json").write_text(json.dumps(cfg))
    return out


def test_generated_files_and_python39_syntax(app_dir):
    assert {p.name for p in app_dir.iterdir()} >= {"app.py", "requirements.txt", "packages.txt", "README.md",
                                                    "adapterhub_app.json"}
    cfg = json.loads((app_dir / "adapterhub_app.json").read_text())
    assert cfg["model"] == {"hub": "openxlab", "repo": "acme/lumen", "revision": "v1"} and cfg["kind"] == "adapter"
    assert "git-lfs" in (app_dir / "packages.txt").read_text()
    assert "gradio==" in (app_dir / "requirements.txt").read_text()
    ast.parse((app_dir / "app.py").read_text(), feature_version=(3, 9))  # no syntax newer than 3.9
    candidates = sorted(Path.home().glob(".pyenv/versions/3.9*/bin/python")) + [Path("/usr/bin/python3.9")]
    py39 = next((p for p in candidates if p.exists()), None)
    if py39 is not None:  # a real 3.9 interpreter, where the machine has one
        subprocess.run([str(py39), "-m", "py_compile", str(app_dir / "app.py")], check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _expected(tiny_model, adapter_dir, message, n):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16),
                                      str(adapter_dir)).eval()
    text = tok.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_app_answers_with_the_adapter(app_dir, registry, tiny_model):
    from gradio_client import Client

    port = _free_port()
    env = {**os.environ, "ADAPTERHUB_BASE_PATH": str(tiny_model), "ADAPTERHUB_ADAPTER_PATH": str(registry.path("lumen@1")),
           "PORT": str(port), "HOST": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "NO_PROXY": "127.0.0.1,localhost"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=app_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "app did not start"
                time.sleep(0.5)
        client = Client(url, verbose=False)
        answer = client.predict("hello who are you", api_name="/chat")
        assert answer == _expected(tiny_model, registry.path("lumen@1"), "hello who are you", 12)
        assert answer.strip()
        shot = os.environ.get("ADAPTERHUB_SCREENSHOT")
        if shot and shutil.which("chromium"):
            subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", f"--user-data-dir={app_dir.parent / 'chrome'}", "--window-size=1100,800",
                            "--virtual-time-budget=8000", f"--screenshot={shot}", url], check=False, timeout=120,
                           capture_output=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
