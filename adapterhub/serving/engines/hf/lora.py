"""Batched multi-LoRA for plain torch models (the Punica / S-LoRA idea without custom kernels).

Every linear-like layer (``nn.Linear`` and subclasses, fused projections, GPT-2's ``Conv1D``; not the
output head) is wrapped once at start-up by :class:`BatchedLoraLinear`, which owns stacks
``A[slots, r_max, in]`` and ``Bᵀ[slots, r_max, out]``, allocated while some loaded adapter targets it. Slot 0 stays
zero (the base model). A batch carries one slot index per row; each layer adds ``bmm(bmm(x, A[idx]ᵀ), Bᵀ[idx])``
— one gathered matmul pair per layer for all adapters in the batch, instead of peft's loop over the
adapters present. On CPU, once it has been built, one fused op per layer (:mod:`.cpu_kernel`) runs the same
sum for prefill and decode alike, reading each row's adapter straight from the stacks at its own rank: the
gathering, rank grouping and derivation below are then the CUDA path (and a CPU's without a compiler).

Ranks: a layer computes at the largest rank among the batch's rows, not the server's ``r_max``
(zero-padding is exact, so slicing it off changes nothing). When the batch mixes ranks, rows are split
into groups of neighbouring ranks, each padded to its largest, where a cost model says that is cheaper
than one pass padded to the batch's largest: a group costs the weights it reads (rows × rank × (in + out))
plus a fixed overhead per bmm pair and per row selection (:func:`plan_rank_groups`). At decode on a CPU
the overheads dominate small batches: eight rows of ranks 8×5, 16×2 and 64 run as two groups (ranks ≤ 16
padded to 16, and the 64) rather than three, and a few rows of ranks 8 and 16 as one pass.

Loading is two steps: :meth:`LoraSlots.read` parses and checks an adapter's safetensors into
:class:`HostAdapter` tensors (scaling folded into B, the stacks' dtype; pinned memory on CUDA), which
:class:`HostCache` keeps in host memory bounded in bytes; :meth:`LoraSlots.load_host` copies them into a
free slot (on CUDA on a side stream). Neither touches a slot a running row uses, so the decode loop
never waits for them.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adapterhub.registry.peft_config import read_peft_config
from adapterhub.serving.engines.hf import cpu_kernel

INITIAL_SLOTS = 8  # adapters the stacks have room for before they first grow
# The modules vLLM's LoRA support covers for Llama-style models (the vLLM engine's list).
LINEAR_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Module-name parts of a vision-language model's image encoder and projector (LLaVA and its kin).
VISION_PARTS = ("vision_tower", "vision_model", "multi_modal_projector", "visual")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


# How a batch's slot-index tensor came from earlier ones, so a layer can build its per-row A/B from what it
# already gathered instead of from the stacks: ("v", version) a tensor a forward pass used; ("base", rows) rows
# that all run the base model; ("select", node, keep) those rows of node's; ("cat", first, second).
Lineage = tuple


class SlotContext:
    """Per-forward state shared by all wrapped layers: the slot index of each batch row.

    ``version`` changes whenever the indices change (a new tensor: rows joined or left the batch); layers
    keep their gathered per-row A/B until it does, so decode steps of an unchanged batch skip the gather.
    Loads and unloads do not change it: they write only slots no row of the batch uses.

    When rows leave (:meth:`selected`) or join (:meth:`joined`), the batch says how its new tensor derives
    from the old ones; a layer then cuts or concatenates the per-row A/B it holds (one contiguous copy of the
    rows kept) instead of gathering every row again from the stacks (a copy of ``r_max`` ranks per row and a
    transposing copy), which it did on every join and leave.
    """

    KEEP = 8  # recent tensors whose lineage is remembered (a step's prefill, prompt scoring, the batch)

    def __init__(self) -> None:
        self._indices: torch.Tensor | None = None
        self._last: torch.Tensor | None = None  # held, so a new tensor can never reuse its identity
        self.rows: list[int] = []  # the slot of each row, as Python ints (read when a layer regathers)
        self.version = 0
        self.lineage: Lineage | None = None  # how the current version's rows derive from earlier versions
        # (tensor, lineage) of recent tensors: held, so an id() is never reused while it is listed
        self._known: list[tuple[torch.Tensor, Lineage]] = []

    @property
    def indices(self) -> torch.Tensor | None:
        return self._indices

    @indices.setter
    def indices(self, value: torch.Tensor | None) -> None:
        self._indices = value
        if value is not None and value is not self._last:
            self._last = value
            self.rows = [int(v) for v in value.tolist()]
            self.version += 1
            self.lineage = self._lineage_of(value)  # ("v", n): the same rows as version n (a prefill ran between)
            self._remember(value, ("v", self.version))

    def _lineage_of(self, t: torch.Tensor) -> Lineage | None:
        for known, lineage in reversed(self._known):
            if known is t:
                return lineage
        return None

    def _remember(self, t: torch.Tensor, lineage: Lineage) -> None:
        self._known = [(k, v) for k, v in self._known if k is not t][-(self.KEEP - 1):] + [(t, lineage)]

    def _node(self, t: torch.Tensor, lora: bool) -> Lineage | None:
        return ("base", int(t.shape[0])) if not lora else self._lineage_of(t)

    def selected(self, new: torch.Tensor, old: torch.Tensor, keep: torch.Tensor, old_lora: bool = True) -> None:
        """``new`` holds the rows ``keep`` of ``old`` (rows left the batch)."""
        node = self._node(old, old_lora)
        if node is not None:
            self._remember(new, ("select", node, keep))

    def joined(self, new: torch.Tensor, first: torch.Tensor, first_lora: bool,
               second: torch.Tensor, second_lora: bool) -> None:
        """``new`` holds ``first``'s rows then ``second``'s (newcomers joined the batch)."""
        a, b = self._node(first, first_lora), self._node(second, second_lora)
        if a is not None and b is not None:
            self._remember(new, ("cat", a, b))


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


# The rank-grouping cost model, in bytes of weights read: a decode-step bmm pair costs a fixed overhead worth
# PAIR_OVERHEAD_BYTES, and selecting a group's rows (index_select + index_add) SELECT_OVERHEAD_BYTES.
# Measured on the 2-core EPYC this project runs on (fp32, one token per row): a bmm pair ~6 µs beyond its
# reads at ~55 GB/s (≈ 330 KB), a selection ~8 µs (≈ 440 KB). GPUs have a similar per-kernel overhead and
# more bandwidth, which favours padding there even more; grouping pays off for large batches.
PAIR_OVERHEAD_BYTES = 330_000
SELECT_OVERHEAD_BYTES = 440_000
# False: every row padded to the server's r_max, as before ranks were taken into account (benchmarks.ranks'
# baseline).
RANK_AWARE = True


@dataclass
class _Gathered:
    """One layer's per-row operands for one batch (``version``): groups of (rows or None for all rows,
    Aᵀ [rows, in, r], Bᵀ [rows, r, out]); empty when no row's adapter targets the layer."""

    version: int
    groups: list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]]
    rows: int = 0


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
        self.on_cpu = device.type == "cpu"  # forward passes may use the fused CPU kernel (cpu_kernel)
        self.A: torch.Tensor | None = None  # [slots, r_max, in]: A per slot
        self.B: torch.Tensor | None = None  # [slots, r_max, out]: Bᵀ per slot (rank k's row contiguous)
        self.ranks = [0] * slots  # each slot's rank in this layer (0: its adapter does not target it)
        self.rank_t = torch.zeros(slots, dtype=torch.int32)  # the same, for the CPU kernel
        self.users = 0  # loaded adapters that target this layer; 0 → skip the LoRA math
        self._gathered: _Gathered | None = None  # the current batch's
        self._recent: dict[int, _Gathered] = {}  # by version: what joins and leaves are derived from
        self.gathers = self.derived = 0  # per-row A/B built from the stacks / from earlier ones (tests read them)

    def allocate(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.A is None or self.B is None:
            self.A = torch.zeros(self.slots, self.max_rank, self.in_features, dtype=self.dtype, device=self.device)
            self.B = torch.zeros(self.slots, self.max_rank, self.out_features, dtype=self.dtype, device=self.device)
        return self.A, self.B

    def grow(self, slots: int) -> None:
        """Room for ``slots`` slots. Bigger stacks are filled and then swapped in whole, so a regather on the
        decode thread reads either the old or the new ones: the same values in every slot a row uses."""
        if slots <= self.slots:
            return
        # The ranks first: a forward pass that sees the new stacks must see ranks covering all their slots.
        rank_t = torch.zeros(slots, dtype=torch.int32)
        rank_t[: self.slots].copy_(self.rank_t)
        self.rank_t = rank_t
        if self.A is not None and self.B is not None:
            A = torch.zeros(slots, self.max_rank, self.in_features, dtype=self.dtype, device=self.device)
            B = torch.zeros(slots, self.max_rank, self.out_features, dtype=self.dtype, device=self.device)
            A[: self.slots].copy_(self.A)
            B[: self.slots].copy_(self.B)
            self.A, self.B = A, B
        self.ranks.extend([0] * (slots - self.slots))
        self.slots = slots

    def release(self) -> None:
        self.A = self.B = None
        self.forget()

    def forget(self) -> None:
        self._gathered = None
        self._recent.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        idx = self.ctx.indices
        A, B = self.A, self.B
        if idx is None or self.users == 0 or A is None or B is None:
            return y
        kernel = cpu_kernel.apply
        if (kernel is not None and self.on_cpu and self.dtype == torch.float32 and x.dtype == y.dtype
                and y.is_contiguous() and not torch.is_grad_enabled()):
            # CPU: one compiled loop per layer reads each row's adapter straight from the stacks at its own
            # rank (prefill's tokens and decode's alike), sums in fp32 and adds into y in place: no per-batch
            # gather, nothing to rebuild when rows join or leave.
            if x.shape[0] != idx.shape[0] and (x.dim() != 2 or x.shape[0] % idx.shape[0]):
                raise RuntimeError(f"a LoRA layer got {x.shape[0]} tokens for a batch of {idx.shape[0]} rows")
            kernel(y, x.contiguous(), A, B, idx, self.rank_t)
            return y
        gathered = self._gathered
        if gathered is None or gathered.version != self.ctx.version:
            gathered = self._derive() if self.ctx.lineage is not None else None
            if gathered is None:
                gathered = self._gather(idx, A, B)
                self.gathers += 1
            else:
                self.derived += 1
            self._gathered = self._recent[gathered.version] = gathered
            while len(self._recent) > SlotContext.KEEP:  # the oldest out; min() is one step, so an unload
                self._recent.pop(min(self._recent, default=0), None)  # clearing it on its thread cannot race
        if not gathered.groups:
            return y
        rows = idx.shape[0]
        if x.dim() == 2:  # MoE blocks flatten (batch, seq, hidden) to (batch·seq, hidden), batch-major
            if x.shape[0] % rows:
                raise RuntimeError(f"a LoRA layer got {x.shape[0]} tokens for a batch of {rows} rows")
            x3, y3 = x.view(rows, -1, x.shape[-1]), y.view(rows, -1, y.shape[-1])
        else:
            x3, y3 = x, y
        if x3.dtype != self.dtype:
            x3 = x3.to(self.dtype)
        for sel, a, b in gathered.groups:
            if sel is None and y3.dtype == a.dtype:  # expand and add in one op (a fifth less LoRA time on CPU)
                y3.baddbmm_(torch.bmm(x3, a), b)
            elif sel is None:
                # In place, summed in the LoRA dtype and rounded once to the base's (as peft does): no extra
                # conversion op and no new output tensor per layer.
                y3.add_(torch.bmm(torch.bmm(x3, a), b))
            else:
                y3.index_add_(0, sel, torch.bmm(torch.bmm(x3.index_select(0, sel), a), b).to(y3.dtype))
        return y

    def _gather(self, idx: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> _Gathered:
        """Each row's A/B for this batch, cut to the largest rank present, or grouped by rank when the rows'
        ranks differ enough that padding would cost more. Contiguous once per batch: bmm copies a transposed
        operand on every call otherwise (the copies were most of a decode step's LoRA time on CPU)."""
        ranks = [self.ranks[s] for s in self.ctx.rows]
        n, v = len(ranks), self.ctx.version
        if not RANK_AWARE:
            return _Gathered(v, [(None, A.index_select(0, idx).transpose(1, 2).contiguous(),
                                  B.index_select(0, idx).contiguous())], n)
        top = max(ranks, default=0)
        if top == 0:
            return _Gathered(v, [], n)
        row_bytes = (self.in_features + self.out_features) * A.element_size()
        plan = plan_rank_groups(ranks, row_bytes)
        if plan is None:  # one pass over every row, padded to the batch's largest rank
            return _Gathered(v, [(None, A.index_select(0, idx)[:, :top].transpose(1, 2).contiguous(),
                                  B.index_select(0, idx)[:, :top].contiguous())], n)
        groups: list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]] = []
        for r, members in plan:
            sel = torch.tensor(members, dtype=torch.long, device=idx.device)
            slots = idx.index_select(0, sel)
            groups.append((sel, A.index_select(0, slots)[:, :r].transpose(1, 2).contiguous(),  # [n, in, r]
                           B.index_select(0, slots)[:, :r].contiguous()))  # [n, r, out]
        return _Gathered(v, groups, n)

    def _derive(self) -> _Gathered | None:
        """This batch's per-row A/B cut and concatenated from those of the batches it came from (rows left or
        joined: ``ctx.lineage``), when both are one pass over every row and so is this batch; else None (the
        caller gathers from the stacks). Equal to a gather: the same rows' values, padded to the same rank."""
        node = self.ctx.lineage
        if node is not None and node[0] == "v":  # the batch is back after a prefill: what it had still holds
            held = self._recent.get(node[1])
            return None if held is None else _Gathered(self.ctx.version, held.groups, held.rows)
        ranks = [self.ranks[s] for s in self.ctx.rows]
        top = max(ranks, default=0)
        row_bytes = (self.in_features + self.out_features) * self.A.element_size() if self.A is not None else 0
        if not RANK_AWARE or top == 0 or not row_bytes or plan_rank_groups(ranks, row_bytes) is not None:
            return None
        built = self._build(self.ctx.lineage)
        if built is None:
            return None
        a, b = built
        if a.shape[0] != len(ranks) or a.shape[-1] < top:
            return None
        if a.shape[-1] > top:  # the row of the largest rank left: cut to the rows' own
            a, b = a[:, :, :top].contiguous(), b[:, :top].contiguous()
        return _Gathered(self.ctx.version, [(None, a, b)], len(ranks))

    def _build(self, node: Lineage | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(Aᵀ [rows, in, r], Bᵀ [rows, r, out]) for one lineage node, r its rows' largest rank; None if a part
        is not held (forgotten, or computed in rank groups)."""
        if node is None:
            return None
        kind = node[0]
        if kind == "v":
            held = self._recent.get(node[1])
            if held is None:
                return None
            if not held.groups:  # no row of that batch has LoRA in this layer
                return self._zeros(held.rows)
            if len(held.groups) != 1 or held.groups[0][0] is not None:
                return None
            return held.groups[0][1], held.groups[0][2]
        if kind == "base":
            return self._zeros(node[1])
        if kind == "select":
            part = self._build(node[1])
            if part is None:
                return None
            keep = node[2]
            return part[0].index_select(0, keep), part[1].index_select(0, keep)
        first, second = self._build(node[1]), self._build(node[2])
        if first is None or second is None:
            return None
        r = max(first[0].shape[-1], second[0].shape[-1])
        (a1, b1), (a2, b2) = (_pad_rank(*first, r), _pad_rank(*second, r))
        return torch.cat([a1, a2]), torch.cat([b1, b2])

    def _zeros(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.zeros(rows, self.in_features, 0, dtype=self.dtype, device=self.device),
                torch.zeros(rows, 0, self.out_features, dtype=self.dtype, device=self.device))


def _pad_rank(a: torch.Tensor, b: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Aᵀ [n, in, r'] and Bᵀ [n, r', out] zero-padded to rank r (exact: the padding adds zeros)."""
    missing = r - a.shape[-1]
    if missing == 0:
        return a, b
    return torch.nn.functional.pad(a, (0, missing)), torch.nn.functional.pad(b, (0, 0, 0, missing))


def plan_rank_groups(ranks: list[int], row_bytes: int) -> list[tuple[int, list[int]]] | None:
    """How one layer runs a batch whose rows have these LoRA ranks (0: no LoRA in this layer): ``None`` for
    one pass over every row padded to the largest rank, else groups ``(padded rank, row indices)`` of
    neighbouring ranks, each run on its rows only. Chosen by the cost model above (``row_bytes``: bytes one
    row reads per unit of rank, (in + out) × element size); an exact search over the sorted distinct ranks
    (a batch has few)."""
    top = max(ranks, default=0)
    single = len(ranks) * top * row_bytes + PAIR_OVERHEAD_BYTES
    distinct = sorted({r for r in ranks if r})
    if len(distinct) <= 1 and all(ranks):
        return None
    count = {r: sum(1 for x in ranks if x == r) for r in distinct}
    # best[j]: cheapest split of distinct[:j] into groups; how[j]: where its last group starts
    best = [0.0] + [float("inf")] * len(distinct)
    how = [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):
        for i in range(j):
            rows = sum(count[r] for r in distinct[i:j])
            cost = best[i] + rows * distinct[j - 1] * row_bytes + PAIR_OVERHEAD_BYTES + SELECT_OVERHEAD_BYTES
            if cost < best[j]:
                best[j], how[j] = cost, i
    if best[-1] >= single:
        return None
    plan: list[tuple[int, list[int]]] = []
    j = len(distinct)
    while j:
        i = how[j]
        members = [k for k, r in enumerate(ranks) if distinct[i] <= r <= distinct[j - 1]]
        plan.append((distinct[j - 1], members))
        j = i
    return plan[::-1]


@dataclass
class HostAdapter:
    """An adapter's LoRA tensors in host memory, ready to copy into a slot: per module (A [r, in],
    (B·scale)ᵀ [r, out]) in the stacks' dtype and layout, contiguous (pinned on CUDA, so the copy can run on a
    side stream)."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    nbytes: int


class HostCache:
    """Adapters read and checked, in host memory, least recently used out first, bounded in bytes
    (``--adapter-cache-mb``; vLLM's ``--max-cpu-loras`` and S-LoRA's host pool play this part). Between
    the registry's files and the slots: an adapter evicted from its slot and requested again is copied
    back from here, without reading, parsing or verifying its files again. Used from several threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[str, HostAdapter] = OrderedDict()
        self.bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> HostAdapter | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, item: HostAdapter) -> None:
        """Keep ``item`` (one larger than the whole cache is not kept), dropping the least recently used."""
        with self._lock:
            if key in self._items or item.nbytes > self.max_bytes:
                return
            self._items[key] = item
            self.bytes += item.nbytes
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.nbytes


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
        # Slot 0 is the base. The stacks start with room for INITIAL_SLOTS adapters and double as more are
        # loaded at once, up to max_loaded: a server allowed many resident adapters pays memory only for
        # those it has held (vLLM preallocates --max-loras slots up front).
        self.max_slots = max_loaded + 1
        self.slots = min(self.max_slots, INITIAL_SLOTS + 1)
        self.layers: dict[str, BatchedLoraLinear] = {}
        dtype = dtype or next(model.parameters()).dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            dtype = torch.bfloat16  # quantized bases: LoRA math in bf16
        self.dtype, self.device = dtype, torch.device(device)
        if self.device.type == "cpu" and dtype == torch.float32:
            cpu_kernel.prepare()  # the fused decode kernel builds (or loads from its cache) in the background
        # CUDA: host tensors are pinned and copied into slots on a stream of their own, beside the decode.
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
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
            layer.forget()

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
        """Read an adapter and copy it into a free slot. Raises ``ValueError`` on anything unexpected."""
        if key not in self.loaded:
            self.load_host(key, self.read(path))

    def read(self, path: Path) -> HostAdapter:
        """An adapter's tensors, checked against this model, ready to copy (touches no slot: call it from any
        thread while the batch decodes). Raises ``ValueError`` on anything unexpected."""
        from safetensors.torch import load_file

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
        modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        nbytes = 0
        pin = self._copy_stream is not None
        for name, ab in pairs.items():
            layer = self.layers[name]
            if "A" not in ab or "B" not in ab:
                raise ValueError(f"{name}: lora_{'B' if 'A' in ab else 'A'} is missing")
            a, b = ab["A"], ab["B"]
            r = a.shape[0]
            if r > self.max_rank:
                raise ValueError(f"{name}: rank {r} exceeds max rank {self.max_rank}")
            if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features or b.shape[1] != r:
                raise ValueError(f"{name}: adapter shape {tuple(b.shape[:1]) + tuple(a.shape[1:])} "
                                 f"does not match ({layer.out_features}, {layer.in_features})")
            a = a.to(self.dtype).contiguous()
            b = (b.to(torch.float32) * peft.scale_of(name, r)).to(self.dtype).t().contiguous()  # as the stack holds it
            if pin:
                a, b = a.pin_memory(), b.pin_memory()
            modules[name] = (a, b)
            nbytes += a.numel() * a.element_size() + b.numel() * b.element_size()
        return HostAdapter(modules, nbytes)

    def load_host(self, key: str, host: HostAdapter) -> None:
        """Copy a read adapter into a free slot. Only that slot is written and no running row uses it, so the
        batch keeps decoding (its gathered A/B stay valid: nothing to invalidate)."""
        if key in self.loaded:
            return
        if not self.free and self.slots < self.max_slots:
            self._grow(min(self.max_slots, 2 * self.slots - 1))
        if not self.free:
            from adapterhub.errors import OverloadedError

            raise OverloadedError(f"all {self.max_slots - 1} adapter slots are in use")
        slot = self.free.pop()
        stream = self._copy_stream
        try:
            stacks = {name: self.layers[name].allocate() for name in host.modules}
            if stream is not None:  # the stacks' allocation and zeroing (default stream) come first
                stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for name, (a, b) in host.modules.items():
                    stack_a, stack_b = stacks[name]
                    r = a.shape[0]
                    stack_a[slot].zero_()
                    stack_b[slot].zero_()
                    stack_a[slot, :r].copy_(a, non_blocking=stream is not None)
                    stack_b[slot, :r].copy_(b, non_blocking=stream is not None)
            if stream is not None:
                stream.synchronize()  # the slot is complete before any row can be given it
        except Exception:
            for name in host.modules:
                layer = self.layers.get(name)
                if layer is not None and layer.users == 0:
                    layer.release()
                elif layer is not None and layer.A is not None and layer.B is not None:
                    layer.A[slot].zero_()
                    layer.B[slot].zero_()
            self.free.append(slot)
            raise
        for name, (a, _) in host.modules.items():
            layer = self.layers[name]
            layer.ranks[slot] = int(a.shape[0])
            layer.rank_t[slot] = int(a.shape[0])
            layer.users += 1
        self.loaded[key] = SlotAdapter(slot, list(host.modules))

    def _grow(self, slots: int) -> None:
        """Room for ``slots - 1`` adapters in every layer (the new slots go to the free list)."""
        old = self.slots
        for layer in self.layers.values():
            layer.grow(slots)
        self.slots = slots
        self.free = list(range(slots - 1, old - 1, -1)) + self.free

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
            layer.ranks[entry.slot] = 0
            layer.rank_t[entry.slot] = 0
        self.free.append(entry.slot)  # no running row uses the slot (the manager unloads idle adapters only)
