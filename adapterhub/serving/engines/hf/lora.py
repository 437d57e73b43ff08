"""Batched multi-LoRA for plain torch models (the Punica / S-LoRA idea without custom kernels).

Every linear-like layer (``nn.Linear`` and subclasses, fused projections, GPT-2's ``Conv1D``; not the
output head) is wrapped once at start-up by :class:`BatchedLoraLinear`, which owns stacks
``A[slots, r_max, in]`` and ``B[slots, out, r_max]``, allocated while some loaded adapter targets it. Slot 0 stays zero (the
base model). A batch carries one slot index per row; each layer adds ``bmm(bmm(x, A[idx]ᵀ), B[idx]ᵀ)``
— one gathered matmul pair per layer for all adapters in the batch, instead of peft's loop over the
adapters present. Loading an adapter is copying its safetensors into a free slot (scaling folded into
B); zero-padding up to ``r_max`` is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adapterhub.registry.peft_config import read_peft_config

# The modules vLLM's LoRA support covers for Llama-style models (the vLLM engine's list).
LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Module-name parts of a vision-language model's image encoder and projector (LLaVA and its kin).
VISION_PARTS = ("vision_tower", "vision_model", "multi_modal_projector", "visual")
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


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear-like layer LoRA can adapt: ``nn.Linear`` and its subclasses (bitsandbytes'
    4/8-bit linears, fused projections such as ``qkv_proj``) and GPT-2's ``Conv1D`` (weight stored
    transposed, ``[in, out]``); None for anything else."""
    if isinstance(module, nn.Linear):
        return int(module.in_features), int(module.out_features)
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and weight is not None and weight.dim() == 2:
        return int(weight.shape[0]), int(module.nf)
    return None


class BatchedLoraLinear(nn.Module):
    """One linear-like layer with a LoRA slot stack. The stacks are allocated when the first adapter
    targeting the layer loads and freed when the last one unloads: an untargeted layer costs neither
    memory nor compute."""

    def __init__(self, base: nn.Module, slots: int, max_rank: int, ctx: SlotContext,
                 dtype: torch.dtype, shape: tuple[int, int], device: torch.device) -> None:
        super().__init__()
        self.base = base
        self.ctx = ctx
        self.in_features, self.out_features = shape
        self.slots, self.max_rank, self.dtype, self.device = slots, max_rank, dtype, device
        self.A: torch.Tensor | None = None  # [slots, r_max, in]
        self.B: torch.Tensor | None = None  # [slots, out, r_max]
        self.users = 0  # loaded adapters that target this layer; 0 → skip the LoRA math
        self._gathered: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (version, A^T, B^T) per row

    def allocate(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.A is None or self.B is None:
            self.A = torch.zeros(self.slots, self.max_rank, self.in_features, dtype=self.dtype, device=self.device)
            self.B = torch.zeros(self.slots, self.out_features, self.max_rank, dtype=self.dtype, device=self.device)
        return self.A, self.B

    def release(self) -> None:
        self.A = self.B = None
        self._gathered = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        idx = self.ctx.indices
        if idx is None or self.users == 0 or self.A is None or self.B is None:
            return y
        if self._gathered is None or self._gathered[0] != self.ctx.version:
            # Contiguous once per batch: bmm copies a transposed operand on every call otherwise (the
            # copies were most of a decode step's LoRA time on CPU).
            self._gathered = (self.ctx.version, self.A.index_select(0, idx).transpose(1, 2).contiguous(),  # [b, in, r]
                              self.B.index_select(0, idx).transpose(1, 2).contiguous())  # [b, r, out]
        _, a, b = self._gathered
        if x.dim() == 2:  # MoE blocks flatten (batch, seq, hidden) to (batch·seq, hidden), batch-major
            rows = a.shape[0]
            if x.shape[0] % rows:
                raise RuntimeError(f"a LoRA layer got {x.shape[0]} tokens for a batch of {rows} rows")
            return y.add_(torch.bmm(torch.bmm(x.view(rows, -1, x.shape[-1]).to(a.dtype), a), b).view_as(y))
        h = torch.bmm(x if x.dtype == a.dtype else x.to(a.dtype), a)
        # In place, summed in the LoRA dtype and rounded once to the base's (as peft does): no extra
        # conversion op and no new output tensor per layer.
        return y.add_(torch.bmm(h, b))


@dataclass
class SlotAdapter:
    slot: int
    modules: list[str]


class LoraSlots:
    """Owns the wrapped layers and the slot table of one model."""

    def __init__(self, model: nn.Module, *, max_loaded: int, max_rank: int,
                 targets: tuple[str, ...] | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu") -> None:
        """Wrap every linear-like layer (``targets``: only those names) except the output head, the way
        peft's ``all-linear`` chooses, so adapters for any architecture find their modules."""
        self.ctx = SlotContext()
        self.max_rank = max_rank
        self.slots = max_loaded + 1
        self.layers: dict[str, BatchedLoraLinear] = {}
        dtype = dtype or next(model.parameters()).dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            dtype = torch.bfloat16  # quantized bases: LoRA math in bf16
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        for name, module in list(model.named_modules()):
            if any(part in name for part in VISION_PARTS):
                continue  # a vision-language model's image side runs on images, not on the batch's rows
            for child_name, child in list(module.named_children()):
                shape = linear_shape(child)
                if shape is None or child is head or (targets is not None and child_name not in targets):
                    continue
                wrapped = BatchedLoraLinear(child, self.slots, max_rank, self.ctx, dtype, shape, torch.device(device))
                setattr(module, child_name, wrapped)
                full = f"{name}.{child_name}" if name else child_name
                self.layers[full] = wrapped
        self.free = list(range(self.slots - 1, 0, -1))
        self.loaded: dict[str, SlotAdapter] = {}

    def release_gathered(self) -> None:
        """Drop each layer's gathered per-row A/B (up to batch × rank × (in + out) per layer) once idle."""
        for layer in self.layers.values():
            layer._gathered = None

    def target_suffixes(self) -> frozenset[str]:
        return frozenset(name.rsplit(".", 1)[-1] for name in self.layers)

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) by full module name, and by name suffix where every layer of that suffix has one shape
        (GPT-2's ``c_proj`` is 64->64 in attention and 256->64 in the MLP: only its full names are listed)."""
        shapes: dict[str, tuple[int, int]] = {}
        by_suffix: dict[str, set[tuple[int, int]]] = {}
        for name, layer in self.layers.items():
            shape = (layer.in_features, layer.out_features)
            shapes[name] = shape
            by_suffix.setdefault(name.rsplit(".", 1)[-1], set()).add(shape)
        shapes.update({suffix: next(iter(s)) for suffix, s in by_suffix.items() if len(s) == 1})
        return shapes

    def slot_of(self, key: str | None) -> int:
        return 0 if key is None else self.loaded[key].slot

    def load(self, key: str, path: Path) -> None:
        """Copy an adapter's weights into a free slot. Raises ``ValueError`` on anything unexpected."""

        from safetensors.torch import load_file

        if key in self.loaded:
            return
        if not self.free:
            from adapterhub.errors import OverloadedError

            raise OverloadedError(f"all {self.slots - 1} adapter slots are in use")
        peft = read_peft_config(path)
        tensors = load_file(str(path / "adapter_model.safetensors"))
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for k, t in tensors.items():
            m = _KEY.match(k)
            if m:
                pairs.setdefault(m.group("module"), {})[m.group("ab")] = t
        unknown = sorted(m for m in pairs if m not in self.layers)
        if unknown:
            raise ValueError(f"modules not in this model: {', '.join(unknown[:5])}")
        slot = self.free.pop()
        try:
            for name, ab in pairs.items():
                layer = self.layers[name]
                a, b = ab["A"], ab["B"]
                r = a.shape[0]
                if r > self.max_rank:
                    raise ValueError(f"{name}: rank {r} exceeds max rank {self.max_rank}")
                if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features:
                    raise ValueError(f"{name}: adapter shape {tuple(b.shape[:1]) + tuple(a.shape[1:])} "
                                     f"does not match ({layer.out_features}, {layer.in_features})")
                scale = peft.scale_of(name, r)
                stack_a, stack_b = layer.allocate()
                stack_a[slot].zero_()
                stack_b[slot].zero_()
                stack_a[slot, :r].copy_(a)
                stack_b[slot, :, :r].copy_(b.to(torch.float32) * scale)
        except Exception:
            for name in pairs:
                layer = self.layers.get(name)
                if layer is not None and layer.users == 0:
                    layer.release()
                elif layer is not None and layer.A is not None and layer.B is not None:
                    layer.A[slot].zero_()
                    layer.B[slot].zero_()
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
            if layer.users == 0:
                layer.release()  # no loaded adapter targets it: give the stacks back
            elif layer.A is not None and layer.B is not None:
                layer.A[entry.slot].zero_()
                layer.B[entry.slot].zero_()
        self.free.append(entry.slot)
        self.ctx.invalidate()
