"""The stages every training run goes through, whatever its method (SFT on LoRA / QLoRA / full weights,
a LLaVA stage, DPO / ORPO / KTO): the run dir and the checks that need no model, the base and its
tokenizer, the held-out identity score, saving the result, and the end of the run (``result.json``,
lineage, registration). The method modules (:mod:`.sft`, :mod:`.preference`) call these, so the two
cannot drift apart (they had: the quantisation label of a registered version was written twice).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.console import Console

from adapterhub.errors import ConfigError, MissingDependencyError
from adapterhub.loading.bases import resolve_base
from adapterhub.models import ResolvedModel, require_trust
from adapterhub.precision import QUANT_LABELS
from adapterhub.registry import Registry, VersionRecord
from adapterhub.settings import Settings
from adapterhub.training.config import TrainConfig


@dataclass
class TrainResult:
    run_dir: Path
    output_dir: Path
    record: VersionRecord | None
    final_loss: float | None
    steps: int
    wall_time_s: float
    tokens: int
    tokens_per_s: float
    metrics: dict[str, Any] = field(default_factory=dict)
    created: bool = True
    base_id: str = ""  # the base as the config names it


@dataclass
class RunContext:
    """One run's inputs, built once by :func:`start` and handed to every stage."""

    cfg: TrainConfig
    settings: Settings
    run_dir: Path
    console: Console
    resume: bool = False
    register: bool = True
    opened_registry: Registry | None = None  # the composition root's; opened on first use otherwise
    t_start: float = field(default_factory=time.perf_counter)

    @cached_property
    def registry(self) -> Registry:
        return self.opened_registry or Registry.open(self.settings)

    @property
    def quantization(self) -> str | None:
        """What the base was quantized to while training (recorded with the version's base)."""
        if self.cfg.model.bits is not None:
            return QUANT_LABELS[self.cfg.model.bits]
        return QUANT_LABELS[4] if self.cfg.method == "qlora" else None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start


def start(cfg: TrainConfig, settings: Settings, *, output: Path | None, resume: bool, register: bool,
          registry: Registry | None, console: Console | None) -> RunContext:
    """The run dir and the checks every method shares (nothing is written and no model is loaded yet)."""
    run_dir = _run_dir(cfg, settings, output, resume)
    if resume and not any((run_dir / "checkpoints").glob("checkpoint-*")):
        raise ConfigError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    if cfg.train.deepspeed:
        require_deepspeed()
    require_tracker(cfg.train.report_to)
    return RunContext(cfg, settings, run_dir, console or Console(stderr=True), resume=resume, register=register,
                      opened_registry=registry)


def write_config(ctx: RunContext) -> None:
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    (ctx.run_dir / "config.json").write_text(ctx.cfg.model_dump_json(indent=2))


def resolve(ctx: RunContext) -> ResolvedModel:
    """The config's base as a local directory (a bundle ref through the run's registry), trust checked."""
    needs_registry = "@" in ctx.cfg.model.base
    resolved = resolve_base(ctx.cfg.model.base, ctx.settings, registry=ctx.registry if needs_registry else None)
    require_trust(resolved.path, ctx.cfg.model.trust_remote_code, "model.trust_remote_code=true")
    return resolved


def score_identity(ctx: RunContext, model: Any, tokenizer: Any, template: str | None, base_general: Any,
                   metrics: dict[str, Any]) -> dict[str, Any]:
    """Held-out identity and retention (``eval.identity``) into ``metrics``; returns the raw scores."""
    from adapterhub.evaluation.identity import evaluate_identity

    assert ctx.cfg.eval.identity is not None
    scores = evaluate_identity(model, tokenizer, template, ctx.cfg.eval.identity, base_general)
    metrics.update(identity=scores["identity"], retention=scores["retention"])
    ctx.console.print(f"identity {scores['identity']:.2f} on {scores['identity_n']} held-out paraphrases · "
                      f"retention {scores['retention']:.2f} on {scores['retention_n']} general prompts")
    return scores


def loss_curve(losses: list[tuple[int, float]], max_points: int = 400) -> list[list[float]]:
    """The run's (step, loss) points for the version's training record (the console draws them), thinned
    evenly to at most ``max_points`` with the last point kept."""
    if len(losses) > max_points:
        stride = len(losses) / max_points
        losses = [losses[int(i * stride)] for i in range(max_points - 1)] + [losses[-1]]
    return [[step, round(loss, 5)] for step, loss in losses]


def save_tokenizer_and_template(out_dir: Path, tokenizer: Any, template: str | None, *, adapter: bool) -> None:
    """Next to the weights: the tokenizer and the chat template the version was trained with (served with it)."""
    tokenizer.save_pretrained(str(out_dir))
    if template:
        (out_dir / "chat_template.jinja").write_text(template)
    readme = out_dir / "README.md"
    # peft writes a template README full of "[More Information Needed]"; the hub publisher writes a real card.
    if adapter and readme.exists() and "More Information Needed" in readme.read_text():
        readme.unlink()


def finish(ctx: RunContext, resolved: ResolvedModel, out_dir: Path, *, kind: str, template: str | None,
           lineage: dict[str, Any], metrics: dict[str, Any], links: dict[str, Any] | None = None,
           parent: int | None = None) -> tuple[VersionRecord | None, bool]:
    """The end of every run: ``result.json`` in the run dir, then (unless ``--no-register``) the output
    registered as the next version of the config's name, its base pinned with the training quantisation."""
    lineage = {"method": ctx.cfg.method, "config": json.loads(ctx.cfg.model_dump_json()), **lineage}
    (ctx.run_dir / "result.json").write_text(json.dumps({"lineage": lineage, "metrics": metrics}, indent=2,
                                                        default=str))
    if not ctx.register:
        return None, True
    if resolved.kind == "bundle":
        links = {**(links or {}), "bundle": resolved.id, "bundle_revision": resolved.revision}
    return ctx.registry.register(out_dir, ctx.cfg.name, kind=kind,
                                 base_model=dict(resolved.identity(), quantization=ctx.quantization),
                                 chat_template=template, training=lineage, metrics=metrics, lineage=links,
                                 parent=parent)


def _run_dir(cfg: TrainConfig, settings: Settings, output: Path | None, resume: bool) -> Path:
    if output is not None:
        return Path(output)
    if resume:
        runs = sorted(settings.runs_dir.glob(f"{cfg.name}-*"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ConfigError(f"--resume: no earlier run of '{cfg.name}' under {settings.runs_dir}")
        return runs[-1]
    return settings.runs_dir / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


_TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def require_tracker(name: str) -> None:
    import importlib.util

    if name in _TRACKERS and importlib.util.find_spec(_TRACKERS[name][0]) is None:
        raise MissingDependencyError(_TRACKERS[name][1], "track", f"train.report_to: {name}")


@contextlib.contextmanager
def tracker_dirs(name: str, run_dir: Path) -> Iterator[None]:
    """Keep the tracker's files in the run dir (unless the user pointed the tracker elsewhere)."""
    defaults = {"tensorboard": {"TENSORBOARD_LOGGING_DIR": str(run_dir / "tensorboard")},
                "wandb": {"WANDB_DIR": str(run_dir)},
                "mlflow": {"MLFLOW_TRACKING_URI": (run_dir / "mlruns").as_uri()}}.get(name, {})
    added = [k for k in defaults if k not in os.environ]
    for k in added:
        os.environ[k] = defaults[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def require_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError("deepspeed", "deepspeed", "--deepspeed") from e
