"""Shared helpers: timing, a results table, a JSON record and a bar chart under docs/."""

from __future__ import annotations

import atexit
import json
import platform
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1] / "docs"


def scratch_dir(prefix: str) -> Path:
    """A temporary directory removed when the benchmark exits, also on Ctrl-C or ``kill`` (SIGTERM).

    A load run writes about 9 GiB of adapters and registry blobs here; left behind, a few runs fill a disk.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return path


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so atexit removes the scratch directories


def timeit(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Median wall time of ``fn`` in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_time(fn: Callable[[], Any], n: int, warmup: int = 1) -> float:
    """Median wall time of ``n`` calls of ``fn`` after ``warmup`` calls, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def report(name: str, rows: list[dict[str, Any]], columns: list[str], *, chart: tuple[str, str, str] | None = None,
           extra: dict[str, Any] | None = None) -> None:
    """Print a table, save ``docs/bench_<name>.json`` and optionally a bar chart ``docs/bench_<name>.png``.

    ``chart`` = (label column, value column, y-axis label).
    """
    clash = {"machine", "when", "rows"} & set(extra or {})
    if clash:  # they would overwrite the table itself in the saved results
        raise ValueError(f"report({name!r}): extra may not use the keys {sorted(clash)}")
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))
    DOCS.mkdir(exist_ok=True)
    (DOCS / f"bench_{name}.json").write_text(json.dumps(
        {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M"), "rows": rows, **(extra or {})}, indent=2))
    if chart:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        label, value, ylabel = chart
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
        labels = [str(r[label]) for r in rows]
        vals = [float(r[value]) for r in rows]
        bars = ax.bar(labels, vals, color=["#888888"] + ["#3b75af"] * (len(vals) - 1))
        ax.bar_label(bars, labels=[_fmt(v) for v in vals], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name} — {machine()}", fontsize=9)
        plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=8)
        fig.tight_layout()
        fig.savefig(DOCS / f"bench_{name}.png")
        plt.close(fig)
        print(f"chart: {DOCS / f'bench_{name}.png'}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def bench_base(random_weights: Path | None, settings: Any, tmp: Path) -> Any:
    """The model a benchmark runs on: the demo model, or (``--random-weights DIR``, for a machine that cannot
    fetch it) DIR's architecture and tokenizer with seeded random weights: throughput does not depend on the
    weights' values."""
    from adapterhub.loading.bases import pull_demo, resolve_model

    if random_weights is None:
        return pull_demo(settings)
    if not (random_weights / "config.json").is_file():
        raise SystemExit(f"--random-weights {random_weights}: no config.json there (a model's config and "
                         "tokenizer files are needed)")
    from benchmarks.serving import random_model

    return resolve_model(str(random_model(random_weights, tmp / "random-base")), settings)


def run_name(name: str, random_weights: Path | None) -> str:
    """``name`` with ``_cuda`` when a GPU ran it and ``_random`` for random weights, so a GPU run's results sit
    beside this machine's instead of replacing them."""
    import torch

    return name + ("_cuda" if torch.cuda.is_available() else "") + ("_random" if random_weights else "")
