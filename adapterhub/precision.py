"""Precision policy in one place: dtype names → torch dtypes, and the bitsandbytes quantization configs.

Used by training (LoRA / QLoRA bases), merge (loading and re-quantizing), evaluation and the ``hf``
engine, so "bf16" or "4-bit" means the same thing everywhere. torch, transformers and bitsandbytes are
imported inside the functions (importing this module stays light).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from adapterhub.errors import MissingDependencyError, UserInputError

log = logging.getLogger(__name__)

DTYPE_NAMES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
               "fp32": "float32", "float32": "float32"}
QUANT_LABELS = {4: "nf4", 8: "int8"}


def torch_dtype(name: str, *, model_path: Path | None = None, cuda: bool | None = None) -> Any:
    """The torch dtype for ``bf16|fp16|fp32`` (or ``auto``: the model config's dtype, fp32 if none).

    fp16 falls back to fp32 without CUDA (fp16 matmuls are slow or unsupported on CPUs), and so does bf16
    on a CPU without bf16 instructions (AVX512-BF16 or AMX): there torch emulates it, measured 37× slower
    than fp32 for the demo model's largest matmul on an AVX2-only EPYC (966 vs 26 ms), where the same
    matmul in bf16 is faster than fp32 on a CPU that has them. Each fallback is logged.
    """
    import torch

    if name == "auto":
        cfg = json.loads((Path(model_path) / "config.json").read_text()) if model_path else {}
        name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    if name not in DTYPE_NAMES:
        raise UserInputError(f"unknown dtype {name!r}: bf16, fp16 or fp32")
    dt = getattr(torch, DTYPE_NAMES[name])
    on_cuda = torch.cuda.is_available() if cuda is None else cuda
    if dt == torch.float16 and not on_cuda:
        log.warning("fp16 is not supported on CPU: using fp32")
        dt = torch.float32
    if dt == torch.bfloat16 and not on_cuda and not cpu_has_bf16():
        log.warning("this CPU has no bf16 instructions (AVX512-BF16 or AMX), where bf16 is emulated and many "
                    "times slower: using fp32")
        dt = torch.float32
    return dt


def dtype_name(name: str, *, model_path: Path | None = None, cuda: bool | None = None) -> str:
    """:func:`torch_dtype` as the name other engines take (``bfloat16``, ``float16``, ``float32``): the
    vLLM engine follows the same CPU fallbacks."""
    return str(torch_dtype(name, model_path=model_path, cuda=cuda)).removeprefix("torch.")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles); ``ADAPTERHUB_CPU_BF16=1|0``
    overrides the detection."""
    import os

    import torch

    forced = os.environ.get("ADAPTERHUB_CPU_BF16")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes")
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(p()) for p in probes if p is not None)


def check_bits(bits: int | None) -> None:
    if bits is not None and bits not in QUANT_LABELS:
        raise UserInputError(f"--bits must be 4 or 8, got {bits}")


def quantization_config(bits: int, purpose: str, *, compute_dtype: Any = None) -> Any:
    """The ``BitsAndBytesConfig`` for 4-bit NF4 (double quant, QLoRA's) or 8-bit loading.

    Raises:
        MissingDependencyError: bitsandbytes is not installed (names the ``quant`` extra).
    """
    check_bits(bits)
    try:
        import bitsandbytes  # noqa: F401
        import torch
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise MissingDependencyError("bitsandbytes", "quant", purpose) from e
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16)


def quant_label_of(config: Any) -> str | None:
    """``nf4`` / ``int8`` / the method name for a model config's ``quantization_config`` (None if absent)."""
    q = getattr(config, "quantization_config", None)
    if q is None:
        return None
    q = q if isinstance(q, dict) else q.to_dict()
    return "nf4" if q.get("load_in_4bit") else "int8" if q.get("load_in_8bit") else str(q.get("quant_method"))
