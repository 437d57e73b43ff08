"""Preference training (DPO, ORPO, KTO) with TRL's trainers, on LoRA or QLoRA, registered as a version.

The data is pairs: ``{"prompt", "chosen", "rejected"}`` with strings, or messages-style
``{"chosen": [...messages], "rejected": [...messages]}`` whose last turn differs. They become TRL's
conversational format, rendered with the run's chat template (the same one SFT and serving use).
KTO learns from unpaired examples: each pair gives one desirable and one undesirable completion.

Continuing a registered adapter (``model.adapter: lumen@3``) starts from its weights and records it as
the new version's parent. The reference model is what the method needs and nothing more: DPO and KTO
compare against the starting point (the parent adapter, kept as a frozen copy inside the same model by
TRL, or the base with the adapter switched off for a fresh LoRA); ORPO needs none.
"""

from __future__ import annotations

import json
import math
from typing import Any

from adapterhub.errors import ConfigError, MissingDependencyError
from adapterhub.training import stages
from adapterhub.training.config import TrainConfig


def preference_pairs(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The dataset as conversational pairs; every malformed record is named."""
    from adapterhub.training.data import load_records

    records, _ = load_records(cfg.data, detect=False)
    pairs, problems = [], []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            problems.append(f"record {i}: not an object")
            continue
        chosen, rejected = r.get("chosen"), r.get("rejected")
        if isinstance(chosen, list) and isinstance(rejected, list):
            if len(chosen) < 2 or len(rejected) != len(chosen) or chosen[:-1] != rejected[:-1] \
                    or any(not isinstance(m, dict) or m.get("role") != "assistant" for m in (chosen[-1], rejected[-1])):
                problems.append(f"record {i}: 'chosen' and 'rejected' must share every turn but the last, which is "
                                "an assistant turn")
                continue
            prompt, chosen, rejected = chosen[:-1], [chosen[-1]], [rejected[-1]]
        elif isinstance(r.get("prompt"), str) and isinstance(chosen, str) and isinstance(rejected, str):
            prompt = [{"role": "user", "content": r["prompt"]}]
            if cfg.data.system:
                prompt.insert(0, {"role": "system", "content": cfg.data.system})
            chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        else:
            problems.append(f"record {i}: needs 'prompt', 'chosen' and 'rejected' strings, or 'chosen' and "
                            f"'rejected' message lists (has {sorted(r)})")
            continue
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ConfigError(f"data.path {cfg.data.path}: " + "; ".join(problems[:5]) + more)
    return pairs


def _trl() -> Any:
    try:
        import trl
    except ImportError as e:
        raise MissingDependencyError("trl", "train", "preference training") from e
    return trl


def run_preference(ctx: stages.RunContext) -> stages.TrainResult:
    """Run DPO / ORPO / KTO on a fresh LoRA or a registered adapter; the shared stages do the rest."""
    import datasets
    import torch
    from transformers.trainer_callback import PrinterCallback

    from adapterhub.training.callbacks import plot_loss
    from adapterhub.training.model import add_lora, load_base, load_tokenizer

    cfg = ctx.cfg
    assert cfg.preference is not None
    if ctx.resume:
        raise ConfigError("--resume is not supported for preference training yet (its runs keep no checkpoints)")
    trl = _trl()
    pairs = preference_pairs(cfg)  # before any model load
    stages.write_config(ctx)
    torch.manual_seed(cfg.train.seed)
    parent = ctx.registry.resolve(cfg.model.adapter) if cfg.model.adapter else None
    resolved = stages.resolve(ctx)
    if parent is not None:
        from adapterhub.loading.versions import open_version

        opened = open_version(ctx.registry, parent, kind="adapter", on_base=resolved.identity())
        opened.require_compatible(resolved.id, [])
    tokenizer, template = load_tokenizer(resolved.path, cfg)
    if template:
        tokenizer.chat_template = template
    model = load_base(resolved.path, cfg)
    if parent is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(ctx.registry.path(parent)), is_trainable=True)
    else:
        model = add_lora(model, cfg)

    method = cfg.preference.method
    common = dict(output_dir=str(ctx.run_dir / "checkpoints"), per_device_train_batch_size=cfg.train.batch_size,
                  gradient_accumulation_steps=cfg.train.grad_accum, learning_rate=cfg.train.lr,
                  num_train_epochs=cfg.train.epochs, max_steps=cfg.train.max_steps,
                  lr_scheduler_type=cfg.train.scheduler,
                  weight_decay=cfg.train.weight_decay, optim=cfg.train.optimizer,
                  logging_steps=cfg.train.logging_steps, save_strategy="no", report_to=cfg.train.report_to,
                  disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=cfg.train.seed,
                  bf16=cfg.model.dtype == "bf16" and torch.cuda.is_available(),
                  max_length=cfg.data.max_length, beta=cfg.preference.beta)
    n_items = len(pairs) * (2 if method == "kto" else 1)
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    steps = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(math.ceil(n_items / per_step) * cfg.train.epochs)
    common["warmup_steps"] = int(cfg.train.warmup_ratio * steps)
    if method == "dpo":
        args = trl.DPOConfig(**common)
        trainer_cls, data = trl.DPOTrainer, pairs
    elif method == "kto":
        args = trl.KTOConfig(**common)
        trainer_cls = trl.KTOTrainer
        data = [{"prompt": p["prompt"], "completion": p[k], "label": k == "chosen"}
                for p in pairs for k in ("chosen", "rejected")]
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args, trainer_cls, data = ORPOConfig(**common), ORPOTrainer, pairs
    with stages.tracker_dirs(cfg.train.report_to, ctx.run_dir):
        trainer = trainer_cls(model=model, args=args, train_dataset=datasets.Dataset.from_list(data),
                              processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        ctx.console.print(f"[bold]{cfg.name}[/bold]: {method} on {resolved.id}"
                          + (f" from {parent.ref}" if parent else "")
                          + f" · {len(pairs)} preference pairs · run dir {ctx.run_dir}")
        out = trainer.train()
    train_time = ctx.elapsed()
    history = [h for h in trainer.state.log_history if "loss" in h]
    losses = [(int(h["step"]), float(h["loss"])) for h in history]
    (ctx.run_dir / "log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in trainer.state.log_history))
    plot_loss(losses, ctx.run_dir / "loss.png", f"{cfg.name} ({method})")
    margins = [h[k] for h in history for k in ("rewards/margins",) if k in h]

    model = trainer.model
    metrics: dict[str, Any] = {"train_loss": round(float(out.training_loss), 4)}
    if margins:
        metrics["reward_margin"] = round(float(margins[-1]), 4)
    if cfg.eval.identity:
        from adapterhub.evaluation.reference import retention_reference

        model.eval()
        if "ref" in getattr(model, "peft_config", {}):
            model.set_adapter("default")
        with model.disable_adapter():
            base_general = retention_reference(model, tokenizer, template, ctx.settings.cache_dir, resolved.fingerprint)
        scores = stages.score_identity(ctx, model, tokenizer, template, base_general, metrics)
        (ctx.run_dir / "final_eval.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False))

    out_dir = ctx.run_dir / "adapter"
    model.save_pretrained(str(out_dir), safe_serialization=True, selected_adapters=["default"])
    stages.save_tokenizer_and_template(out_dir, tokenizer, template, adapter=True)
    final_loss = losses[-1][1] if losses else None
    lineage = {"method": f"{cfg.method}+{method}", "n_pairs": len(pairs), "final_loss": final_loss,
               "steps": trainer.state.global_step, "wall_time_s": round(train_time, 1),
               "parent": parent.ref if parent else None, "loss_curve": stages.loss_curve(losses)}
    record, created = stages.finish(
        ctx, resolved, out_dir, kind="adapter", template=template, lineage=lineage, metrics=metrics,
        links={"parent": parent.ref, "parent_hash": parent.content_hash} if parent else None,
        parent=parent.version if parent is not None and parent.name == cfg.name else None)
    return stages.TrainResult(run_dir=ctx.run_dir, output_dir=out_dir, record=record, final_loss=final_loss,
                              steps=trainer.state.global_step, wall_time_s=train_time, tokens=0, tokens_per_s=0.0,
                              metrics=metrics, created=created, base_id=cfg.model.base)
