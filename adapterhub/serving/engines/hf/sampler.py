"""Next-token selection for a batch: a pipeline of per-row logits processors, then greedy or sampled picks.

Each processor says whether a row needs it, so a row that uses no extra parameter costs nothing beyond
the batch's one ``argmax``. Order (as vLLM): logit bias → min_tokens → repetition / frequency / presence
penalties → temperature → top-k → top-p → min-p → pick. Logprobs are those of the model's raw
distribution (before any processor), as vLLM reports them by default. A grammar mask (structured
output, :mod:`adapterhub.serving.engines.hf.grammar`) goes first and is never undone.

A row whose processing raises fails alone: the error is returned for that row and the others go on.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from adapterhub.serving.engines.base import SamplingParams, TokenLogprob


@dataclass
class RowState:
    """What processors may read about one row: its parameters, prompt, generated ids and generator."""

    params: SamplingParams
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    prompt: list[int] = field(default_factory=list)
    matcher: Any = None  # the row's grammar matcher (structured output), or None


class LogitsProcessor(abc.ABC):
    sampling_only = False  # True: only applies when the row samples (temperature > 0)
    hard = False  # True: a constraint (grammar) that no later processor's fallback may undo

    @abc.abstractmethod
    def needed(self, row: RowState) -> bool:
        """Whether this processor changes the logits of ``row`` at this step."""

    @abc.abstractmethod
    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        """The row's processed logits (1-D, float32)."""


class LogitBias(LogitsProcessor):
    def needed(self, row: RowState) -> bool:
        return bool(row.params.logit_bias)

    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        ids = torch.tensor([i for i, _ in row.params.logit_bias], dtype=torch.long, device=logits.device)
        bias = torch.tensor([b for _, b in row.params.logit_bias], dtype=logits.dtype, device=logits.device)
        return logits.index_add(0, ids, bias)


class MinTokens(LogitsProcessor):
    """Forbid the end (EOS and stop_token_ids) until ``min_tokens`` tokens were generated."""

    def __init__(self, eos_ids: set[int]) -> None:
        self.eos_ids = sorted(eos_ids)

    def needed(self, row: RowState) -> bool:
        return len(row.generated) < row.params.min_tokens

    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        ids = set(row.params.stop_token_ids) | (set() if row.params.ignore_eos else set(self.eos_ids))
        ids = {i for i in ids if i < logits.shape[0]}
        if not ids:
            return logits
        out = logits.clone()
        out[torch.tensor(sorted(ids), dtype=torch.long, device=logits.device)] = float("-inf")
        return out


class Penalties(LogitsProcessor):
    """repetition_penalty over prompt + output (HF / vLLM semantics); frequency and presence over output."""

    def needed(self, row: RowState) -> bool:
        p = row.params
        return p.repetition_penalty != 1.0 or ((p.frequency_penalty != 0 or p.presence_penalty != 0)
                                               and bool(row.generated))

    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        p = row.params
        out = logits
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(row.prompt) | set(row.generated)), dtype=torch.long, device=logits.device)
            if seen.numel():
                picked = out[seen]
                out = out.clone()
                out[seen] = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
        if row.generated and (p.frequency_penalty != 0 or p.presence_penalty != 0):
            counts = torch.bincount(torch.tensor(row.generated, dtype=torch.long, device=logits.device),
                                    minlength=logits.shape[0])[: logits.shape[0]].to(logits.dtype)
            out = out - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(logits.dtype)
        return out


class Temperature(LogitsProcessor):
    sampling_only = True

    def needed(self, row: RowState) -> bool:
        return row.params.temperature != 1.0

    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        return logits / row.params.temperature


class TopK(LogitsProcessor):
    sampling_only = True

    def needed(self, row: RowState) -> bool:
        return row.params.top_k > 0

    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        k = min(row.params.top_k, logits.shape[0])
        kth = torch.topk(logits, k).values[-1]
        return logits.masked_fill(logits < kth, float("-inf"))


class TopP(LogitsProcessor):
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches ``top_p``."""

    sampling_only = True

    def needed(self, row: RowState) -> bool:
        return row.params.top_p < 1.0

    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)
        sorted_p, order = probs.sort(descending=True)
        drop_sorted = sorted_p.cumsum(-1) - sorted_p >= row.params.top_p
        drop_sorted[0] = False  # the top token always stays (a denormal top_p is 0 in float32)
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))


class MinP(LogitsProcessor):
    sampling_only = True

    def needed(self, row: RowState) -> bool:
        return row.params.min_p > 0

    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)
        return logits.masked_fill(probs < row.params.min_p * probs.max(), float("-inf"))


def default_pipeline(eos_ids: set[int]) -> tuple[LogitsProcessor, ...]:
    return (LogitBias(), MinTokens(eos_ids), Penalties(), Temperature(), TopK(), TopP(), MinP())


@dataclass
class Picks:
    """One step's result: a token per row, logprobs where asked, and the rows whose processing failed."""

    ids: torch.Tensor
    logprobs: dict[int, TokenLogprob] = field(default_factory=dict)
    errors: dict[int, Exception] = field(default_factory=dict)


class Sampler:
    def __init__(self, processors: Sequence[LogitsProcessor]) -> None:
        self.processors = tuple(processors)

    def __call__(self, logits: torch.Tensor, rows: Sequence[RowState | None]) -> Picks:
        """One token id per row (on the CPU). A ``None`` row (already finished) gets its argmax."""
        ids = logits.argmax(dim=-1)
        picks = Picks(ids)
        for i, row in enumerate(rows):
            if row is None:
                continue
            try:
                greedy = row.params.greedy
                active = [p for p in self.processors if not (greedy and p.sampling_only) and p.needed(row)]
                if active or not greedy:
                    x = floor = logits[i]
                    for proc in active:
                        x = proc(x, row)
                        if proc.hard:
                            floor = x
                    if active:  # extreme parameters (a denormal penalty…) must not make NaNs of a row
                        x = torch.nan_to_num(x, nan=float("-inf"), posinf=torch.finfo(x.dtype).max)
                        if not bool(torch.isfinite(x).any()):
                            x = floor
                    if greedy:
                        ids[i] = x.argmax()
                    else:
                        probs = torch.softmax(x, dim=-1)
                        ids[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
                if row.params.logprobs is not None:
                    picks.logprobs[i] = _logprob(logits[i], int(ids[i]), row.params.logprobs)
            except Exception as e:  # noqa: BLE001 - this row fails alone; the caller reports it
                picks.errors[i] = e
        picks.ids = ids.cpu()
        return picks


def _logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    lp = torch.log_softmax(logits.float(), dim=-1)
    alternatives: tuple[tuple[int, float], ...] = ()
    if top > 0:
        values, idx = torch.topk(lp, min(top, lp.shape[0]))
        alternatives = tuple((int(t), float(v)) for t, v in zip(idx.tolist(), values.tolist()))
    return TokenLogprob(token, float(lp[token]), alternatives)
