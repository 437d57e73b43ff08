"""Safe rollouts: weighted alias targets with sticky per-caller routing, and metric requirements
("gates") that a version must meet to be promoted.

Pure functions over plain data; :class:`adapterhub.registry.Registry` stores and applies them.
"""

from __future__ import annotations

import hashlib
import math
import operator
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from adapterhub.errors import UserInputError

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
_REQ = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(>=|<=|==|>|<)\s*(-?[\d.]+(?:e-?\d+)?)\s*$")


def parse_split(text: str) -> dict[int, int]:
    """``"3=90,4=10"`` → ``{3: 90, 4: 10}`` (versions → positive integer weights)."""
    out: dict[int, int] = {}
    for part in text.split(","):
        version, sep, weight = part.partition("=")
        if not sep or not re.fullmatch(r"[0-9]{1,9}", version.strip()) or not re.fullmatch(r"[0-9]{1,9}", weight.strip()):
            raise UserInputError(f"--split: expected VERSION=WEIGHT[,VERSION=WEIGHT…] such as 3=90,4=10, got {text!r}")
        v, w = int(version), int(weight)
        if w <= 0:
            raise UserInputError(f"--split: weight of version {v} must be positive")
        if v in out:
            raise UserInputError(f"--split: version {v} appears twice")
        out[v] = w
    if len(out) < 2:
        raise UserInputError("--split needs at least two versions (use a plain alias for one)")
    return out


def pick(split: Mapping[int, int], caller: str | None, salt: str) -> int:
    """The version a caller gets: by weight, the same one for the same caller, random without one.

    Weighted rendezvous hashing: each version scores ``-ln(u) / weight`` with ``u`` a hash of (salt, caller,
    version) in (0, 1), and the lowest score wins. Scaling every weight (90/10 → 9/1) moves nobody; adding a
    version moves callers only onto it; a version whose weight grows loses nobody to the others.
    """
    if caller is None:
        total = sum(split.values())
        point = random.randrange(total)
        for version, weight in sorted(split.items()):
            if point < weight:
                return version
            point -= weight
        raise AssertionError("unreachable")
    best, best_score = None, math.inf
    for version, weight in sorted(split.items()):
        if weight <= 0:
            continue
        digest = hashlib.sha256(f"{salt}\0{caller}\0{version}".encode()).digest()
        u = (int.from_bytes(digest[:8], "big") + 1) / (2**64 + 1)
        score = -math.log(u) / weight
        if score < best_score:
            best, best_score = version, score
    assert best is not None, "a split has at least one positive weight"
    return best


@dataclass(frozen=True)
class Requirement:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def shortfall(self, metrics: Mapping[str, Any]) -> str | None:
        """Why ``metrics`` miss this requirement, or None when they meet it."""
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{self.metric} is not recorded (required {self.op} {self.threshold:g})"
        if _OPS[self.op](float(value), self.threshold):
            return None
        gap = abs(float(value) - self.threshold)
        return f"{self.metric} is {value:g}, required {self.op} {self.threshold:g} (short by {gap:.4g})"


def parse_requirement(text: str) -> Requirement:
    m = _REQ.match(text)
    if not m:
        raise UserInputError(f"--require: expected METRIC>=VALUE (or >, <=, <, ==), got {text!r}")
    try:
        value = float(m.group(3))
    except ValueError:
        raise UserInputError(f"--require: {m.group(3)!r} is not a number in {text!r}") from None
    return Requirement(m.group(1), m.group(2), value)
