"""``adapterhub serve --ray`` as a user runs it: the command starts a local Ray cluster, serves the API on the
given port, and stops (cluster and all) on Ctrl-C."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray[serve] not installed")]


def test_serve_ray_from_the_command_line(tiny_model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ADAPTERHUB_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "adapterhub.cli.main", "serve", "--ray", "--replicas", "1",
                             "--replica-cpus", "0.5", "--base", str(tiny_model), "--served-name", "tiny",
                             "--dtype", "fp32", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &` in a
                            # script) ignores SIGINT, and children inherit that, so the command would never see it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    announce = f"serving 'tiny' on Ray Serve, 1 replica, on {url}/v1"
    try:
        deadline = time.monotonic() + 240
        while not any(announce in line for line in lines):  # what the user waits for
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "serve --ray did not come up"
            time.sleep(1)
        r = httpx.get(url + "/v1/models", timeout=30)
        assert [m["id"] for m in r.json()["data"]] == ["tiny"]
        assert r.headers["x-adapterhub-replica"]
        chat = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "max_tokens": 3,
                                                              "messages": [{"role": "user", "content": "hi"}]},
                          timeout=120)
        assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        out = "".join(lines)
    # Ctrl-C stops it: a clean exit, or 130 (the shell's code for SIGINT) when the interrupt lands while Ray
    # itself is shutting down; either way nothing answers on the port any more
    assert proc.returncode in (0, 130), out
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/v1/models", timeout=5)


def test_a_hung_serve_shutdown_does_not_keep_ctrl_c_from_ending_the_command(monkeypatch):
    """A ``serve.shutdown()`` that does not return: the command still stops Ray and returns."""
    from adapterhub.deploy.ray import app

    hung = threading.Event()
    stopped: list[str] = []

    def serve_shutdown():
        stopped.append("serve")
        hung.wait(120)
        stopped.append("serve returned")

    monkeypatch.setattr(app.serve, "shutdown", serve_shutdown)
    monkeypatch.setattr(app.ray, "shutdown", lambda: stopped.append("ray"))
    app.stop_ray(timeout_s=0.5)
    assert stopped == ["serve", "ray"]  # Ray stopped while Serve's shutdown was still hanging
    hung.set()
