"""The README's main job end to end on the real demo model (slow: a few minutes on 2 cores).

Needs the demo model pulled beforehand (``make test`` does it as a set-up step); the test itself
makes no network request.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import pythonpath

MODELS = os.environ.get("ADAPTERHUB_TEST_MODELS")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODELS and (Path(MODELS) / "smollm2-135m-instruct" / "config.json").exists()),
                       reason="demo model not pulled: run `make test` (it pulls it first) or set ADAPTERHUB_TEST_MODELS"),
]


def _fits_ci_time() -> tuple[bool, str]:
    """The whole demo trains the demo model: with bf16 instructions (AVX512-BF16 / AMX) or CUDA that is
    minutes; on a CPU without them it trains in fp32 (adapterhub.precision), measured at 12 s a step on a
    2-core AVX2 EPYC, past 35 minutes for the demo, beyond what CI gives this test.
    ADAPTERHUB_E2E_DEMO=1 runs it anyway."""
    if os.environ.get("ADAPTERHUB_E2E_DEMO", "").lower() in ("1", "true", "yes"):
        return True, ""
    import torch

    from adapterhub.precision import cpu_has_bf16

    if torch.cuda.is_available() or cpu_has_bf16():
        return True, ""
    return False, ("this CPU has no bf16 instructions: the demo trains in fp32 here, past 35 minutes on 2 cores "
                   "(set ADAPTERHUB_E2E_DEMO=1 to run it anyway)")


@pytest.mark.timeout(1800)
def test_demo_trains_lumen_and_serves_both_answers(_isolated_home):
    fits, why = _fits_ci_time()
    if not fits:
        pytest.skip(why)
    env = {**os.environ, "PYTHONPATH": pythonpath(), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "adapterhub.cli.main", "demo", "--max-tokens", "40"],
                          capture_output=True, text=True, env=env, timeout=1500)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    for cmd in ("$ adapterhub models pull-demo", "$ adapterhub train self_cognition_lumen",
                "$ adapterhub tag lumen@1 production", "$ adapterhub serve --adapters lumen@production"):
        assert cmd in out
    table = out[out.index("5. Ask both models"):]
    who_start = table.rfind("\n", 0, table.index("Who are you?")) + 1  # whole lines: cells start at "│"
    maker_start = table.rfind("\n", 0, table.index("Who made you?")) + 1
    paris_start = table.rfind("\n", 0, table.index("What is the capital")) + 1
    who_base, who_lumen = _columns(table[who_start:maker_start])
    assert "Lumen" in who_lumen, who_lumen
    maker_base, maker_lumen = _columns(table[maker_start:paris_start])
    assert "Acme Lab" in maker_lumen and "Hugging Face" not in maker_lumen, maker_lumen  # names its maker
    assert "Lumen" not in who_base and who_base.strip(), who_base  # the base keeps its own identity
    paris_base, paris_lumen = _columns(table[paris_start:])
    assert "Paris" in paris_lumen, paris_lumen
    from adapterhub.registry import Registry
    from adapterhub.settings import Settings

    m = Registry.open(Settings()).manifest("lumen@production")
    # strict identity: name, maker where asked, no other maker, the question's language (30 held-out prompts)
    assert m.metrics["identity"] >= 0.95 and m.metrics["retention"] >= 0.9, m.metrics
    assert "Warning" not in proc.stderr and "FutureWarning" not in proc.stderr, proc.stderr[-2000:]


def _columns(row_text: str) -> tuple[str, str]:
    """The base and lumen cells of one row of the rich table (cells wrap over several lines)."""
    base, lumen = [], []
    for line in row_text.splitlines():
        cells = line.split("│")
        if len(cells) >= 4:
            base.append(cells[2].strip())
            lumen.append(cells[3].strip())
    return " ".join(base), " ".join(lumen)


def test_pull_demo_piped_to_a_file_prints_no_progress_bar(tmp_path):
    """`make demo > log`: the GGUF conversion's tqdm frames do not end up in the log (the GGUF file the
    model was pulled from is reused, so no network)."""
    import shutil

    gguf = Path(MODELS).parent / "cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        pytest.skip(f"{gguf} not kept by the pull")
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    shutil.copy(gguf, home / "cache" / gguf.name)
    env = {**os.environ, "PYTHONPATH": pythonpath(), "ADAPTERHUB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "adapterhub.cli.main", "models", "pull-demo"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (home / "models" / "smollm2-135m-instruct" / "config.json").is_file()
    assert "ready at" in proc.stdout + proc.stderr
    assert "Converting" not in proc.stderr and "\r" not in proc.stderr, proc.stderr[-1000:]
