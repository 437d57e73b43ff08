"""Validation of an adapter (or model) directory before it enters the registry.

Reads only JSON and safetensors headers (no torch), and reports every problem at once.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterValidationError
from adapterhub.registry.peft_config import PeftConfig, PeftConfigError, read_peft_config

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
# A vision bundle (adapterhub.loading.llava): the LLaVA parts trained for a text LLM, without the LLM.
LLAVA_CONFIG = "llava_config.json"
VISION_WEIGHTS = "vision.safetensors"
PROJECTOR_WEIGHTS = "projector.safetensors"
BUNDLE_FILES = (LLAVA_CONFIG, VISION_WEIGHTS, PROJECTOR_WEIGHTS, "processor_config.json")
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Return the tensor table of a safetensors file (name -> {dtype, shape, data_offsets})."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("file too short for a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError("implausible safetensors header length")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


@dataclass
class AdapterInfo:
    """What validation learned about a LoRA adapter directory."""

    rank: int
    alpha: float
    target_modules: list[str]
    base_model: str | None
    modules: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # module -> {"A": shape, "B": shape}
    config: dict[str, Any] = field(default_factory=dict)  # adapter_config.json as written

    @property
    def peft(self) -> PeftConfig:
        return PeftConfig(self.config)
    pickle_weights: bool = False


def validate_adapter_dir(path: Path, *, allow_pickle: bool = False, base: str | None = None) -> AdapterInfo:
    """Check a PEFT LoRA directory. Raises :class:`AdapterValidationError` listing every problem."""
    problems: list[str] = []
    subject = f"adapter at {path}"
    if not path.is_dir():
        raise AdapterValidationError(subject, ["directory does not exist"])
    try:
        peft = read_peft_config(path)
    except PeftConfigError as e:
        problems.append(str(e))
        peft = PeftConfig({})
    cfg = peft.raw
    if cfg:
        if peft.peft_type != "LORA":
            problems.append(f"peft_type is {peft.peft_type!r}, only 'LORA' is supported")
        if peft.r <= 0:
            problems.append(f"r must be a positive integer, got {cfg.get('r')!r}")
    rank = peft.r
    base_model = base or peft.base_model
    if not base_model:
        problems.append("no base model recorded (adapter_config.json has no base_model_name_or_path): pass --base")

    weights = path / ADAPTER_WEIGHTS
    pickled = path / PICKLE_WEIGHTS
    modules: dict[str, dict[str, list[int]]] = {}
    if weights.exists():
        try:
            header = read_safetensors_header(weights)
        except (ValueError, OSError) as e:
            header = {}
            problems.append(f"{ADAPTER_WEIGHTS} is not a valid safetensors file ({e})")
        for key, meta in header.items():
            m = _LORA_KEY.match(key)
            if m:
                modules.setdefault(m.group("module"), {})[m.group("ab")] = list(meta.get("shape", []))
        if header and not modules:
            problems.append(f"{ADAPTER_WEIGHTS} holds no lora_A / lora_B tensors")
    elif pickled.exists():
        if not allow_pickle:
            problems.append(
                f"{PICKLE_WEIGHTS} is a pickle file, which can run code when loaded: refusing it "
                "(pass --allow-pickle to convert it to safetensors if you trust its source)"
            )
    else:
        problems.append(f"missing {ADAPTER_WEIGHTS}")

    for module, ab in sorted(modules.items()):
        if set(ab) != {"A", "B"}:
            problems.append(f"{module}: has lora_{''.join(ab)} but not its pair")
            continue
        a, b = ab["A"], ab["B"]
        short = module.split(".")[-1]
        if any(str(t).rsplit(".", 1)[0].endswith(short) or str(t).rsplit(".", 1)[0] == short
               for t in peft.target_parameters):
            continue  # LoRA on a parameter tensor (MoE experts): peft stores one rank per expert
        expected = peft.rank_of(module)
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            problems.append(f"{module}: lora_A {a} and lora_B {b} do not share a rank")
        elif expected and a[0] != expected:
            problems.append(f"{module} ({short}): rank {a[0]} in the weights, r={expected} in the config")
    if problems:
        raise AdapterValidationError(subject, problems)
    targets = peft.target_modules
    return AdapterInfo(
        rank=max([rank] + [ab["A"][0] for ab in modules.values()]) if modules else rank,
        alpha=peft.alpha,
        target_modules=sorted(set(targets) | {m.split(".")[-1] for m in modules}),
        base_model=base_model,
        modules=modules,
        config=cfg,
        pickle_weights=not weights.exists() and pickled.exists(),
    )


def validate_model_dir(path: Path) -> list[str]:
    """Check a full HF model directory (merged or fully fine-tuned). Raises listing every problem."""
    problems = []
    if not (path / "config.json").exists():
        problems.append("missing config.json")
    if not list(path.glob("*.safetensors")):
        if list(path.glob("*.bin")):
            problems.append("weights are pickle .bin files: save with safe_serialization=True")
        else:
            problems.append("no *.safetensors weights")
    if problems:
        raise AdapterValidationError(f"model at {path}", problems)
    return []


def validate_bundle_dir(path: Path) -> None:
    missing = [f for f in BUNDLE_FILES if not (path / f).is_file()]
    if missing:
        raise AdapterValidationError(f"vision bundle at {path}", [f"missing {f}" for f in missing])
    try:
        cfg = json.loads((path / LLAVA_CONFIG).read_text())
    except ValueError as e:
        raise AdapterValidationError(f"vision bundle at {path}", [f"{LLAVA_CONFIG} is not valid JSON ({e})"]) from e
    if "vision_config" not in cfg or "text_config" not in cfg:
        raise AdapterValidationError(f"vision bundle at {path}", [f"{LLAVA_CONFIG} needs vision_config and text_config"])
