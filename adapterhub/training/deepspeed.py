"""Built-in DeepSpeed ZeRO configs (stage 1, 2, 2+offload, 3, 3+offload) for the HF Trainer.

The JSON files live in ``training/configs/deepspeed``; "auto" values are filled in by the Trainer
from TrainingArguments. Validation happens before any model is loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError, MissingDependencyError

DS_DIR = Path(__file__).parent / "configs" / "deepspeed"


def builtin(stage: str) -> dict[str, Any]:
    path = DS_DIR / f"{stage}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in DS_DIR.glob("*.json")))
        raise ConfigError(f"unknown DeepSpeed config '{stage}' (known: {known})")
    return json.loads(path.read_text())


def deepspeed_config(stage: str, run_dir: Path) -> Path:
    """Check DeepSpeed is usable and write the stage's config into the run dir."""
    cfg = builtin(stage)
    if importlib.util.find_spec("deepspeed") is None:
        raise MissingDependencyError("deepspeed", "deepspeed", f"--deepspeed {stage}")
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / f"deepspeed_{stage}.json"
    out.write_text(json.dumps(cfg, indent=2))
    if "offload" in stage and shutil.which("g++") is None and shutil.which("c++") is None:
        raise ConfigError(f"--deepspeed {stage} compiles DeepSpeed's CPU Adam: install a C++ compiler (g++)")
    return out


def single_process_env() -> None:
    """Outside a launcher (``deepspeed`` / ``torchrun`` set these), run as rank 0 of a world of one.

    Without them DeepSpeed goes looking for MPI to discover its rank, which fails or hangs on a plain
    ``adapterhub train --deepspeed …``.
    """
    if "RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(k, v)


def forget_deepspeed() -> None:
    """Drop transformers' process-wide DeepSpeed config once a run ends.

    transformers keeps it in a global so ``from_pretrained`` can partition weights under ZeRO-3; left
    set, a later load in the same process (a merge, a second run) would come out partitioned.
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
