"""One training run: ``train(config, settings)`` (called through :mod:`adapterhub.training.api`).

Checks everything that needs no model first (the run dir, DeepSpeed, the data file and its columns,
a replay file), then resolves the base, builds data (with replay), model (LoRA / QLoRA / full), Trainer and callbacks,
trains (optionally resuming), evaluates, writes the adapter (PEFT format + chat template), the loss
curve and the JSONL log into the run dir, and registers the result as a new version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from adapterhub.errors import ConfigError, MissingDependencyError
from adapterhub.loading.bases import resolve_base
from adapterhub.models import require_trust
from adapterhub.registry import Registry, VersionRecord
from adapterhub.settings import Settings
from adapterhub.templates import TOOL_PARSERS
from adapterhub.training.callbacks import RichProgress, RunLog, Samples, TokenCounter, plot_loss
from adapterhub.training.config import TrainConfig
from adapterhub.training.data import Collator, FlatCollator, TorchDataset, prepare, read_dataset
from adapterhub.training.deepspeed import deepspeed_config, forget_deepspeed, single_process_env
from adapterhub.training.model import (
    add_lora,
    load_base,
    load_tokenizer,
    loraplus_optimizer,
    save_initial_adapter,
    trainable_summary,
)

log = logging.getLogger(__name__)


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


def _run_dir(cfg: TrainConfig, settings: Settings, output: Path | None, resume: bool) -> Path:
    if output is not None:
        return Path(output)
    if resume:
        runs = sorted(settings.runs_dir.glob(f"{cfg.name}-*"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ConfigError(f"--resume: no earlier run of '{cfg.name}' under {settings.runs_dir}")
        return runs[-1]
    return settings.runs_dir / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(cfg: TrainConfig, settings: Settings, *, output: Path | None = None, resume: bool = False,
          register: bool = True, console: Console | None = None) -> TrainResult:
    from transformers import Trainer, TrainingArguments

    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    run_dir = _run_dir(cfg, settings, output, resume)
    ckpt_dir = run_dir / "checkpoints"
    if resume and not any(ckpt_dir.glob("checkpoint-*")):
        raise ConfigError(f"--resume: no checkpoint in {ckpt_dir}")
    if cfg.train.deepspeed:
        require_deepspeed()
    require_tracker(cfg.train.report_to)
    if cfg.preference is not None:
        if resume:
            raise ConfigError("--resume is not supported for preference training yet (its runs keep no checkpoints)")
        return _train_preference(cfg, settings, run_dir, register, console)
    raw = read_dataset(cfg.data)  # a typo in data.path or a bad column is reported before any model load
    replay_src = cfg.data.replay.source if cfg.data.replay is not None else "self-distill"
    if replay_src != "self-distill" and not Path(replay_src).expanduser().is_file():
        raise ConfigError(f"data.replay.source: no such file {replay_src}")
    image_qa = _image_qa_file(cfg.eval.image_qa)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))

    resolved = resolve_base(cfg.model.base, settings)
    require_trust(resolved.path, cfg.model.trust_remote_code, "model.trust_remote_code=true")
    ds_path = deepspeed_config(cfg.train.deepspeed, run_dir) if cfg.train.deepspeed else None
    if ds_path:
        single_process_env()
    tokenizer, template = load_tokenizer(resolved.path, cfg)
    tool_parser = cfg.model.tool_parser or TOOL_PARSERS.get(cfg.model.template or "")
    model = load_base(resolved.path, cfg)
    quantized = cfg.method == "qlora" or cfg.model.bits == 8

    replay: list[Any] = []
    replay_info: dict[str, Any] = {}
    if cfg.data.replay is not None and cfg.data.mode == "sft":
        from adapterhub.training.replay import build_replay

        with console.status("replay data: the base model answers general prompts (cached after the first run)…"):
            replay, replay_info = build_replay(cfg.data.replay, len(raw.records), model=model, tokenizer=tokenizer,
                                               template=template, cache_dir=settings.cache_dir,
                                               base_fingerprint=resolved.fingerprint, seed=cfg.train.seed)
    base_general = None
    if cfg.eval.identity:
        from adapterhub.evaluation.reference import retention_reference

        with console.status("retention reference: base answers to held-out prompts (cached)…"):
            base_general = retention_reference(model, tokenizer, template, settings.cache_dir, resolved.fingerprint)

    images, processor = None, None
    pretrain_vision = cfg.vision is not None and cfg.vision.stage == "pretrain"
    if cfg.vision is not None:
        from adapterhub.training.data import ImageInputs

        if pretrain_vision:  # a tower + a new projector in front of the (frozen) LLM
            from adapterhub.training.llava import build_llava

            model, processor = build_llava(model, tokenizer, template, cfg, settings)
            template = processor.chat_template
        else:
            from adapterhub.training.model import load_processor

            processor = load_processor(resolved.path, cfg)
        folder = cfg.vision.image_folder or str(Path(cfg.data.path).expanduser().parent)
        if cfg.data.path.startswith("builtin:shapes") and not cfg.vision.image_folder:
            from adapterhub.training.builtin_data import shapes_folder

            folder = str(shapes_folder())
        images = ImageInputs(processor, Path(folder).expanduser())
    data = prepare(cfg.data, tokenizer, template, replay, seed=cfg.train.seed, raw=raw, images=images)
    if not data.samples:
        raise ConfigError("data: no usable samples after tokenization (answers truncated away? raise data.max_length)")
    if cfg.method != "full" and not pretrain_vision:
        model = add_lora(model, cfg)
        initial = run_dir / "initial-adapter"
        if not (resume and initial.exists()):
            save_initial_adapter(model, cfg, initial)
    trainable, total = trainable_summary(model)
    console.print(
        f"[bold]{cfg.name}[/bold]: {'LLaVA pretrain (tower + projector)' if pretrain_vision else cfg.method} on "
        f"{resolved.id} · {len(data.samples)} samples "
        f"({data.n_records} records + {data.n_replay} replay, format {data.format}) · "
        f"trainable {trainable / 1e6:.2f}M / {total / 1e6:.1f}M params · run dir {run_dir}"
    )

    per_step = cfg.train.batch_size * cfg.train.grad_accum
    steps = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(
        math.ceil(len(data.samples) / per_step) * cfg.train.epochs)
    counter = TokenCounter(FlatCollator() if cfg.data.packing == "padding_free" else Collator(tokenizer.pad_token_id))
    runlog = RunLog(run_dir / "log.jsonl", counter)
    samples_cb = Samples(model=model, tokenizer=tokenizer, template=template, inputs=cfg.eval.inputs,
                         every=cfg.eval.every_steps, max_new_tokens=cfg.eval.max_new_tokens, console=console,
                         runlog=runlog, quantized=quantized, identity=cfg.eval.identity, base_general=base_general,
                         stop_when=cfg.eval.stop_when, tools=_eval_tools(cfg),
                         images=_eval_images(cfg, processor, images))
    args = TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=cfg.train.batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum, learning_rate=cfg.train.lr,
        num_train_epochs=cfg.train.epochs, max_steps=steps, lr_scheduler_type=cfg.train.scheduler,
        warmup_steps=int(cfg.train.warmup_ratio * steps), weight_decay=cfg.train.weight_decay,
        optim=cfg.train.optimizer, logging_steps=cfg.train.logging_steps, save_steps=cfg.train.save_steps,
        save_total_limit=cfg.train.save_total_limit, report_to=cfg.train.report_to, disable_tqdm=True,
        neftune_noise_alpha=cfg.train.neftune_alpha,
        use_cpu=not torch.cuda.is_available(), seed=cfg.train.seed, remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if cfg.train.group_by_length and not cfg.data.packing else "random",
        deepspeed=str(ds_path) if ds_path else None, dataloader_num_workers=0,
        bf16=cfg.model.dtype == "bf16" and torch.cuda.is_available(),
    )
    try:
        optimizers = (loraplus_optimizer(model, cfg), None) if cfg.lora.loraplus_lr_ratio else (None, None)
        with tracker_dirs(cfg.train.report_to, run_dir):  # the trackers' callbacks read these when created
            trainer = Trainer(model=model, args=args, data_collator=counter, train_dataset=TorchDataset(data.samples),
                              callbacks=[runlog, RichProgress(console, counter, runlog), samples_cb],
                              optimizers=optimizers)  # type: ignore[arg-type]
        with tracker_dirs(cfg.train.report_to, run_dir):
            trainer.remove_callback(_printer_class())
            out = trainer.train(resume_from_checkpoint=True if resume else None)
        train_time = time.perf_counter() - t_start

        metrics: dict[str, Any] = {"train_loss": round(float(out.training_loss), 4)}
        if samples_cb.stopped_early_at:
            metrics["stopped_early_at"] = samples_cb.stopped_early_at
        samples_cb.sample(trainer.state.global_step)
        if cfg.eval.identity and base_general is not None:
            from adapterhub.evaluation.identity import evaluate_identity

            scores = evaluate_identity(model, tokenizer, template, cfg.eval.identity, base_general)
            metrics.update(identity=scores["identity"], retention=scores["retention"])
            runlog.write({"final_eval": scores})
            console.print(f"identity {scores['identity']:.2f} on {scores['identity_n']} held-out paraphrases · "
                          f"retention {scores['retention']:.2f} on {scores['retention_n']} general prompts")
        if cfg.eval.tools:
            from adapterhub.evaluation.tools import evaluate_tools

            tscores = evaluate_tools(model, tokenizer, template, tool_parser or "hermes")
            metrics.update(tool_call=tscores["tool_call"], no_call=tscores["no_call"],
                           tool_result=tscores["tool_result"])
            runlog.write({"final_tool_eval": tscores})
            console.print(f"tool_call {tscores['tool_call']:.2f} on {tscores['tool_call_n']} held-out tool prompts · "
                          f"no_call {tscores['no_call']:.2f} on {tscores['no_call_n']} plain questions · "
                          f"tool_result {tscores['tool_result']:.2f} on {tscores['tool_result_n']}")

        if image_qa is not None and images is not None:
            from adapterhub.evaluation.images import score_image_qa

            qa = score_image_qa(model, processor, template, image_qa, images.folder)
            answers = qa.pop("answers")
            metrics.update({k: v for k, v in qa.items() if k != "image_qa_n"})
            runlog.write({"final_image_qa": qa, "answers": answers})
            console.print("held-out image questions: " + " · ".join(
                f"{k} {v:.2f}" for k, v in qa.items() if k != "image_qa_n") + f" on {qa['image_qa_n']}")

        final_loss = runlog.losses[-1][1] if runlog.losses else None
        plot_loss(runlog.losses, run_dir / "loss.png", f"{cfg.name} ({cfg.method})")
        out_dir = run_dir / ("model" if cfg.method == "full" else "bundle" if pretrain_vision else "adapter")
        if pretrain_vision:
            from adapterhub.loading.llava import save_bundle

            save_bundle(model, processor, out_dir)
        elif ds_path:
            # Under ZeRO-3 the parameters are partitioned: the Trainer gathers the full 16-bit weights first
            # (a plain save_pretrained would write empty tensors).
            trainer.save_model(str(out_dir))
            (out_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the lineage keeps the config
        elif cfg.method != "full" and cfg.lora.init in ("pissa", "olora"):
            # Converted to a plain LoRA (rank 2r) that applies to the unmodified base, as served and merged.
            model.save_pretrained(str(out_dir), safe_serialization=True,
                                  path_initial_model_for_weight_conversion=str(run_dir / "initial-adapter"))
        else:
            model.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
        if template:
            (out_dir / "chat_template.jinja").write_text(template)
        if cfg.method != "full" and not pretrain_vision:
            _strip_peft_readme(out_dir)
    finally:
        if ds_path:
            forget_deepspeed()  # else later model loads in this process think ZeRO-3 is on

    tokens = counter.tokens
    lineage = {
        "method": "llava_pretrain" if pretrain_vision else cfg.method, "config": json.loads(cfg.model_dump_json()), "dataset_fingerprint": data.fingerprint,
        "n_samples": len(data.samples), "final_loss": final_loss, "steps": trainer.state.global_step,
        "wall_time_s": round(train_time, 1), "tokens": tokens, "tokens_per_s": round(tokens / max(train_time, 1e-9), 1),
        "trainable_params": trainable, **replay_info,
    }
    if tool_parser:
        lineage["tool_parser"] = tool_parser
    if cfg.vision is not None:
        lineage["vision"] = {"stage": cfg.vision.stage, "llm": resolved.id if pretrain_vision else None,
                             "tower": cfg.vision.tower if pretrain_vision else None,
                             "tower_trained": cfg.vision.trains_tower if pretrain_vision else False,
                             "bundle": resolved.id if resolved.kind == "bundle" else None}
    (run_dir / "result.json").write_text(json.dumps({"lineage": lineage, "metrics": metrics}, indent=2, default=str))
    record, created = None, True
    if register:
        base_ident = dict(resolved.identity(),
                          quantization="int8" if cfg.model.bits == 8 else "nf4" if quantized else None)
        kind = "model" if cfg.method == "full" else "bundle" if pretrain_vision else "adapter"
        record, created = Registry.open(settings).register(
            out_dir, cfg.name, kind=kind, base_model=base_ident,
            chat_template=template, training=lineage, metrics=metrics,
            lineage={"base": resolved.id} if cfg.method == "full" else
            {"bundle": resolved.id, "bundle_revision": resolved.revision} if resolved.kind == "bundle" else None,
        )
    return TrainResult(run_dir=run_dir, output_dir=out_dir, record=record, final_loss=final_loss,
                       steps=trainer.state.global_step, wall_time_s=train_time, tokens=tokens,
                       tokens_per_s=tokens / max(train_time, 1e-9), metrics=metrics, created=created,
                       base_id=cfg.model.base)


def _train_preference(cfg: TrainConfig, settings: Settings, run_dir: Path, register: bool,
                      console: Console) -> TrainResult:
    from adapterhub.training.preference import train_preference

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    with tracker_dirs(cfg.train.report_to, run_dir):
        r = train_preference(cfg, settings, run_dir, register=register, console=console)
    return TrainResult(run_dir=run_dir, output_dir=r["out_dir"], record=r["record"], final_loss=r["final_loss"],
                       steps=r["steps"], wall_time_s=r["wall_time_s"], tokens=0, tokens_per_s=0.0,
                       metrics=r["metrics"], created=r["created"], base_id=cfg.model.base)


def _image_qa_file(spec: str | None) -> Path | None:
    if spec is None:
        return None
    if spec == "builtin:shapes_heldout":
        from adapterhub.evaluation.shapes import write_heldout
        from adapterhub.training.builtin_data import shapes_folder

        return write_heldout(shapes_folder())
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"eval.image_qa: no such file {spec} (or builtin:shapes_heldout)")
    from adapterhub.evaluation.images import read_qa

    read_qa(path)  # a malformed file is reported now, not after training
    return path


def _eval_images(cfg: TrainConfig, processor: Any, images: Any) -> Any:
    """(processor, [(PIL image, question)]) for the image sample answers, or None."""
    if not cfg.eval.image_inputs or images is None:
        return None
    from PIL import Image

    items = []
    for i, item in enumerate(cfg.eval.image_inputs):
        path = images.folder / item["image"]
        try:
            items.append((Image.open(path).convert("RGB"), item["text"]))
        except OSError as e:
            raise ConfigError(f"eval.image_inputs[{i}]: cannot read image {path}: {e}") from None
    return processor, items


def _eval_tools(cfg: TrainConfig) -> list[dict[str, Any]] | None:
    if not cfg.eval.tools:
        return None
    from adapterhub.evaluation.tools import AGENT_TOOLS

    return AGENT_TOOLS


def _printer_class() -> Any:
    from transformers.trainer_callback import PrinterCallback

    return PrinterCallback


def _strip_peft_readme(out_dir: Path) -> None:
    # peft writes a template README full of "[More Information Needed]"; the hub publisher writes a real card.
    readme = out_dir / "README.md"
    if readme.exists() and "More Information Needed" in readme.read_text():
        readme.unlink()


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
