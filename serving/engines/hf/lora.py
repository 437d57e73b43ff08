"""Batched multi-LoRA for plain torch models (the Punica / S-LoRA idea without custom kernels).

Every targeted ``nn.Linear`` is wrapped once at start-up by :class:`BatchedLoraLinear`, which owns
preallocated stacks ``A[slots, r_max, in]`` and ``B[slots, out, r_max]``. Slot 0 stays zero (the
base model). A batch carries one slot index per row; each layer adds ``bmm(bmm(x, A[idx]ᵀ), B[idx]ᵀ)``
— one gathered matmul pair per layer for all adapters in the batch, instead of peft's loop over the
adapters present. Loading an adapter is copying its safetensors into a free slot (scaling folded into
B); zero-padding up to ``r_max`` is exact.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


class SlotContext:
    """Per-forward state shared by all wrapped layers: the slot index of each batch row.

    ``version`` changes whenever the indices (a new tensor: rows joined or left the batch) or the slot
    contents (a load or unload) change; layers keep their gathered per-row A/B until it does, so
    decode steps of an unchanged batch skip the gather.
    """

    def __init__(self) -> None:
        self._indices: torch.Tensor | None = None
        self._last: torch.Tensor | None = None  # held, so a new tensor can never reuse its identity
        self.version = 0

    @property
    def indices(self) -> torch.Tensor | None:
        return self._indices

    @indices.setter
    def indices(self, value: torch.Tensor | None) -> None:
        self._indices = value
        if value is not None and value is not self._last:
            self._last = value
            self.version += 1

    def invalidate(self) -> None:
        self.version += 1


class BatchedLoraLinear(nn.Module):
    def __init__(self, base: nn.Module, slots: int, max_rank: int, ctx: SlotContext,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.base = base
        self.ctx = ctx
        self.in_features = int(base.in_features)
        self.out_features = int(base.out_features)
        self.A = torch.zeros(slots, max_rank, self.in_features, dtype=dtype)
        self.B = torch.zeros(slots, self.out_features, max_rank, dtype=dtype)
        self.users = 0  # loaded adapters that target this layer; 0 → skip the LoRA math
        self._gathered: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (version, A^T, B^T) per row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        idx = self.ctx.indices
        if idx is None or self.users == 0:
            return y
        if self._gathered is None or self._gathered[0] != self.ctx.version:
            self._gathered = (self.ctx.version, self.A.index_select(0, idx).transpose(1, 2),  # [b, in, r]
                              self.B.index_select(0, idx).transpose(1, 2))  # [b, r, out]
        _, a, b = self._gathered
        h = torch.bmm(x if x.dtype == a.dtype else x.to(a.dtype), a)
        out = torch.bmm(h, b)
        return y + (out if out.dtype == y.dtype else out.to(y.dtype))


@dataclass
class SlotAdapter:
    slot: int
    modules: list[str]


class LoraSlots:
    """Owns the wrapped layers and the slot table of one model."""

    def __init__(self, model: nn.Module, *, max_loaded: int, max_rank: int,
                 targets: tuple[str, ...] = LINEAR_TARGETS, dtype: torch.dtype | None = None) -> None:
        self.ctx = SlotContext()
        self.max_rank = max_rank
        self.slots = max_loaded + 1
        self.layers: dict[str, BatchedLoraLinear] = {}
        dtype = dtype or next(model.parameters()).dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            dtype = torch.bfloat16  # quantized bases: LoRA math in bf16
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if child_name in targets and hasattr(child, "in_features") and hasattr(child, "out_features"):
                    wrapped = BatchedLoraLinear(child, self.slots, max_rank, self.ctx, dtype)
                    setattr(module, child_name, wrapped)
                    full = f"{name}.{child_name}" if name else child_name
                    self.layers[full] = wrapped
        self.free = list(range(self.slots - 1, 0, -1))
        self.loaded: dict[str, SlotAdapter] = {}

    def release_gathered(self) -> None:
        """Drop each layer's gathered per-row A/B (up to batch × rank × (in + out) per layer) once idle."""
        for layer in self.layers.values():
            layer._gathered = None

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        shapes: dict[str, tuple[int, int]] = {}
        for name, layer in self.layers.items():
            shapes.setdefault(name.rsplit(".", 1)[-1], (layer.in_features, layer.out_features))
        return shapes

    def slot_of(self, key: str | None) -> int:
        return 0 if key is None else self.loaded[key].slot

    def load(self, key: str, path: Path) -> None:
        """Copy an adapter's weights into a free slot. Raises ``ValueError`` on anything unexpected."""
        import json

        from safetensors.torch import load_file

        if key in self.loaded:
            return
        if not self.free:
            from adapterhub.errors import OverloadedError

            raise OverloadedError(f"all {self.slots - 1} adapter slots are in use")
        cfg: dict[str, Any] = json.loads((path / "adapter_config.json").read_text())
        tensors = load_file(str(path / "adapter_model.safetensors"))
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for k, t in tensors.items():
            m = _KEY.match(k)
            if m:
                pairs.setdefault(m.group("module"), {})[m.group("ab")] = t
        unknown = sorted(m for m in pairs if m not in self.layers)
        if unknown:
            raise ValueError(f"modules not in this model: {', '.join(unknown[:5])}")
        r_default = int(cfg["r"])
        alpha_default = float(cfg.get("lora_alpha", r_default))
        slot = self.free.pop()
        try:
            for layer in self.layers.values():
                layer.A[slot].zero_()
                layer.B[slot].zero_()
            for name, ab in pairs.items():
                layer = self.layers[name]
                a, b = ab["A"], ab["B"]
                r = a.shape[0]
                if r > self.max_rank:
                    raise ValueError(f"{name}: rank {r} exceeds max rank {self.max_rank}")
                if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
                    raise ValueError(f"{name}: adapter shape {tuple(b.shape[:1]) + tuple(a.shape[1:])} "
                                     f"does not match ({layer.out_features}, {layer.in_features})")
                alpha = _pattern(cfg.get("alpha_pattern"), name, alpha_default)
                scale = alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
                layer.A[slot, :r].copy_(a)
                layer.B[slot, :, :r].copy_(b.to(torch.float32) * scale)
        except Exception:
            self.free.append(slot)
            raise
        for name in pairs:
            self.layers[name].users += 1
        self.loaded[key] = SlotAdapter(slot, list(pairs))
        self.ctx.invalidate()

    def unload(self, key: str) -> None:
        entry = self.loaded.pop(key, None)
        if entry is None:
            return
        for name in entry.modules:
            layer = self.layers[name]
            layer.users -= 1
            layer.A[entry.slot].zero_()
            layer.B[entry.slot].zero_()
        self.free.append(entry.slot)
        self.ctx.invalidate()


def _pattern(patterns: dict[str, Any] | None, module: str, default: float) -> float:
    for k, v in (patterns or {}).items():
        if module.endswith(k):
            return float(v)
    return default
