"""Load the ``hf`` engine's model and tokenizer: dtype, bitsandbytes 4/8-bit, device placement, EOS ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapterhub.precision import QUANT_LABELS, check_bits, quant_label_of, quantization_config, torch_dtype


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    quantization: str | None  # "nf4" | "int8" | a pre-quantized model's method | None
    eos_ids: set[int]
    pad_id: int
    processor: Any = None  # a vision-language model's processor (images → pixel values, image tokens)


def load_model(model_path: Path, *, dtype: str = "auto", bits: int | None = None,
               device: str | None = None, trust_remote_code: bool = False) -> LoadedModel:
    """The model in eval mode with gradients off, on ``device`` (CUDA when available, else CPU)."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_bits(bits)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kwargs: dict[str, Any] = {}
    if bits is not None:
        kwargs["quantization_config"] = quantization_config(bits, f"loading the base in {bits}-bit")
    if dev.type != "cpu":
        kwargs["device_map"] = {"": str(dev)}  # quantized weights are placed when loaded
    dt = torch_dtype(dtype, model_path=model_path, cuda=dev.type == "cuda")
    try:
        multimodal = "vision_config" in json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        multimodal = False
    processor = None
    if multimodal:  # LLaVA-style: the processor expands image placeholders and makes pixel values
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
        tokenizer = processor.tokenizer
        model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=dt,
                                                            trust_remote_code=trust_remote_code, **kwargs)
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dt, trust_remote_code=trust_remote_code,
                                                     **kwargs)
    quant = QUANT_LABELS[bits] if bits is not None else quant_label_of(model.config)  # e.g. `merge --bits 4`
    if quant is None:
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    eos = eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    return LoadedModel(model, tokenizer, dev, dt, quant, eos, pad, processor)


def eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """Every id that ends a turn: the tokenizer's and config's EOS plus the common end-of-turn tokens."""
    ids: set[int] = set()
    for src in (tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None),
                getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids
