"""Foundation: refs, errors, settings, import hygiene, CLI shell, base-model resolution."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adapterhub.errors import AdapterHubError, InvalidRefError, ModelNotFoundError, NotFoundError
from adapterhub.loading.bases import resolve_model
from adapterhub.refs import AdapterRef, parse_ref
from adapterhub.settings import Settings


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lumen", AdapterRef("lumen")),
        ("lumen@3", AdapterRef("lumen", version=3)),
        ("lumen@production", AdapterRef("lumen", alias="production")),
        ("lumen@sha256:abcd12", AdapterRef("lumen", hash_prefix="abcd12")),
        ("my-adapter_v2.1", AdapterRef("my-adapter_v2.1")),
    ],
)
def test_parse_ref(text, expected):
    ref = parse_ref(text)
    assert ref == expected
    assert str(ref) == text


@pytest.mark.parametrize(
    "text", ["../x", "/etc/passwd", "a/b", "x@", "x@0", "x@sha256:zz", "lümen", "x\u2215y", "", ".hidden",
             "a\\b", "x@Prod uction", "name."],
)
def test_unsafe_or_malformed_refs_are_refused(text):
    with pytest.raises(InvalidRefError):
        parse_ref(text)


def test_error_tree_inherits_builtins():
    assert issubclass(InvalidRefError, ValueError)
    assert issubclass(NotFoundError, LookupError)
    assert issubclass(ModelNotFoundError, AdapterHubError)


def test_settings_home_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path / "h"))
    s = Settings()
    assert s.home == tmp_path / "h"
    assert s.registry_dir == tmp_path / "h" / "registry"


def test_import_adapterhub_does_not_import_torch():
    code = (
        "import sys, adapterhub, adapterhub.registry, adapterhub.models, adapterhub.refs, adapterhub.cli.main,"
        " adapterhub.hub.sync, adapterhub.loading;"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'transformers' not in sys.modules; print('clean')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "adapterhub.cli.main", *args], capture_output=True,
                          text=True, env=env)


def test_cli_version_and_help():
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("adapterhub ")
    assert "import" in _cli("--help").stdout


def test_cli_unknown_model_is_one_line_exit_2(tmp_path):
    out = _cli("models", "show", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "no such model path" in out.stderr and "Traceback" not in out.stderr
    out = _cli("models", "show", "no-such-model")
    assert out.returncode == 2 and "unknown model 'no-such-model'" in out.stderr


def test_resolve_local_model_dir(tiny_model):
    m = resolve_model(str(tiny_model), Settings())
    assert m.path == tiny_model.resolve() and m.kind == "local" and len(m.fingerprint) == 16


def test_resolve_dir_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path), Settings())


def test_demo_model_not_pulled_is_clear_without_pull(tmp_path):
    with pytest.raises(ModelNotFoundError, match="pull-demo"):
        resolve_model("smollm2-135m-instruct", Settings(home=tmp_path / "empty-home"), pull=False)


def test_bf16_on_a_cpu_without_bf16_instructions_computes_in_fp32(monkeypatch, caplog):
    """bf16 is emulated on CPUs without AVX512-BF16 / AMX (37x slower than fp32 on an AVX2 EPYC): training,
    eval and serving compute in fp32 there, and say so; on a CPU that has them, bf16 stays bf16."""
    import logging

    import torch

    from adapterhub.precision import torch_dtype

    monkeypatch.setenv("ADAPTERHUB_CPU_BF16", "0")
    with caplog.at_level(logging.WARNING, logger="adapterhub.precision"):
        assert torch_dtype("bf16", cuda=False) == torch.float32
    assert "no bf16 instructions" in caplog.text
    assert torch_dtype("bf16", cuda=True) == torch.bfloat16  # GPUs: as asked
    monkeypatch.setenv("ADAPTERHUB_CPU_BF16", "1")
    assert torch_dtype("bf16", cuda=False) == torch.bfloat16
