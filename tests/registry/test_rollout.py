"""Weighted aliases, rollback and gated promotion in the registry and its CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adapterhub.errors import ConflictError, GateError
from tests.builders import pythonpath


@pytest.fixture()
def two_versions(registry, tiny_adapters):
    registry.register(tiny_adapters[0], "lumen", metrics={"identity": 0.97, "retention": 0.95})
    registry.register(tiny_adapters[1], "lumen", metrics={"identity": 0.91, "retention": 0.93})
    registry.set_alias("lumen@1", "production")
    return registry


def test_split_is_sticky_per_caller_and_weighted(two_versions):
    reg = two_versions
    reg.set_split("lumen", "production", {1: 90, 2: 10})
    picks = {u: reg.resolve("lumen@production", caller=u).version for u in (f"user-{i}" for i in range(200))}
    assert all(reg.resolve("lumen@production", caller=u).version == v for u, v in picks.items())  # sticky
    share = sum(v == 2 for v in picks.values()) / len(picks)
    assert 0.07 <= share <= 0.13
    assert reg.resolve("lumen@1").version == 1  # pinned versions are untouched by the split
    last = reg.alias_history("lumen")[-1]
    assert last.split == {1: 90, 2: 10} and last.version == 1
    with pytest.raises(ConflictError, match="split alias @production"):
        reg.remove("lumen@2")


def test_rollback_returns_to_the_previous_target(two_versions):
    reg = two_versions
    reg.set_split("lumen", "production", {1: 90, 2: 10})
    reg.set_alias("lumen@2", "production")
    assert reg.rollback("lumen", "production").split == {1: 90, 2: 10}
    assert reg.alias_split("lumen", "production") == {1: 90, 2: 10}
    assert reg.alias_history("lumen")[-1].note == "rollback from 2"
    reg.rollback("lumen", "production")  # back to plain version 2
    assert reg.alias_split("lumen", "production") is None and reg.resolve("lumen@production").version == 2


def test_promotion_below_the_gate_changes_nothing_and_force_is_recorded(two_versions):
    reg = two_versions
    reg.set_gate("lumen", "production", ["identity>=0.95"])
    with pytest.raises(GateError, match=r"identity is 0.91, required >= 0.95 \(short by 0.04\)"):
        reg.promote("lumen@2", "production")
    assert reg.resolve("lumen@production").version == 1
    with pytest.raises(GateError, match=r"retention is 0.95, required >= 0.96 \(short by 0.01\)"):
        reg.promote("lumen@1", "production", require=["retention>=0.96"])  # the alias gate and --require add up
    record, prev, overridden = reg.promote("lumen@2", "production", force=True)
    assert record.version == 2 and prev == 1 and overridden
    assert "forced past gate" in reg.alias_history("lumen")[-1].note


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adapterhub.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": pythonpath()}, timeout=120)


def test_cli_promote_tag_split_history_rollback(two_versions):
    out = _cli("promote", "lumen@2", "production", "--require", "identity>=0.95")
    assert out.returncode == 6 and out.stderr.count("\n") == 1
    assert "identity is 0.91, required >= 0.95 (short by 0.04)" in out.stderr
    assert two_versions.resolve("lumen@production").version == 1
    out = _cli("tag", "lumen", "production", "--split", "1=90,2=10")
    assert out.returncode == 0 and "lumen@1 90%, lumen@2 10%" in out.stdout
    assert "-> 1=90,2=10" in _cli("history", "lumen").stdout
    out = _cli("promote", "lumen@2", "production", "--require", "identity>=0.95", "--force")
    assert out.returncode == 0 and "forced past" in out.stdout
    assert "forced past gate" in _cli("history", "lumen").stdout
    out = _cli("rollback", "lumen", "production")
    assert out.returncode == 0 and "1=90,2=10" in out.stdout
    bad = _cli("tag", "lumen", "production", "--split", "1=90")
    assert bad.returncode == 2 and "at least two versions" in bad.stderr


def test_every_path_that_moves_a_gated_alias_passes_the_gate(two_versions, tiny_adapters):
    """tag, tag --split and register/import with an alias are gated like promote; force is recorded."""
    reg = two_versions
    reg.set_gate("lumen", "production", ["identity>=0.95"])
    with pytest.raises(GateError, match="identity"):
        reg.set_alias("lumen@2", "production")  # `adapterhub tag lumen@2 production`
    with pytest.raises(GateError, match="lumen@2"):
        reg.set_split("lumen", "production", {1: 99, 2: 1})  # one version of the split misses it
    with pytest.raises(GateError, match="nothing was registered"):  # a new version without metrics, imported
        reg.register(tiny_adapters[2], "lumen", aliases=["production"])  # straight onto the alias
    assert reg.resolve("lumen@production").version == 1 and reg.resolve("lumen").version == 2  # no lumen@3
    assert all(e.version == 1 for e in reg.alias_history("lumen") if e.alias == "production")
    reg.set_split("lumen", "production", {1: 99, 2: 1}, force=True)
    forced = reg.alias_history("lumen")[-1]
    assert forced.split == {1: 99, 2: 1} and "forced past gate" in (forced.note or "")
    reg.set_alias("lumen@2", "staging")  # other aliases are not gated
    assert reg.resolve("lumen@staging").version == 2


def test_reweighting_a_split_moves_only_the_callers_it_must(two_versions, tiny_adapters):
    reg = two_versions
    reg.register(tiny_adapters[2], "lumen")
    users = [f"user-{i}" for i in range(2000)]

    def assignment() -> dict[str, int]:
        return {u: reg.resolve("lumen@production", caller=u).version for u in users}

    reg.set_split("lumen", "production", {1: 90, 2: 10})
    before = assignment()
    reg.set_split("lumen", "production", {1: 9, 2: 1})  # the same shares: nobody moves
    assert assignment() == before
    reg.set_split("lumen", "production", {1: 70, 2: 20, 3: 10})  # v2 grows, v3 is new
    after = assignment()
    assert not [u for u in users if before[u] == 2 and after[u] == 1]  # nobody leaves v2 for v1
    assert all(after[u] in (before[u], 2, 3) for u in users)  # moves go to the grown or the new version
    shares = {v: sum(x == v for x in after.values()) / len(users) for v in (1, 2, 3)}
    assert abs(shares[1] - 0.7) < 0.04 and abs(shares[2] - 0.2) < 0.04 and abs(shares[3] - 0.1) < 0.03, shares
    reg.set_split("lumen", "production", {1: 50, 2: 50})  # v1 shrinks: only its callers move
    final = assignment()
    assert not [u for u in users if after[u] == 2 and final[u] == 1]
    moved = sum(after[u] == 1 and final[u] != 1 for u in users) / len(users)
    assert 0.15 < moved < 0.25  # about the 20 points v1 lost (70 → 50)
