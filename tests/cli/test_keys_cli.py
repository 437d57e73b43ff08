"""``adapterhub keys``, run through the installed entry point as an operator types it."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from tests.cli.test_usage_errors import run


def test_create_prints_the_secret_once_and_stores_only_its_hash(tmp_path):
    out = run("keys", "create", "team-a", "--models", "team-a-*", "--models", "shared-bot", "--rpm", "60",
              "--tpm", "5000", "--expires-days", "30", home=tmp_path)
    assert out.returncode == 0, out.stderr
    secret = out.stdout.strip().splitlines()[-1]
    assert secret.startswith("ahk-") and len(secret) > 40
    listing = run("keys", "list", home=tmp_path)
    assert "team-a" in listing.stdout and "team-a-*,shared-bot" in listing.stdout and "active" in listing.stdout
    assert secret not in listing.stdout + listing.stderr
    db = sqlite3.connect(tmp_path / "registry" / "registry.db")
    rows = db.execute("SELECT secret_hash FROM api_keys").fetchall()
    dump = "\n".join(db.iterdump())
    assert rows == [(hashlib.sha256(secret.encode()).hexdigest(),)] and secret not in dump
    assert run("keys", "revoke", "team-a", home=tmp_path).returncode == 0
    assert "revoked" in run("keys", "list", home=tmp_path).stdout
    history = run("keys", "history", home=tmp_path).stdout
    assert "created" in history and "revoked" in history and secret not in history


@pytest.mark.parametrize("args, message", [
    (["create", "x", "--models", "team-[a"], "unbalanced"),
    (["create", "x", "--models", "a/b"], "cannot appear in an adapter name"),
    (["create", "x"], "a key needs a scope"),
    (["create", "x", "--models", ""], "empty --models glob"),
    (["create", "x", "--models", "*", "--rpm", "-1"], "--rpm must be a positive number"),
    (["create", "x", "--models", "*", "--tpm", "0"], "--tpm must be a positive number"),
    (["create", "bad name", "--models", "*"], "invalid key name"),
    (["create", "dup", "--models", "*"], "already exists"),
    (["revoke", "nobody"], "no key named 'nobody'"),
], ids=["glob", "slash", "no-scope", "empty-glob", "negative-rpm", "zero-tpm", "name", "duplicate", "unknown"])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    if args[1] == "dup":
        assert run("keys", "create", "dup", "--models", "*", home=tmp_path).returncode == 0
    out = run("keys", *args, home=tmp_path)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
