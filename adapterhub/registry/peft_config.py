"""``adapter_config.json`` read once, typed (vLLM's ``peft_helper.py`` plays this part there): what the
registry validates, what the server checks against its engine, and what the hf engine scales LoRA by.

peft writes this file and newer peft versions add keys; unknown keys are kept in :attr:`PeftConfig.raw`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"


class PeftConfigError(ValueError):
    """The file is missing or is not a JSON object (the message says which)."""


@dataclass(frozen=True)
class PeftConfig:
    raw: dict[str, Any]

    @property
    def peft_type(self) -> Any:
        return self.raw.get("peft_type")

    @property
    def r(self) -> int:
        """The default rank (0 when the file has no valid one: validation reports it)."""
        r = self.raw.get("r")
        return r if isinstance(r, int) and not isinstance(r, bool) else 0

    @property
    def alpha(self) -> float:
        return float(self.raw.get("lora_alpha") or self.r)

    @property
    def target_modules(self) -> list[str]:
        t = self.raw.get("target_modules") or []
        return [t] if isinstance(t, str) else list(t)

    @property
    def target_parameters(self) -> list[str]:
        """peft's LoRA on parameter tensors (MoE experts), which no per-request engine applies."""
        return list(self.raw.get("target_parameters") or [])

    @property
    def modules_to_save(self) -> list[str]:
        return list(self.raw.get("modules_to_save") or [])

    @property
    def base_model(self) -> str | None:
        return self.raw.get("base_model_name_or_path") or None

    @property
    def use_dora(self) -> bool:
        return bool(self.raw.get("use_dora"))

    @property
    def use_rslora(self) -> bool:
        return bool(self.raw.get("use_rslora"))

    @property
    def dropout(self) -> Any:
        return self.raw.get("lora_dropout")

    def rank_of(self, module: str) -> int:
        """The configured rank of ``module`` (``rank_pattern`` entries match module-name suffixes)."""
        return int(_pattern(self.raw.get("rank_pattern"), module, self.r))

    def scale_of(self, module: str, rank: int) -> float:
        """The factor on ``B @ A`` for ``module`` at ``rank``: alpha / r (rsLoRA: alpha / sqrt(r))."""
        alpha = _pattern(self.raw.get("alpha_pattern"), module, self.alpha)
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)


def read_peft_config(adapter_dir: Path) -> PeftConfig:
    """Raises :class:`PeftConfigError` for a missing file or one that is not a JSON object."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PeftConfigError(f"missing {ADAPTER_CONFIG}") from None
    except ValueError as e:
        raise PeftConfigError(f"{ADAPTER_CONFIG} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise PeftConfigError(f"{ADAPTER_CONFIG} is not valid JSON (not an object)")
    return PeftConfig(raw)


def _pattern(patterns: dict[str, Any] | None, module: str, default: float) -> float:
    for k, v in (patterns or {}).items():
        if module.endswith(k):
            return float(v)
    return default
