"""Load the base for training: full precision, 4-bit NF4 (QLoRA) or trainable full weights, plus LoRA."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from adapterhub.errors import ConfigError
from adapterhub.precision import quantization_config, torch_dtype
from adapterhub.templates import get_template
from training.config import TrainConfig

log = logging.getLogger(__name__)


def load_tokenizer(path: Path, cfg: TrainConfig) -> tuple[Any, str | None]:
    """The tokenizer and the chat template the run renders with (stored with the result)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    template = get_template(cfg.model.template) if cfg.model.template else tok.chat_template
    if template is None and cfg.data.mode == "sft":
        raise ConfigError("the base model has no chat template: set model.template (chatml, llama3, alpaca)")
    if template:
        tok.chat_template = template
    return tok, template


def load_base(path: Path, cfg: TrainConfig) -> Any:
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(cfg.model.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.method == "qlora":
        kwargs["quantization_config"] = quantization_config(
            4, "method qlora", compute_dtype=torch.bfloat16 if dtype != torch.float32 else torch.float32)
        if torch.cuda.is_available():
            # 4-bit weights are placed when loaded (the Trainer does not move quantized models): this
            # process's GPU, LOCAL_RANK under a launcher.
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def add_lora(model: Any, cfg: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.model.gradient_checkpointing
        )
    elif cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    targets = cfg.lora.target_modules
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if isinstance(targets, list):
        missing = sorted(set(targets) - names)
        if missing:
            raise ConfigError(f"lora.target_modules: the base has no module(s) {missing} (has {sorted(names)})")
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, lcfg)


def trainable_summary(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
