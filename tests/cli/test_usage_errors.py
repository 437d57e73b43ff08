"""A mistyped command or option is a usage error, as git, the `hf` CLI or click itself print one: the
command's usage line, ``Error: …`` with the closest name suggested, exit code 2, and no traceback hint.
Run through the installed ``adapterhub`` entry point, as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ENTRY = Path(sys.executable).parent / "adapterhub"


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    assert ENTRY.exists(), f"the entry point is not installed next to {sys.executable}"
    env = {**os.environ, "ADAPTERHUB_HOME": str(home), "COLUMNS": "200"}
    env.pop("ADAPTERHUB_DEBUG", None)
    return subprocess.run([str(ENTRY), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("args, usage, error", [
    (["serve", "--bogus"], "Usage: adapterhub serve [OPTIONS]", "Error: No such option: --bogus"),
    (["serve", "--bas", "x"], "Usage: adapterhub serve [OPTIONS]", "Possible options: --base"),
    (["lisst"], "Usage: adapterhub [OPTIONS] COMMAND [ARGS]...", "Error: No such command 'lisst'. Did you mean 'list'"),
    (["show"], "Usage: adapterhub show [OPTIONS]", "Error: Missing argument 'ref'."),
    (["serve", "--port", "abc"], "Usage: adapterhub serve [OPTIONS]", "Error: Invalid value for '--port'"),
    (["serve", "--engine", "nope"], "Usage: adapterhub serve [OPTIONS]", "--engine: Input should be 'hf' or 'vllm'"),
    (["train"], "Usage: adapterhub train [OPTIONS]", "Error: Missing argument"),
    (["registry", "gcc"], "Usage: adapterhub registry [OPTIONS] COMMAND [ARGS]...", "No such command 'gcc'"),
], ids=["unknown-option", "close-option", "unknown-command", "missing-argument", "bad-int", "wrong-choice",
        "missing-config", "unknown-subcommand"])
def test_a_typo_is_a_usage_error(args, usage, error, tmp_path):
    out = run(*args, home=tmp_path)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert usage in out.stderr and error in out.stderr, out.stderr
    assert "Try 'adapterhub" in out.stderr and "--help' for help." in out.stderr, out.stderr
    for bug_words in ("ADAPTERHUB_DEBUG", "NoSuchOption", "UsageError", "Traceback", "BadParameter"):
        assert bug_words not in out.stderr, out.stderr
    assert out.stdout == ""


def test_our_own_errors_keep_their_line_and_exit_code(tmp_path):
    out = run("show", "nosuch@1", home=tmp_path)
    from adapterhub.errors import AdapterNotFoundError

    assert out.returncode == AdapterNotFoundError.exit_code, out.returncode
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Usage:" not in out.stderr and "ADAPTERHUB_DEBUG" not in out.stderr


def test_a_real_bug_still_says_so(tmp_path, monkeypatch, capsys):
    from adapterhub.cli import main as cli_main

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("adapterhub.cli.registry.open_registry", broken)
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["list"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: RuntimeError: boom (set ADAPTERHUB_DEBUG=1 for the traceback)"
