"""Supervised training with the HF Trainer: instruction SFT and pretraining text on LoRA, QLoRA or full
weights, and the two LLaVA stages (pretrain: a tower + projector in front of a frozen LLM → a bundle;
finetune: LoRA + projector on a LLaVA-style base).

Everything that needs no model (the data file and its columns, a replay file, a held-out image file) is
checked before the base is loaded; the shared stages (base, identity score, saving, registration) are
:mod:`adapterhub.training.stages`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapterhub.errors import ConfigError
from adapterhub.models import ResolvedModel
from adapterhub.templates import TOOL_PARSERS
from adapterhub.training import stages
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


@dataclass
class _Vision:
    processor: Any = None
    images: Any = None  # training.data.ImageInputs
    pretrain: bool = False


def run_sft(ctx: stages.RunContext) -> stages.TrainResult:
    from transformers import Trainer

    cfg = ctx.cfg
    torch.manual_seed(cfg.train.seed)
    raw = read_dataset(cfg.data)  # a typo in data.path or a bad column is reported before any model load
    replay_src = cfg.data.replay.source if cfg.data.replay is not None else "self-distill"
    if replay_src != "self-distill" and not Path(replay_src).expanduser().is_file():
        raise ConfigError(f"data.replay.source: no such file {replay_src}")
    image_qa = _image_qa_file(cfg.eval.image_qa)
    stages.write_config(ctx)

    resolved = stages.resolve(ctx)
    ds_path = deepspeed_config(cfg.train.deepspeed, ctx.run_dir) if cfg.train.deepspeed else None
    if ds_path:
        single_process_env()
    tokenizer, template = load_tokenizer(resolved.path, cfg)
    tool_parser = cfg.model.tool_parser or TOOL_PARSERS.get(cfg.model.template or "")
    model = load_base(resolved.path, cfg)
    replay, replay_info, base_general = _references(ctx, resolved, model, tokenizer, template, len(raw.records))
    model, template, vision = _vision(ctx, resolved, model, tokenizer, template)
    data = prepare(cfg.data, tokenizer, template, replay, seed=cfg.train.seed, raw=raw, images=vision.images)
    if not data.samples:
        raise ConfigError("data: no usable samples after tokenization (answers truncated away? raise data.max_length)")
    if cfg.method != "full" and not vision.pretrain:
        model = add_lora(model, cfg)
        initial = ctx.run_dir / "initial-adapter"
        if not (ctx.resume and initial.exists()):
            save_initial_adapter(model, cfg, initial)
    trainable, total = trainable_summary(model)
    ctx.console.print(
        f"[bold]{cfg.name}[/bold]: {'LLaVA pretrain (tower + projector)' if vision.pretrain else cfg.method} on "
        f"{resolved.id} · {len(data.samples)} samples "
        f"({data.n_records} records + {data.n_replay} replay, format {data.format}) · "
        f"trainable {trainable / 1e6:.2f}M / {total / 1e6:.1f}M params · run dir {ctx.run_dir}"
    )

    counter = TokenCounter(FlatCollator() if cfg.data.packing == "padding_free" else Collator(tokenizer.pad_token_id))
    runlog = RunLog(ctx.run_dir / "log.jsonl", counter)
    samples_cb = Samples(model=model, tokenizer=tokenizer, template=template, inputs=cfg.eval.inputs,
                         every=cfg.eval.every_steps, max_new_tokens=cfg.eval.max_new_tokens, console=ctx.console,
                         runlog=runlog, quantized=ctx.quantization is not None, identity=cfg.eval.identity,
                         base_general=base_general, stop_when=cfg.eval.stop_when, tools=_eval_tools(cfg),
                         images=_eval_images(cfg, vision))
    args = _training_args(cfg, ctx.run_dir / "checkpoints", len(data.samples), ds_path)
    try:
        optimizers = (loraplus_optimizer(model, cfg), None) if cfg.lora.loraplus_lr_ratio else (None, None)
        with stages.tracker_dirs(cfg.train.report_to, ctx.run_dir):  # the trackers' callbacks read these when created
            trainer = Trainer(model=model, args=args, data_collator=counter, train_dataset=TorchDataset(data.samples),
                              callbacks=[runlog, RichProgress(ctx.console, counter, runlog), samples_cb],
                              optimizers=optimizers)  # type: ignore[arg-type]
        with stages.tracker_dirs(cfg.train.report_to, ctx.run_dir):
            trainer.remove_callback(_printer_class())
            out = trainer.train(resume_from_checkpoint=True if ctx.resume else None)
        train_time = ctx.elapsed()

        metrics: dict[str, Any] = {"train_loss": round(float(out.training_loss), 4)}
        if samples_cb.stopped_early_at:
            metrics["stopped_early_at"] = samples_cb.stopped_early_at
        samples_cb.sample(trainer.state.global_step)
        _final_evals(ctx, model, tokenizer, template, tool_parser, base_general, vision, image_qa, runlog, metrics)
        final_loss = runlog.losses[-1][1] if runlog.losses else None
        plot_loss(runlog.losses, ctx.run_dir / "loss.png", f"{cfg.name} ({cfg.method})")
        out_dir = ctx.run_dir / ("model" if cfg.method == "full" else "bundle" if vision.pretrain else "adapter")
        _save(ctx, model, trainer, vision, out_dir, ds_path)
        stages.save_tokenizer_and_template(out_dir, tokenizer, template,
                                           adapter=cfg.method != "full" and not vision.pretrain)
    finally:
        if ds_path:
            forget_deepspeed()  # else later model loads in this process think ZeRO-3 is on

    tokens = counter.tokens
    lineage: dict[str, Any] = {
        "dataset_fingerprint": data.fingerprint, "n_samples": len(data.samples), "final_loss": final_loss,
        "steps": trainer.state.global_step, "wall_time_s": round(train_time, 1), "tokens": tokens,
        "tokens_per_s": round(tokens / max(train_time, 1e-9), 1), "trainable_params": trainable, **replay_info,
        "loss_curve": stages.loss_curve(runlog.losses),
    }
    if samples_cb.last_samples:
        lineage["samples"] = samples_cb.last_samples
    if vision.pretrain:
        lineage["method"] = "llava_pretrain"
    if tool_parser:
        lineage["tool_parser"] = tool_parser
    if cfg.vision is not None:
        lineage["vision"] = {"stage": cfg.vision.stage, "llm": resolved.id if vision.pretrain else None,
                             "tower": cfg.vision.tower if vision.pretrain else None,
                             "tower_trained": cfg.vision.trains_tower if vision.pretrain else False,
                             "bundle": resolved.id if resolved.kind == "bundle" else None}
    kind = "model" if cfg.method == "full" else "bundle" if vision.pretrain else "adapter"
    record, created = stages.finish(ctx, resolved, out_dir, kind=kind, template=template, lineage=lineage,
                                    metrics=metrics, links={"base": resolved.id} if cfg.method == "full" else None)
    return stages.TrainResult(run_dir=ctx.run_dir, output_dir=out_dir, record=record, final_loss=final_loss,
                              steps=trainer.state.global_step, wall_time_s=train_time, tokens=tokens,
                              tokens_per_s=tokens / max(train_time, 1e-9), metrics=metrics, created=created,
                              base_id=cfg.model.base)


def _references(ctx: stages.RunContext, resolved: ResolvedModel, model: Any, tokenizer: Any, template: str | None,
                n_records: int) -> tuple[list[Any], dict[str, Any], Any]:
    """What the base itself answers, before training changes it: replay data and the retention reference."""
    cfg, replay, replay_info, base_general = ctx.cfg, [], {}, None
    if cfg.data.replay is not None and cfg.data.mode == "sft":
        from adapterhub.training.replay import build_replay

        with ctx.console.status("replay data: the base model answers general prompts (cached after the first run)…"):
            replay, replay_info = build_replay(cfg.data.replay, n_records, model=model, tokenizer=tokenizer,
                                               template=template, cache_dir=ctx.settings.cache_dir,
                                               base_fingerprint=resolved.fingerprint, seed=cfg.train.seed)
    if cfg.eval.identity:
        from adapterhub.evaluation.reference import retention_reference

        with ctx.console.status("retention reference: base answers to held-out prompts (cached)…"):
            base_general = retention_reference(model, tokenizer, template, ctx.settings.cache_dir, resolved.fingerprint)
    return replay, replay_info, base_general


def _vision(ctx: stages.RunContext, resolved: ResolvedModel, model: Any, tokenizer: Any,
            template: str | None) -> tuple[Any, str | None, _Vision]:
    """A vision run's model (the LLaVA built around the LLM at pretrain), template and image inputs."""
    cfg = ctx.cfg
    if cfg.vision is None:
        return model, template, _Vision()
    from adapterhub.training.data import ImageInputs

    vision = _Vision(pretrain=cfg.vision.stage == "pretrain")
    if vision.pretrain:  # a tower + a new projector in front of the (frozen) LLM
        from adapterhub.training.llava import build_llava

        model, vision.processor = build_llava(model, tokenizer, template, cfg, ctx.settings)
        template = vision.processor.chat_template
    else:
        from adapterhub.training.model import load_processor

        vision.processor = load_processor(resolved.path, cfg)
    folder = cfg.vision.image_folder or str(Path(cfg.data.path).expanduser().parent)
    if cfg.data.path.startswith("builtin:shapes") and not cfg.vision.image_folder:
        from adapterhub.training.builtin_data import shapes_folder

        folder = str(shapes_folder())
    vision.images = ImageInputs(vision.processor, Path(folder).expanduser())
    return model, template, vision


def _training_args(cfg: TrainConfig, ckpt_dir: Path, n_samples: int, ds_path: Path | None) -> Any:
    from transformers import TrainingArguments

    per_step = cfg.train.batch_size * cfg.train.grad_accum
    steps = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(
        math.ceil(n_samples / per_step) * cfg.train.epochs)
    return TrainingArguments(
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


def _final_evals(ctx: stages.RunContext, model: Any, tokenizer: Any, template: str | None, tool_parser: str | None,
                 base_general: Any, vision: _Vision, image_qa: Path | None, runlog: RunLog,
                 metrics: dict[str, Any]) -> None:
    """The held-out scores the config asks for, into ``metrics`` (raw answers into the run log)."""
    cfg = ctx.cfg
    if cfg.eval.identity and base_general is not None:
        runlog.write({"final_eval": stages.score_identity(ctx, model, tokenizer, template, base_general, metrics)})
    if cfg.eval.tools:
        from adapterhub.evaluation.tools import evaluate_tools

        tscores = evaluate_tools(model, tokenizer, template, tool_parser or "hermes")
        metrics.update(tool_call=tscores["tool_call"], no_call=tscores["no_call"], tool_result=tscores["tool_result"])
        runlog.write({"final_tool_eval": tscores})
        ctx.console.print(f"tool_call {tscores['tool_call']:.2f} on {tscores['tool_call_n']} held-out tool prompts · "
                          f"no_call {tscores['no_call']:.2f} on {tscores['no_call_n']} plain questions · "
                          f"tool_result {tscores['tool_result']:.2f} on {tscores['tool_result_n']}")
    if image_qa is not None and vision.images is not None:
        from adapterhub.evaluation.images import score_image_qa

        qa = score_image_qa(model, vision.processor, template, image_qa, vision.images.folder)
        answers = qa.pop("answers")
        metrics.update({k: v for k, v in qa.items() if k != "image_qa_n"})
        runlog.write({"final_image_qa": qa, "answers": answers})
        ctx.console.print("held-out image questions: " + " · ".join(
            f"{k} {v:.2f}" for k, v in qa.items() if k != "image_qa_n") + f" on {qa['image_qa_n']}")


def _save(ctx: stages.RunContext, model: Any, trainer: Any, vision: _Vision, out_dir: Path,
          ds_path: Path | None) -> None:
    """The trained weights in their registry format: a bundle, a ZeRO-gathered model, a PiSSA / OLoRA
    adapter converted to a plain LoRA, or a PEFT adapter / HF model directory."""
    cfg = ctx.cfg
    if vision.pretrain:
        from adapterhub.loading.llava import save_bundle

        save_bundle(model, vision.processor, out_dir)
    elif ds_path:
        # Under ZeRO-3 the parameters are partitioned: the Trainer gathers the full 16-bit weights first
        # (a plain save_pretrained would write empty tensors).
        trainer.save_model(str(out_dir))
        (out_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the lineage keeps the config
    elif cfg.method != "full" and cfg.lora.init in ("pissa", "olora"):
        # Converted to a plain LoRA (rank 2r) that applies to the unmodified base, as served and merged.
        model.save_pretrained(str(out_dir), safe_serialization=True,
                              path_initial_model_for_weight_conversion=str(ctx.run_dir / "initial-adapter"))
    else:
        model.save_pretrained(str(out_dir), safe_serialization=True)


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


def _eval_images(cfg: TrainConfig, vision: _Vision) -> Any:
    """(processor, [(PIL image, question)]) for the image sample answers, or None."""
    images = vision.images
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
    return vision.processor, items


def _eval_tools(cfg: TrainConfig) -> list[dict[str, Any]] | None:
    if not cfg.eval.tools:
        return None
    from adapterhub.evaluation.tools import AGENT_TOOLS

    return AGENT_TOOLS


def _printer_class() -> Any:
    from transformers.trainer_callback import PrinterCallback

    return PrinterCallback
