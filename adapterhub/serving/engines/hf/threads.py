"""Keep the decode thread's CPU parallelism fast: one OpenMP thread pool in the process, the worker's.

OpenMP (PyTorch's CPU intra-op backend on Linux) keeps a pool of helper threads for *each* application
thread that ran a parallel op. The engine decodes on its own worker thread, but adapters are copied (and
the model loaded, images prepared) on the caller's thread: a parallel op there leaves that thread's pool
alive (loading 8 adapters into the demo model's slots did; loading the demo model alone did not). Once the process holds
more OpenMP threads than CPUs, libgomp stops spin-waiting between parallel regions and parks its threads
on a futex instead, so every short op pays a sleep/wake round trip. On the 2-core CI machine a decode
step of the demo model took 36 ms on the worker thread instead of 24 ms (60 ms instead of 32 ms with 8
adapters) for as long as the loading thread's pool existed.

:func:`release_pool` hands the calling thread's pool back (OpenMP 5.0 ``omp_pause_resource_all``); the
engine calls it on every thread that did torch work for it other than the worker. The next parallel op on
that thread simply builds a new pool. Best effort: a no-op where the runtime is not OpenMP or lacks the call.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_OMP_PAUSE_SOFT = 1
_RUNTIMES = ("libgomp", "libiomp5", "libomp")


def _runtimes() -> list[str]:
    """Every OpenMP runtime mapped into the process: torch's, and any a wheel bundles (sentencepiece
    ships its own libgomp, which sorts before torch's)."""
    import torch

    if "OpenMP" not in torch.__config__.parallel_info():
        return []
    try:
        return sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                       if "/" in line and any(r in line.rsplit("/", 1)[-1] for r in _RUNTIMES)})
    except OSError:  # not Linux
        return []


@functools.lru_cache(maxsize=16)
def _pause_fn(path: str) -> Any:
    """``omp_pause_resource_all`` of the runtime at ``path``, or None."""
    try:
        fn = getattr(ctypes.CDLL(path), "omp_pause_resource_all", None)
    except OSError:
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn


def release_pool() -> bool:
    """Release the calling thread's OpenMP helper threads in every runtime loaded (pausing only the first
    one found left torch's pool alive once sentencepiece's runtime was loaded too); True when all did."""
    fns = [f for f in (_pause_fn(p) for p in _runtimes()) if f is not None]
    results = [f(_OMP_PAUSE_SOFT) for f in fns]
    if any(rc != 0 for rc in results):
        log.debug("omp_pause_resource_all returned %s", results)
    return bool(fns) and all(rc == 0 for rc in results)
