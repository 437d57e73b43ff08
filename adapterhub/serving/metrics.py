"""Prometheus metrics of one server, labelled by the resolved adapter ``name`` and ``version`` (the base
model is ``version="base"``), on ``prometheus_client`` with a registry per app (so several apps in one
process — tests, Ray replicas — never mix their counts). One uvicorn worker per process; for several
workers, prometheus_client's multiprocess mode applies (PROMETHEUS_MULTIPROC_DIR).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKEN = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# What the request in this task resolved to, for the error handler (the service sets it once it knows).
current_target: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("current_target",
                                                                                default=("-", "-"))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        nv = ["name", "version"]
        self.requests = Counter("adapterhub_requests", "Requests by endpoint, resolved name/version and HTTP status.",
                                ["endpoint", "name", "version", "status"], registry=r)
        self.prompt_tokens = Counter("adapterhub_prompt_tokens", "Prompt tokens.", nv, registry=r)
        self.completion_tokens = Counter("adapterhub_completion_tokens", "Generated tokens.", nv, registry=r)
        self.latency = Histogram("adapterhub_request_seconds", "Request latency.", ["endpoint", *nv],
                                 buckets=_LATENCY, registry=r)
        self.ttft = Histogram("adapterhub_time_to_first_token_seconds", "Time from the request's start to its first "
                              "generated token (the wait for its version included).", nv,
                              buckets=_LATENCY, registry=r)
        self.itl = Histogram("adapterhub_inter_token_latency_seconds", "Time between generated tokens.", nv,
                             buckets=_TOKEN, registry=r)
        self.queue = Histogram("adapterhub_queue_seconds", "Time a request waited for the batch: from entering the "
                               "engine's queue to its first forward pass (the wait for its version is "
                               "adapterhub_adapter_wait_seconds).", nv, buckets=_LATENCY, registry=r)
        self.load_seconds = Histogram("adapterhub_adapter_load_seconds", "Copying a version into its adapter slot.",
                                      nv, buckets=_TOKEN, registry=r)
        self.fetch_seconds = Histogram("adapterhub_adapter_fetch_seconds", "Fetching, verifying and reading a version "
                                       "into host memory (host-cache misses only).", nv, buckets=_TOKEN, registry=r)
        self.slot_wait_seconds = Histogram("adapterhub_adapter_slot_wait_seconds", "Time a load waited for a free "
                                           "adapter slot (every slot busy).", nv, buckets=(0.001, *_LATENCY),
                                           registry=r)
        self.host_cache = Counter("adapterhub_adapter_host_cache", "Loads by where the version came from: hit (the "
                                  "host cache) or miss (its files).", [*nv, "result"], registry=r)
        self.wait_seconds = Histogram("adapterhub_adapter_wait_seconds", "Time a request waited for its version to "
                                      "be ready (a free adapter slot, its turn, the load); 0 when it was loaded.",
                                      nv, buckets=(0.001, *_LATENCY), registry=r)
        self.loads = Counter("adapterhub_adapter_loads", "Adapter loads.", nv, registry=r)
        self.evictions = Counter("adapterhub_adapter_evictions", "Adapters evicted (LRU) or unloaded.", nv,
                                 registry=r)
        self.resident = Gauge("adapterhub_adapter_resident", "1 while the version is loaded.", [*nv, "pinned"],
                              registry=r)
        self.split_served = Counter("adapterhub_split_served", "Requests for a split alias, by the version served.",
                                    ["name", "alias", "version"], registry=r)
        self.recent = Recent()  # the last minutes, event by event: the console's live view


    def gauge(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        Gauge(f"adapterhub_{name}", doc, registry=self.registry).set_function(fn)

    def labeled_gauge(self, name: str, doc: str, labels: list[str],
                      fn: Callable[[], dict[tuple[str, ...], float]]) -> None:
        """A gauge whose series are read from ``fn`` at scrape time (label values → value)."""
        from prometheus_client.core import GaugeMetricFamily

        class _Collector:
            def collect(self) -> Any:
                family = GaugeMetricFamily(f"adapterhub_{name}", doc, labels=labels)
                for values, v in sorted(fn().items()):
                    family.add_metric(list(values), v)
                yield family

        self.registry.register(_Collector())  # type: ignore[arg-type]

    # ---------------------------------------------------------------- requests
    def observe(self, endpoint: str, name: str, version: str, status: int, seconds: float,
                prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        self.requests.labels(endpoint, name, version, str(status)).inc()
        self.recent.add("request", name, version, status=status, completion_tokens=completion_tokens)
        self.latency.labels(endpoint, name, version).observe(seconds)
        if prompt_tokens:
            self.prompt_tokens.labels(name, version).inc(prompt_tokens)
        if completion_tokens:
            self.completion_tokens.labels(name, version).inc(completion_tokens)

    def cancelled(self, endpoint: str, name: str, version: str) -> None:
        """A request whose client went away before its answer was complete (counted as such, never as 200)."""
        self.requests.labels(endpoint, name, version, "cancelled").inc()
        self.recent.add("request", name, version, status="cancelled")

    def timing(self, name: str, version: str, *, ttft: float | None, gaps: list[float], queued: float | None) -> None:
        if ttft is not None:
            self.ttft.labels(name, version).observe(ttft)
        for g in gaps:
            self.itl.labels(name, version).observe(g)
        if queued is not None:
            self.queue.labels(name, version).observe(queued)
        self.recent.add("timing", name, version, ttft=ttft, gaps=list(gaps))

    # ---------------------------------------------------------------- adapters
    def adapter_wait(self, name: str, version: str, seconds: float) -> None:
        self.wait_seconds.labels(name, version).observe(seconds)
        self.recent.add("wait", name, version, seconds=seconds)

    def fetched(self, name: str, version: str, hit: bool, seconds: float, slot_wait: float) -> None:
        """How a load began: from the host cache or the files (how long that took), and the wait for a slot."""
        self.host_cache.labels(name, version, "hit" if hit else "miss").inc()
        if not hit:
            self.fetch_seconds.labels(name, version).observe(seconds)
        self.slot_wait_seconds.labels(name, version).observe(slot_wait)

    def loaded(self, name: str, version: str, seconds: float, pinned: bool) -> None:
        self.loads.labels(name, version).inc()
        self.load_seconds.labels(name, version).observe(seconds)
        self.resident.labels(name, version, str(pinned).lower()).set(1)
        self.recent.add("load", name, version, seconds=seconds)

    def pinned(self, name: str, version: str) -> None:
        self.resident.labels(name, version, "false").set(0)
        self.resident.labels(name, version, "true").set(1)

    def evicted(self, name: str, version: str) -> None:
        self.evictions.labels(name, version).inc()
        for pinned in ("true", "false"):
            self.resident.labels(name, version, pinned).set(0)

    def split_counts(self) -> dict[tuple[str, str], dict[str, float]]:
        """Requests served per split alias since the server started: (name, alias) → {version: count}."""
        out: dict[tuple[str, str], dict[str, float]] = {}
        for family in self.split_served.collect():
            for s in family.samples:
                if s.name.endswith("_total"):
                    out.setdefault((s.labels["name"], s.labels["alias"]), {})[s.labels["version"]] = s.value
        return out

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Recent:
    """The last ``keep_s`` seconds of requests, timings and loads, event by event (at most ``max_events``,
    oldest dropped first), so the console can show percentiles over the last minutes, which Prometheus's
    cumulative histograms cannot. Written from the event loop and the engine's thread: one lock."""

    def __init__(self, keep_s: float = 900.0, max_events: int = 20_000, clock: Callable[[], float] = time.time) -> None:
        self.keep_s, self.clock = keep_s, clock
        self._events: deque[tuple[float, str, str, str, dict[str, Any]]] = deque(maxlen=max_events)
        self._lock = threading.Lock()

    def add(self, kind: str, name: str, version: str, **data: Any) -> None:
        with self._lock:
            self._events.append((self.clock(), kind, name, version, data))

    def summary(self, window_s: float, bucket_s: float, visible: Callable[[str], bool] = lambda _: True
                ) -> dict[str, Any]:
        """Per version over the last ``window_s``: requests, errors, cancelled, tokens, TTFT / inter-token /
        load-time percentiles and requests per ``bucket_s`` (oldest first); only names ``visible`` allows."""
        now = self.clock()
        start = now - min(window_s, self.keep_s)
        n_buckets = max(1, int(round(window_s / bucket_s)))
        with self._lock:
            events = [e for e in self._events if e[0] >= start]
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for t, kind, name, version, data in events:
            if name == "-" or not visible(name):
                continue
            row = rows.setdefault((name, version), {"requests": 0, "errors": 0, "cancelled": 0, "tokens": 0,
                                                    "ttft": [], "gaps": [], "loads": [], "waits": [],
                                                    "series": [0] * n_buckets})
            if kind == "request":
                status = data["status"]
                row["requests"] += 1
                row["cancelled"] += status == "cancelled"
                row["errors"] += status != "cancelled" and int(status) >= 400
                row["tokens"] += data.get("completion_tokens") or 0
                row["series"][min(n_buckets - 1, int((t - start) / bucket_s))] += 1
            elif kind == "timing":
                if data["ttft"] is not None:
                    row["ttft"].append(data["ttft"])
                row["gaps"].extend(data["gaps"])
            elif kind == "load":
                row["loads"].append(data["seconds"])
            elif kind == "wait":
                row["waits"].append(data["seconds"])
        out = []
        for (name, version), row in sorted(rows.items()):
            out.append({"name": name, "version": version, "requests": row["requests"], "errors": row["errors"],
                        "cancelled": row["cancelled"], "completion_tokens": row["tokens"],
                        "ttft_p50": percentile(row["ttft"], 50), "ttft_p99": percentile(row["ttft"], 99),
                        "itl_p50": percentile(row["gaps"], 50), "itl_p99": percentile(row["gaps"], 99),
                        "loads": len(row["loads"]), "load_p50": percentile(row["loads"], 50),
                        "wait_p99": percentile(row["waits"], 99), "series": row["series"]})
        return {"window_s": window_s, "bucket_s": bucket_s, "now": now, "versions": out}


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile of ``values`` (the nearest sample, no interpolation); None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
