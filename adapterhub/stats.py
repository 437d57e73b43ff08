"""Per-version statistics from a running server's Prometheus ``/metrics`` (for ``adapterhub stats``).

Reads the text format with ``prometheus_client``'s parser (imported when called); no torch, no server code.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from adapterhub.errors import AdapterHubError, MissingDependencyError


@dataclass
class VersionStats:
    name: str
    version: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_p50: float | None = None
    itl_p50: float | None = None
    resident: str = "no"
    split_share: str = ""


def _p50(buckets: list[tuple[float, float]]) -> float | None:
    """The upper bound of the bucket holding the median (cumulative ``(le, count)`` pairs)."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    return next((le for le, count in buckets if count >= total / 2), None)


def parse_stats(text: str) -> list[VersionStats]:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as e:
        raise MissingDependencyError("prometheus_client", "serve", "adapterhub stats") from e
    rows: dict[tuple[str, str], VersionStats] = {}
    hist: dict[str, dict[tuple[str, str], list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    split: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)

    def row(labels: dict[str, str]) -> VersionStats:
        key = (labels.get("name", "-"), labels.get("version", "-"))
        return rows.setdefault(key, VersionStats(*key))

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            lb: dict[str, Any] = s.labels
            if s.name == "adapterhub_requests_total":
                r = row(lb)
                r.requests += int(s.value)
                r.errors += int(s.value) if int(lb.get("status", "200")) >= 400 else 0
            elif s.name == "adapterhub_prompt_tokens_total":
                row(lb).prompt_tokens += int(s.value)
            elif s.name == "adapterhub_completion_tokens_total":
                row(lb).completion_tokens += int(s.value)
            elif s.name in ("adapterhub_time_to_first_token_seconds_bucket",
                            "adapterhub_inter_token_latency_seconds_bucket"):
                hist[s.name][(lb["name"], lb["version"])].append((float(lb["le"]), s.value))
            elif s.name == "adapterhub_adapter_resident" and s.value:
                row(lb).resident = "pinned" if lb.get("pinned") == "true" else "yes"
            elif s.name == "adapterhub_split_served_total":
                split[(lb["name"], lb["alias"])][lb["version"]] = s.value
    for (name, version), b in hist["adapterhub_time_to_first_token_seconds_bucket"].items():
        row({"name": name, "version": version}).ttft_p50 = _p50(b)
    for (name, version), b in hist["adapterhub_inter_token_latency_seconds_bucket"].items():
        row({"name": name, "version": version}).itl_p50 = _p50(b)
    for (name, alias), served in split.items():
        total = sum(served.values())
        for version, n in served.items():
            row({"name": name, "version": version}).split_share = f"@{alias} {100 * n / total:.1f}%"
    return sorted((r for r in rows.values() if r.name != "-"), key=lambda r: (r.name, r.version))


def fetch_stats(url: str, timeout: float = 10.0) -> list[VersionStats]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as resp:  # noqa: S310
            text = resp.read().decode()
    except (OSError, ValueError) as e:  # ValueError: not a URL (e.g. no http://)
        raise AdapterHubError(f"cannot read {url}/metrics ({e})") from e
    return parse_stats(text)
