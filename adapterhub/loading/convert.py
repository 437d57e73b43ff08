"""Weight-format conversions that need torch: a GGUF file into an HF directory, and (only when the user
passes ``--allow-pickle``) a pickled ``adapter_model.bin`` into safetensors."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapterhub.errors import MissingDependencyError, ModelNotFoundError, UserInputError
from adapterhub.models import SOURCE_FILE, ResolvedModel, local_model

log = logging.getLogger(__name__)


def gguf_to_hf(gguf: Path, target: Path, model_id: str, kind: str, revision: str,
             upstream: str | None = None) -> ResolvedModel:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise MissingDependencyError("transformers", "train", "converting a GGUF model") from e
    log.info("converting %s to an HF directory (once)", gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with _progress_bars_only_on_a_terminal():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.bfloat16)
        # GGUF loading attaches a quantizer whose config is not serializable; the weights are dequantized.
        if getattr(model, "hf_quantizer", None) is not None:
            try:
                model.hf_quantizer.remove_quantization_config(model)
            except Exception:  # older/newer transformers: clear by hand
                model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if upstream:
            model.config._name_or_path = upstream
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / SOURCE_FILE).write_text(json.dumps(
            {"id": model_id, "kind": kind, "revision": revision, "gguf": gguf.name, "upstream": upstream},
            indent=2,
        ))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (UserInputError, ModelNotFoundError)):
            raise
        raise ModelNotFoundError(f"could not convert {gguf.name}: {e}") from e
    return local_model(target, model_id, kind, revision)


@contextlib.contextmanager
def _progress_bars_only_on_a_terminal() -> Iterator[None]:
    """transformers draws a tqdm bar while it de-quantizes GGUF tensors: on a terminal that is progress,
    in a log file (``make demo > log``) it is hundreds of carriage-return frames on one line."""
    from transformers.utils import logging as hf_logging

    if sys.stderr.isatty() or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def pickle_to_safetensors(src: Path, dst: Path) -> None:
    """Convert ``adapter_model.bin`` to safetensors. Only called when the user passed --allow-pickle."""
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError as e:  # pragma: no cover
        raise MissingDependencyError("torch", "train", "converting pickle weights") from e
    state = torch.load(src, map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst))
