"""Next-token selection for a batch: a pipeline of per-row logits processors, then greedy or sampled picks.

Each processor says whether a row's parameters need it, so rows that use no extra parameter cost
nothing beyond the batch's one ``argmax``. Penalties, logit bias or grammar masks plug in as further
processors (they get the row's generated token ids).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from serving.engines.base import SamplingParams


@dataclass
class RowState:
    """What processors may read about one row: its parameters, generated ids and random generator."""

    params: SamplingParams
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None


class LogitsProcessor(abc.ABC):
    @abc.abstractmethod
    def needed(self, params: SamplingParams) -> bool:
        """Whether this processor changes the logits of a row with ``params``."""

    @abc.abstractmethod
    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        """The row's processed logits (1-D, float32)."""


class Temperature(LogitsProcessor):
    def needed(self, params: SamplingParams) -> bool:
        return params.temperature > 0 and params.temperature != 1.0

    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        return logits / row.params.temperature


class TopP(LogitsProcessor):
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches ``top_p``."""

    def needed(self, params: SamplingParams) -> bool:
        return params.temperature > 0 and params.top_p < 1.0

    def __call__(self, logits: torch.Tensor, row: RowState) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)
        sorted_p, order = probs.sort(descending=True)
        drop_sorted = sorted_p.cumsum(-1) - sorted_p >= row.params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))


DEFAULT_PIPELINE: tuple[LogitsProcessor, ...] = (Temperature(), TopP())


class Sampler:
    def __init__(self, processors: Sequence[LogitsProcessor] = DEFAULT_PIPELINE) -> None:
        self.processors = tuple(processors)

    def __call__(self, logits: torch.Tensor, rows: Sequence[RowState | None]) -> torch.Tensor:
        """One token id per row (on the CPU). A ``None`` row (already finished) gets its argmax."""
        next_ids = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            if row is None or row.params.temperature <= 0:
                continue  # greedy: the argmax already taken for the whole batch
            x = logits[i]
            for proc in self.processors:
                if proc.needed(row.params):
                    x = proc(x, row)
            probs = torch.softmax(x, dim=-1)
            next_ids[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
        return next_ids.cpu()
