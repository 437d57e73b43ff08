"""A benchmark's scratch directory (gigabytes for a load run) is gone after it exits, however it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys, time
from benchmarks.common import scratch_dir
d = scratch_dir("bench-test-")
(d / "blob").write_bytes(b"x" * 1024)
print(d, flush=True)
if sys.argv[1] == "wait":
    time.sleep(60)
elif sys.argv[1] == "fail":
    raise RuntimeError("benchmark failed")
"""


def _start(mode: str) -> tuple[subprocess.Popen[str], Path]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().strip())
    assert path.name.startswith("bench-test-"), proc.stderr.read() if proc.stderr else ""
    return proc, path


def test_removed_after_a_normal_exit_and_a_failure() -> None:
    for mode, rc in (("done", 0), ("fail", 1)):
        proc, path = _start(mode)
        assert proc.wait(timeout=60) == rc
        assert not path.exists()


def test_removed_when_killed_with_sigterm() -> None:
    proc, path = _start("wait")
    assert (path / "blob").exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not path.exists()
