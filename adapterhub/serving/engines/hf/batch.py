"""The running batch of the ``hf`` engine and its KV-cache surgery.

Rows are left-padded to a common length. Finished rows leave (their cache rows and the columns that
were padding for every remaining row are dropped); newcomers are prefilled together and their cache
is left-padded to the batch's length and concatenated — continuous batching on a plain HF cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapterhub.serving.engines.base import TokenLogprob
from adapterhub.serving.engines.hf.lora import LoraSlots, SlotContext


@dataclass
class Batch:
    """Rows (opaque to this module), their KV cache and attention mask, each row's last sampled token
    and its adapter slot."""

    rows: list[Any]
    cache: Any
    mask: torch.Tensor
    next_ids: torch.Tensor
    slots: torch.Tensor
    uses_lora: bool
    ctx: SlotContext | None = None  # told how the slot indices change, so LoRA layers derive their operands

    def select(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep`` (in that order)."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        old, old_lora = self.slots, self.uses_lora
        self.mask, self.slots = self.mask[idx], self.slots[idx]
        self.uses_lora = bool((self.slots != 0).any())
        if self.ctx is not None and self.uses_lora:
            self.ctx.selected(self.slots, old, idx, old_lora)
        self.next_ids = self.next_ids[torch.tensor(keep, dtype=torch.long)]
        # Columns that are padding for every remaining row (the finished rows' longer prompts) go too.
        first = int((self.mask.sum(0) > 0).nonzero()[0])
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, first:]
            layer.values = layer.values[idx, :, first:]


def merge(a: Batch, b: Batch) -> Batch:
    """One batch of ``a``'s rows then ``b``'s, the shorter side's KV cache and mask left-padded."""
    t = max(a.mask.shape[1], b.mask.shape[1])

    def pad(x: torch.Tensor, dim: int) -> torch.Tensor:
        missing = t - x.shape[dim]
        if missing == 0:
            return x
        shape = list(x.shape)
        shape[dim] = missing
        return torch.cat([x.new_zeros(shape), x], dim=dim)

    for la, lb in zip(a.cache.layers, b.cache.layers):
        la.keys = torch.cat([pad(la.keys, 2), pad(lb.keys, 2)], dim=0)
        la.values = torch.cat([pad(la.values, 2), pad(lb.values, 2)], dim=0)
    slots = torch.cat([a.slots, b.slots])
    ctx = a.ctx or b.ctx
    if ctx is not None and (a.uses_lora or b.uses_lora):
        ctx.joined(slots, a.slots, a.uses_lora, b.slots, b.uses_lora)
    return Batch(a.rows + b.rows, a.cache, torch.cat([pad(a.mask, 1), pad(b.mask, 1)], dim=0),
                 torch.cat([a.next_ids, b.next_ids]), slots, a.uses_lora or b.uses_lora, ctx)


def prefill(model: Any, lora: LoraSlots, rows: list[Any], prompts: Sequence[list[int]], slots: list[int],
            pad_id: int, device: torch.device, extra: dict[str, Any] | None = None) -> tuple[Batch, torch.Tensor]:
    """Run the (left-padded) prompts; returns the new batch and each row's last-position logits (fp32)."""
    from transformers import DynamicCache

    lengths = [len(p) for p in prompts]
    width = max(lengths)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - lengths[i]:] = torch.tensor(p)
        mask[i, width - lengths[i]:] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    batch = Batch(rows, DynamicCache(), mask, torch.zeros(0, dtype=torch.long),
                  torch.tensor(slots, dtype=torch.long, device=device), any(s != 0 for s in slots), lora.ctx)
    lora.ctx.indices = batch.slots if batch.uses_lora else None  # an all-base batch skips the LoRA math
    inputs = {k: v.to(device) for k, v in (extra or {}).items()}  # e.g. a row's pixel values (images)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    # Logits of the last position only, picked by an index tensor rather than logits_to_keep=1: that slice keeps
    # the prompt's stride across rows, and torch's CPU bf16 linear leaves its fast path on such an input (the demo
    # model's output head: 110-400 ms per prefill instead of ~5 ms, for the whole batch to wait on).
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                past_key_values=batch.cache, use_cache=True, logits_to_keep=torch.tensor([-1], device=device),
                **inputs)
    return batch, out.logits[:, -1, :].float()


def prompt_logprobs(model: Any, lora: LoraSlots, prompt: list[int], slot: int, top: int,
                    device: torch.device) -> tuple[TokenLogprob | None, ...]:
    """Each prompt token's log-probability given the tokens before it (and the ``top`` most likely tokens
    there), from one forward pass over the prompt alone; None for the first token."""
    lora.ctx.indices = torch.tensor([slot], dtype=torch.long, device=device) if slot != 0 else None
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt], dtype=torch.long, device=device), use_cache=False)
    lp = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)  # position i predicts token i + 1
    nxt = torch.tensor(prompt[1:], dtype=torch.long, device=lp.device)
    chosen = lp.gather(1, nxt.view(-1, 1)).view(-1).tolist()
    tops: list[tuple[tuple[int, float], ...]] = [()] * len(chosen)
    if top > 0 and chosen:
        values, idx = torch.topk(lp, min(top, lp.shape[1]), dim=-1)
        tops = [tuple(zip(i, v)) for i, v in zip(idx.tolist(), values.tolist())]
    return (None, *(TokenLogprob(t, c, tp) for t, c, tp in zip(prompt[1:], chosen, tops)))


def decode_step(model: Any, lora: LoraSlots, batch: Batch, device: torch.device) -> torch.Tensor:
    """Feed each row's last token; returns the next-token logits (fp32)."""
    batch.mask = torch.cat([batch.mask, torch.ones((len(batch.rows), 1), dtype=batch.mask.dtype, device=device)],
                           dim=1)
    lora.ctx.indices = batch.slots if batch.uses_lora else None
    out = model(input_ids=batch.next_ids.view(-1, 1).to(device), attention_mask=batch.mask,
                position_ids=batch.mask.sum(-1, keepdim=True) - 1, past_key_values=batch.cache, use_cache=True)
    return out.logits[:, -1, :].float()
