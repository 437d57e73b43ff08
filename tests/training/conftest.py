"""Fixtures of the training tests."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def dataset(tmp_path):
    """Eight short instruction records (the training tests' default data)."""
    recs = [{"instruction": f"what is {w}", "output": f"{w} is a good day"} for w in
            ("red", "blue", "green", "cat", "dog", "tree", "river", "mountain")]
    p = tmp_path / "data.json"
    p.write_text(json.dumps(recs))
    return p
