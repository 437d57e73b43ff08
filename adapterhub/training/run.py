"""One training run: ``train(config, settings)`` (called through :mod:`adapterhub.training.api`, which
opens the registry once and passes it in).

The run dir and the checks that need no model come first (:func:`adapterhub.training.stages.start`);
then the config's method runs: :mod:`.sft` (SFT / pretraining text on LoRA, QLoRA or full weights, and
the LLaVA stages) or :mod:`.preference` (DPO, ORPO, KTO). Both end in the same stages: the output saved
with its tokenizer and chat template, ``result.json``, and the next version in the registry.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from adapterhub.registry import Registry
from adapterhub.settings import Settings
from adapterhub.training import stages
from adapterhub.training.config import TrainConfig
from adapterhub.training.stages import TrainResult

__all__ = ["TrainResult", "train"]


def train(cfg: TrainConfig, settings: Settings, *, output: Path | None = None, resume: bool = False,
          register: bool = True, console: Console | None = None, registry: Registry | None = None) -> TrainResult:
    """Train ``cfg`` and (unless ``register`` is false) register the result as the next version of its name.

    ``registry``: the composition root's (opened from ``settings`` on first use when not given).
    """
    ctx = stages.start(cfg, settings, output=output, resume=resume, register=register, registry=registry,
                       console=console)
    if cfg.preference is not None:
        from adapterhub.training.preference import run_preference

        return run_preference(ctx)
    from adapterhub.training.sft import run_sft

    return run_sft(ctx)
