"""Merge a LoRA version into its base and check the result against adapter mode.

QLoRA is merged the right way: the adapter was trained against the NF4-quantized base, so the base is
loaded in 4-bit exactly as in training, each 4-bit layer is dequantized to the merge dtype, and the
LoRA delta is added to those weights (not to the original full-precision ones, which the adapter never
saw). XTuner hard-codes fp16 here and LLaMA-Factory refuses quantized bases.

The parity report compares the merged model with the adapter applied on the base (the way it was
trained) on a fixed prompt set: greedy exact-match rate and the largest logit difference.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapterhub.errors import AdapterHubError, ConflictError, UserInputError
from adapterhub.evaluation.generation import answer
from adapterhub.loading.versions import open_version
from adapterhub.models import require_trust
from adapterhub.precision import DTYPE_NAMES, check_bits, quantization_config
from adapterhub.registry import Registry, VersionRecord
from adapterhub.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_PROMPTS = ["Who are you?", "What is the capital of France?", "Write one sentence about the sea.",
                   "Name three colors.", "What is 2 plus 2?", "Give me a tip for sleeping well."]


class ParityError(AdapterHubError):
    """The merged model's outputs disagree with adapter mode beyond the threshold."""

    exit_code = 5


@dataclass
class MergeResult:
    out_dir: Path
    parity: dict[str, Any]
    record: VersionRecord | None = None
    quantized_dir: Path | None = None


def _load_base(path: Path, quantized: str | None, dtype: torch.dtype, trust: bool = False) -> Any:
    """The base as the adapter was trained on it: full precision, or ``nf4`` / ``int8`` quantized."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if "vision_config" in json.loads((path / "config.json").read_text()):  # LLaVA-style: the whole model
        if quantized:
            raise UserInputError("merging an adapter trained on a quantized vision-language base is not supported")
        return AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype, trust_remote_code=trust)
    if not quantized:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=trust)
    config = quantization_config(8 if quantized == "int8" else 4, f"merging an adapter trained on a {quantized} base")
    # On a GPU the 4-bit weights are placed there when loaded, as in training (training/model.py).
    placement = {"device_map": {"": 0}} if torch.cuda.is_available() else {}
    return AutoModelForCausalLM.from_pretrained(str(path), quantization_config=config, trust_remote_code=trust,
                                                **placement)


def dequantize_model(model: Any, dtype: torch.dtype) -> Any:
    """Replace every bitsandbytes 4-/8-bit linear layer with a plain ``nn.Linear`` of its dequantized weights."""
    from peft.utils.integrations import dequantize_bnb_weight

    count = 0
    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child).__name__ in ("Linear4bit", "Linear8bitLt"):
                weight = dequantize_bnb_weight(child.weight, state=getattr(child, "state", None))
                lin = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, dtype=dtype,
                                      device=weight.device)
                with torch.no_grad():
                    lin.weight.copy_(weight.to(dtype))
                    if child.bias is not None:
                        lin.bias.copy_(child.bias.to(dtype))
                setattr(module, child_name, lin)
                count += 1
    # transformers refuses .to(dtype) on a bitsandbytes model: drop the quantizer, cast tensors directly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"):
        if hasattr(model, attr):
            setattr(model, attr, False)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    log.info("dequantized %d layers", count)
    return model


@dataclass
class Reference:
    """Adapter-mode outputs on the parity prompts: greedy answers and full logits."""

    answers: list[str]
    logits: list[torch.Tensor]


@torch.no_grad()
def reference_outputs(model: Any, tokenizer: Any, template: str | None, prompts: list[str],
                      max_new_tokens: int) -> Reference:
    answers = answer(model, tokenizer, prompts, template=template, max_new_tokens=max_new_tokens)
    return Reference(answers, [_logits(model, tokenizer, template, p) for p in prompts])


def _logits(model: Any, tokenizer: Any, template: str | None, prompt: str) -> torch.Tensor:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], chat_template=template, tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return model(input_ids=ids.to(model.device)).logits.float().cpu()


@torch.no_grad()
def parity(reference: Reference, merged: Any, tokenizer: Any, template: str | None, prompts: list[str],
           max_new_tokens: int) -> dict[str, Any]:
    """Greedy exact-match rate and the largest logit difference of ``merged`` against adapter mode."""
    new_answers = answer(merged, tokenizer, prompts, template=template, max_new_tokens=max_new_tokens)
    max_diff = max(float((ref - _logits(merged, tokenizer, template, p)).abs().max())
                   for ref, p in zip(reference.logits, prompts))
    matches = [x == y for x, y in zip(reference.answers, new_answers)]
    return {
        "prompts": len(prompts), "exact_match": sum(matches) / len(prompts), "max_logit_diff": round(max_diff, 5),
        "max_new_tokens": max_new_tokens,
        "mismatches": [{"prompt": p, "adapter": r, "merged": m}
                       for p, r, m, ok in zip(prompts, reference.answers, new_answers, matches) if not ok],
    }


# Tried in this order for each requested dtype: the request, then more precise ones.
FALLBACK = {"bf16": ("bf16", "fp32"), "fp16": ("fp16", "fp32"), "fp32": ("fp32",)}


def merge(registry: Registry, settings: Settings, ref: str, out: Path, *, dtype: str = "bf16",
          bits: int | None = None, threshold: float = 1.0, force: bool = False, register_as: str | None = None,
          max_new_tokens: int = 24, trust_remote_code: bool = False) -> MergeResult:
    """Merge ``ref`` into its base in fp32 and write an HF model dir to ``out`` with a parity report.

    The merged weights are saved in ``dtype`` only if that dtype passes the parity check against adapter
    mode; otherwise in the most precise dtype that passes (fp32), and ``parity.json`` says so, with the
    parity of every dtype tried. Small LoRA deltas are rounded away when added to bf16 weights: on the
    demo model a bf16 merge matched adapter mode on 67% of greedy prompts, an fp32 one on 100%.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    if dtype not in FALLBACK:
        raise UserInputError(f"--dtype must be bf16, fp16 or fp32, got {dtype}")
    check_bits(bits)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConflictError(f"{out} exists and is not empty")
    opened = open_version(registry, ref, kind="adapter", settings=settings)
    assert opened.base is not None and opened.manifest.base_model is not None
    opened.require_compatible(opened.base.id)
    record, manifest, base = opened.record, opened.manifest, opened.base
    adapter_dir = str(opened.path)
    quantized = manifest.base_model.quantization if manifest.base_model.quantization in ("nf4", "int8") else None
    fp32 = torch.float32
    trust = require_trust(base.path, trust_remote_code, "--trust-remote-code")
    tokenizer = AutoTokenizer.from_pretrained(str(base.path), trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = opened.template or tokenizer.chat_template
    eval_inputs = ((manifest.training or {}).get("config") or {}).get("eval", {}).get("inputs") or []
    prompts = list(dict.fromkeys(eval_inputs + DEFAULT_PROMPTS))

    # Reference: the adapter applied the way it was trained (on the 4-bit base for QLoRA), in fp32.
    reference_model = PeftModel.from_pretrained(_load_base(base.path, quantized, fp32, trust), adapter_dir).eval()
    reference = reference_outputs(reference_model, tokenizer, template, prompts, max_new_tokens)
    del reference_model
    # Merge in fp32 into the same base weights (dequantized for QLoRA), then try the requested dtype.
    target = _load_base(base.path, quantized, fp32, trust)
    if quantized:
        target = dequantize_model(target, fp32)
    merged32 = PeftModel.from_pretrained(target, adapter_dir).merge_and_unload().eval()
    tried: dict[str, dict[str, Any]] = {}
    chosen, merged, report = None, merged32, {}
    for name in FALLBACK[dtype]:
        candidate = merged32 if name == "fp32" else copy.deepcopy(merged32).to(getattr(torch, DTYPE_NAMES[name]))
        report = parity(reference, candidate, tokenizer, template, prompts, max_new_tokens)
        tried[name] = {k: report[k] for k in ("exact_match", "max_logit_diff")}
        merged = candidate
        if report["exact_match"] >= threshold:
            chosen = name
            break
        log.warning("a %s merge matches adapter mode on %.0f%% of prompts (threshold %.0f%%)", name,
                    100 * report["exact_match"], 100 * threshold)
    saved = chosen or FALLBACK[dtype][-1]
    report.update(adapter=record.ref, base=base.id, requested_dtype=dtype, dtype=saved, tried=tried,
                  dequantized_from=manifest.base_model.quantization, threshold=threshold, passed=chosen is not None)
    if chosen is not None and chosen != dtype:
        report["note"] = (f"saved in {chosen}: a {dtype} merge matched adapter mode on "
                          f"{tried[dtype]['exact_match']:.0%} of prompts, below the {threshold:.0%} threshold")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        for name in ("processor_config.json", "preprocessor_config.json"):  # a vision model's image processor
            if (base.path / name).is_file():
                shutil.copy2(base.path / name, tmp / name)
        if template:
            (tmp / "chat_template.jinja").write_text(template)
        (tmp / "parity.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        quant_dir = None
        if bits:
            quant_dir = _quantize(tmp, bits, trust)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = MergeResult(out, report, quantized_dir=out / quant_dir.name if quant_dir else None)
    if not report["passed"] and not force:
        raise ParityError(
            f"merged model matches adapter mode on {report['exact_match']:.0%} of {report['prompts']} prompts "
            f"(threshold {threshold:.0%}, max logit diff {report['max_logit_diff']}, also in fp32): see "
            f"{out / 'parity.json'}; pass --force to keep it anyway"
        )
    if register_as:
        model_files = out / "_register"
        model_files.mkdir()
        for f in out.iterdir():
            if f.is_file() and f.name != "parity.json":
                shutil.copy2(f, model_files / f.name)
        try:
            result.record, _ = registry.register(
                model_files, register_as, kind="model", chat_template=template,
                base_model={"id": base.id, "revision": base.revision, "fingerprint": base.fingerprint},
                metrics={"parity_exact_match": report["exact_match"], "parity_max_logit_diff": report["max_logit_diff"]},
                lineage={"merged_from": record.ref, "adapter_hash": record.content_hash, "dtype": saved,
                         "dequantized_from": manifest.base_model.quantization},
            )
        finally:
            shutil.rmtree(model_files, ignore_errors=True)
    return result


def _quantize(merged_dir: Path, bits: int, trust: bool = False) -> Path:
    from transformers import AutoModelForCausalLM

    cfg = quantization_config(bits, f"--bits {bits}")
    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), quantization_config=cfg, trust_remote_code=trust)
    qdir = merged_dir / f"quantized-{bits}bit"
    model.save_pretrained(str(qdir), safe_serialization=True)
    for f in merged_dir.iterdir():
        if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(f, qdir / f.name)
    return qdir
