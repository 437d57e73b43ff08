"""Load the base for training: full precision, 4-bit NF4 (QLoRA), 8-bit or trainable full weights, plus LoRA."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from adapterhub.errors import ConfigError
from adapterhub.precision import quantization_config, torch_dtype
from adapterhub.templates import get_template
from adapterhub.training.config import TrainConfig

log = logging.getLogger(__name__)


def load_tokenizer(path: Path, cfg: TrainConfig) -> tuple[Any, str | None]:
    """The tokenizer and the chat template the run renders with (stored with the result)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=cfg.model.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    template = get_template(cfg.model.template) if cfg.model.template else tok.chat_template
    if template is None and finetunes_vision(cfg) and is_vision_model(path):  # llava-hf: on the processor
        template = getattr(load_processor(path, cfg), "chat_template", None)
    if template is None and cfg.data.mode == "sft":
        raise ConfigError("the base model has no chat template: set model.template (chatml, llama3, alpaca)")
    if template:
        tok.chat_template = template
    return tok, template


def finetunes_vision(cfg: TrainConfig) -> bool:
    """A finetune stage: the base is LLaVA-style (a pretrain stage starts from a text LLM)."""
    return cfg.vision is not None and cfg.vision.stage == "finetune"


def is_vision_model(path: Path) -> bool:
    """A LLaVA-style base: its config has a vision tower."""
    import json

    try:
        return "vision_config" in json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False


def load_processor(path: Path, cfg: TrainConfig) -> Any:
    from transformers import AutoProcessor

    if not is_vision_model(path):
        raise ConfigError("the config has a vision section but the base has no vision tower (a LLaVA-style model "
                          "with vision_config)")
    return AutoProcessor.from_pretrained(str(path), trust_remote_code=cfg.model.trust_remote_code)


def load_base(path: Path, cfg: TrainConfig) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    dtype = torch_dtype(cfg.model.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.model.trust_remote_code}
    if cfg.method == "qlora" or cfg.model.bits == 8:
        kwargs["quantization_config"] = (quantization_config(8, "model.bits 8") if cfg.model.bits == 8 else
                                         quantization_config(4, "method qlora", compute_dtype=torch.bfloat16
                                                             if dtype != torch.float32 else torch.float32))
        if torch.cuda.is_available():
            # 4-bit weights are placed when loaded (the Trainer does not move quantized models): this
            # process's GPU, LOCAL_RANK under a launcher.
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    if cfg.vision is None and is_vision_model(path):
        raise ConfigError("the base is a vision-language model (LLaVA-style): add a vision section to the config "
                          "(vision: {}) to fine-tune it")
    if finetunes_vision(cfg) and not is_vision_model(path):
        raise ConfigError("the config has a vision section but the base has no vision tower (a LLaVA-style model "
                          "with vision_config, or a bundle ref from a pretrain stage); to give this text model a "
                          "vision tower, use vision.stage: pretrain")
    if cfg.vision is not None and cfg.vision.stage == "pretrain" and is_vision_model(path):
        raise ConfigError("vision.stage pretrain starts from a text LLM, but the base already has a vision tower: "
                          "use vision.stage: finetune")
    auto = AutoModelForImageTextToText if finetunes_vision(cfg) else AutoModelForCausalLM
    return auto.from_pretrained(str(path), **kwargs)


def add_lora(model: Any, cfg: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora" or cfg.model.bits == 8:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.model.gradient_checkpointing
        )
    elif cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    targets: Any = cfg.lora.target_modules
    vision_parts = ("vision_tower", "vision_model", "multi_modal_projector")
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
             and not (cfg.vision is not None and any(p in n for p in vision_parts))}
    if isinstance(targets, list):
        missing = sorted(set(targets) - names)
        if missing:
            raise ConfigError(f"lora.target_modules: the base has no module(s) {missing} (has {sorted(names)})")
    save: list[str] | None = None
    if cfg.vision is not None:  # LoRA on the language model; the projector trained whole (modules_to_save)
        chosen = sorted(names - {"lm_head"}) if targets == "all-linear" else sorted(targets)
        targets = r".*language_model.*\.(" + "|".join(chosen) + ")"
        if cfg.vision.tower_lora:  # and on every linear layer of the vision tower
            tower = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                            if isinstance(m, torch.nn.Linear) and ("vision_tower" in n or "vision_model" in n)})
            targets = f"(?:{targets})|(?:.*vision_tower.*\\.({'|'.join(tower)}))"
        save = ["multi_modal_projector"] if cfg.vision.train_projector else None
    init: bool | str = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}[cfg.lora.init]
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none", use_dora=cfg.lora.use_dora,
                      use_rslora=cfg.lora.use_rslora, init_lora_weights=init, modules_to_save=save)
    return get_peft_model(model, lcfg)


def save_initial_adapter(model: Any, cfg: TrainConfig, out: Path) -> Path | None:
    """PiSSA / OLoRA move part of the base weights into the adapter at init. Keep the initial adapter so
    the trained one can be converted back to a plain LoRA on the unmodified base at save time."""
    if cfg.lora.init not in ("pissa", "olora"):
        return None
    adapter_cfg = model.peft_config["default"]
    adapter_cfg.init_lora_weights = True  # peft's recipe: the saved initial adapter is a plain one
    model.save_pretrained(str(out), safe_serialization=True)
    adapter_cfg.init_lora_weights = cfg.lora.init
    return out


def loraplus_optimizer(model: Any, cfg: TrainConfig) -> Any:
    """LoRA+ (peft): AdamW with the B matrices at ``loraplus_lr_ratio`` times the learning rate."""
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW, lr=cfg.train.lr,
                                     loraplus_lr_ratio=cfg.lora.loraplus_lr_ratio,
                                     weight_decay=cfg.train.weight_decay)


def trainable_summary(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
