"""The hf engine leaves CPU parallelism to its worker thread alone.

OpenMP keeps a helper-thread pool per application thread that ran a parallel op; with more of them than
CPUs, libgomp parks its threads between ops and the worker's decode steps slowed by half (36 vs 24 ms on
the demo model, 60 vs 32 ms with 8 adapters; `adapterhub.serving.engines.hf.threads`). What a user would see is the
speed; what a test can check without timing is that no other pool is left behind: after the engine
loaded the model or an adapter on the caller's thread, no OpenMP helper of that thread remains.
Run in a fresh interpreter so other tests' threads do not count.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.builders import pythonpath

PROBE = r"""
import json, os, sys, threading, time
from pathlib import Path
import torch
from adapterhub.serving.engines.hf import HFEngine

def helpers():  # OS threads Python does not know: OpenMP's (tqdm's monitor and the like are Python threads)
    known = {t.native_id for t in threading.enumerate()}
    return {int(t) for t in os.listdir("/proc/self/task")} - known

def left(start):  # a released helper exits on its own after the pause returns (detached, not joined): let it go
    deadline = time.monotonic() + 10
    while (extra := helpers() - start) and time.monotonic() < deadline:
        time.sleep(0.05)
    return extra

torch.set_grad_enabled(False)
start = helpers()
torch.ones(8_000_000).add_(1)  # a parallel op on this thread: OpenMP gives it a pool of helpers
after_op = helpers() - start
engine = HFEngine(Path(sys.argv[1]), model_id="tiny", dtype="fp32")
after_init = left(start)
torch.ones(8_000_000).add_(1)
engine.load_adapter("ad", Path(sys.argv[2]))
after_load = left(start)
print(json.dumps({"after_op": len(after_op), "after_init": len(after_init), "after_load": len(after_load)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
@pytest.mark.skipif(torch.get_num_threads() < 2 or "OpenMP" not in torch.__config__.parallel_info(),
                    reason="needs OpenMP with at least 2 intra-op threads")
def test_loading_thread_keeps_no_openmp_pool(tiny_model, tiny_adapters):
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tiny_model), str(tiny_adapters[0])],
                          capture_output=True, text=True, timeout=300, env={
                              "PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin",
                              # scipy (imported by transformers once installed, e.g. by lm-eval) starts an
                              # OpenBLAS worker thread at import: not an OpenMP pool, and not what this counts
                              "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["after_op"] >= 1, counts  # the probe does create a pool: otherwise the rest proves nothing
    assert counts["after_init"] == 0, counts
    assert counts["after_load"] == 0, counts
