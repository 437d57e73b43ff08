"""Prometheus text-format metrics without a client library (counters, gauges, one histogram)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)  # (endpoint, model, status)
        self.prompt_tokens: dict[str, int] = defaultdict(int)
        self.completion_tokens: dict[str, int] = defaultdict(int)
        self.latency_buckets: dict[float, int] = defaultdict(int)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.gauges: dict[str, Callable[[], float]] = {}

    def observe(self, endpoint: str, model: str, status: int, seconds: float,
                prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        with self._lock:
            self.requests[(endpoint, model, status)] += 1
            self.prompt_tokens[model] += prompt_tokens
            self.completion_tokens[model] += completion_tokens
            self.latency_sum += seconds
            self.latency_count += 1
            for b in _BUCKETS:
                if seconds <= b:
                    self.latency_buckets[b] += 1

    def render(self) -> str:
        lines = [
            "# HELP adapterhub_requests_total Requests by endpoint, model and HTTP status.",
            "# TYPE adapterhub_requests_total counter",
        ]
        with self._lock:
            for (ep, model, status), n in sorted(self.requests.items()):
                lines.append(f'adapterhub_requests_total{{endpoint="{ep}",model="{_esc(model)}",status="{status}"}} {n}')
            for name, table in (("prompt", self.prompt_tokens), ("completion", self.completion_tokens)):
                lines += [f"# HELP adapterhub_{name}_tokens_total {name.title()} tokens by model.",
                          f"# TYPE adapterhub_{name}_tokens_total counter"]
                for model, n in sorted(table.items()):
                    lines.append(f'adapterhub_{name}_tokens_total{{model="{_esc(model)}"}} {n}')
            lines += ["# HELP adapterhub_request_seconds Request latency.",
                      "# TYPE adapterhub_request_seconds histogram"]
            for b in _BUCKETS:
                le = "+Inf" if b == float("inf") else repr(b)
                lines.append(f'adapterhub_request_seconds_bucket{{le="{le}"}} {self.latency_buckets[b]}')
            lines.append(f"adapterhub_request_seconds_sum {self.latency_sum}")
            lines.append(f"adapterhub_request_seconds_count {self.latency_count}")
        for name, fn in sorted(self.gauges.items()):
            lines += [f"# TYPE adapterhub_{name} gauge", f"adapterhub_{name} {fn()}"]
        return "\n".join(lines) + "\n"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')
