"""Trainer callbacks: rich progress bar, JSONL log, sample answers / identity scores, early stop,
and the loss-curve plot."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback

from adapterhub.evaluation.generation import answer_conversations

log = logging.getLogger(__name__)


class TokenCounter:
    """Wraps a collator and counts real (non-padding) tokens seen."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.tokens = 0

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.collator(batch)
        mask = out.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(out["input_ids"].numel())  # padding-free: all real
        return out


class RunLog(TrainerCallback):
    """Appends every log record to ``log.jsonl`` and remembers the loss curve."""

    def __init__(self, path: Path, counter: TokenCounter) -> None:
        self.path = path
        self.counter = counter
        self.losses: list[tuple[int, float]] = []
        self.t0 = time.perf_counter()

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

    def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
        logs = dict(logs or {})
        if "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))
        elapsed = time.perf_counter() - self.t0
        self.write({"step": state.global_step, "time_s": round(elapsed, 2), "tokens": self.counter.tokens,
                    "tokens_per_s": round(self.counter.tokens / max(elapsed, 1e-9), 1), **logs})


class RichProgress(TrainerCallback):
    def __init__(self, console: Console, counter: TokenCounter, runlog: RunLog) -> None:
        self.console = console
        self.counter = counter
        self.runlog = runlog
        self.progress: Progress | None = None
        self.task: Any = None
        self.t0 = 0.0

    def on_train_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        self.t0 = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                           loss="-", tps="-")

    def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        if self.progress is None:
            return
        loss = f"{self.runlog.losses[-1][1]:.3f}" if self.runlog.losses else "-"
        tps = self.counter.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(self.task, completed=state.global_step, loss=loss, tps=f"{tps:.0f}")
        if not self.console.is_terminal and (state.global_step % 5 == 0 or state.global_step == state.max_steps):
            # no live bar when the output is a file or a pipe: a plain progress line instead
            elapsed = time.perf_counter() - self.t0
            left = elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step)
            self.console.print(f"train step {state.global_step}/{state.max_steps} · loss {loss} · {tps:.0f} tok/s · "
                               f"{elapsed:.0f} s elapsed, ~{left:.0f} s left", highlight=False)

    def on_train_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        if self.progress is not None:
            self.on_step_end(args, state, control)
            self.progress.stop()


class Samples(TrainerCallback):
    """Every ``every`` steps: answer the config's evaluation inputs (as XTuner does); with an identity
    configured, also compute identity / retention and stop once ``stop_when`` is met."""

    def __init__(self, *, model: Any, tokenizer: Any, template: str | None, inputs: list[str], every: int,
                 max_new_tokens: int, console: Console, runlog: RunLog, quantized: bool,
                 identity: dict[str, str] | None = None, base_general: list[str] | None = None,
                 stop_when: dict[str, float] | None = None, tools: list[dict[str, Any]] | None = None,
                 images: tuple[Any, list[tuple[Any, str]]] | None = None) -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.images = images  # (processor, [(image, question)]): a vision run's sample questions
        self.tools = tools  # offered in the sample prompts (an agent's samples show its tool calls)
        self.inputs, self.every, self.max_new_tokens = inputs, every, max_new_tokens
        self.console, self.runlog = console, runlog
        self.quantized = quantized
        self.identity, self.base_general = identity, base_general
        self.stop_when = stop_when or {}
        self.last_scores: dict[str, Any] = {}
        self.last_samples: dict[str, str] = {}  # the latest answers to the inputs (kept in the version)
        self.stopped_early_at: int | None = None

    def sample(self, step: int) -> None:
        if self.images is not None:
            from adapterhub.evaluation.images import answer_images

            processor, items = self.images
            answers = answer_images(self.model, processor, self.template, items, self.max_new_tokens)
            for n, ((_, q), a) in enumerate(zip(items, answers)):
                self.console.print(f"[dim]step {step}[/dim] [bold]image {n + 1}: {q}[/bold] → {a}")
            self.runlog.write({"step": step, "image_samples": [[q, a] for (_, q), a in zip(items, answers)]})
        if not self.inputs:
            return
        answers = answer_conversations(self.model, self.tokenizer, [[{"role": "user", "content": q}]
                                                                    for q in self.inputs],
                                       template=self.template, max_new_tokens=self.max_new_tokens, tools=self.tools)
        for q, a in zip(self.inputs, answers):
            self.console.print(f"[dim]step {step}[/dim] [bold]{q}[/bold] → {a}")
        self.last_samples = dict(zip(self.inputs, answers))
        self.runlog.write({"step": step, "samples": self.last_samples})

    def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        if state.global_step % self.every or state.global_step == state.max_steps:
            return
        if self.quantized:
            # bitsandbytes repacks 4-bit weights on generate(); gradients through them would be lost.
            return
        self.sample(state.global_step)
        if self.identity and self.base_general is not None and self.stop_when:
            from adapterhub.evaluation.identity import evaluate_identity

            scores = evaluate_identity(self.model, self.tokenizer, self.template, self.identity, self.base_general)
            self.last_scores = scores
            self.console.print(f"[dim]step {state.global_step}[/dim] identity {scores['identity']:.2f} "
                               f"retention {scores['retention']:.2f}")
            self.runlog.write({"step": state.global_step, "identity": scores["identity"],
                               "retention": scores["retention"]})
            if all(scores.get(k, 0) >= v for k, v in self.stop_when.items()):
                self.console.print(f"stopping early at step {state.global_step}: {self.stop_when} reached")
                self.stopped_early_at = state.global_step
                control.should_training_stop = True


def plot_loss(losses: list[tuple[int, float]], path: Path, title: str) -> Path | None:
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([s for s, _ in losses], [v for _, v in losses], marker=".", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
