"""CLI flags generated from a pydantic model (declared once): every field is an option with its
description as help, and bad values are one line naming every bad flag, before anything is loaded."""

from __future__ import annotations

import os
import subprocess
import sys

from adapterhub.serving.config import ServeConfig
from tests.builders import pythonpath


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adapterhub.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": pythonpath(), "COLUMNS": "400"}, timeout=120)


def test_serve_options_come_from_serve_config():
    out = _cli("serve", "--help")
    assert out.returncode == 0
    flat = " ".join(out.stdout.split())
    for name, field in ServeConfig.model_fields.items():
        if name == "vllm_args":
            continue
        assert f"--{name.replace('_', '-')}" in flat, name
        assert " ".join((field.description or "").split()[:3]) in flat, name


def test_bad_serve_values_are_one_usage_error_naming_each_flag():
    out = _cli("serve", "--max-loaded", "0", "--port", "70000", "--engine", "tgi")
    assert out.returncode == 2 and out.stderr.startswith("Usage: adapterhub serve [OPTIONS]"), out.stderr
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    for part in ("--max-loaded:", "--port:", "--engine:"):  # every bad value, in the one error line
        assert part in error, error


def test_stats_with_a_malformed_url_is_one_line():
    out = _cli("stats", "--url", "not a url")
    assert out.returncode != 0 and out.stderr.count("\n") == 1 and "cannot read not a url/metrics" in out.stderr
