"""Shared fixtures: an isolated home dir, the tiny model, tiny adapters, a registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.builders import build_lora_adapter, build_tiny_model


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "", None}
BLOCKED: list[str] = []


def _is_loopback(host) -> bool:
    import ipaddress

    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Refuse (before any packet is sent) every connection or name lookup that is not loopback."""
    import socket

    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(address):
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            BLOCKED.append(str(address[0]))
            raise ConnectionRefusedError(f"tests may only reach 127.0.0.1, not {address[0]}")

    def connect(self, address):
        check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        check((host,))
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    yield BLOCKED
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = real_connect, real_connect_ex, real_getaddrinfo


@pytest.fixture(autouse=True, scope="session")
def _lora_kernel():
    """The fused CPU LoRA decode kernel built (or loaded from its cache) before any engine runs, so every test
    decodes on the path a server uses once started, not on whichever the background build had reached."""
    try:
        from adapterhub.serving.engines.hf import cpu_kernel
    except ImportError:  # no torch in this environment
        return
    cpu_kernel.prepare(wait=True, timeout=600)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own ADAPTERHUB_HOME; the demo model cache is shared through a symlink."""
    home = tmp_path / "home"
    home.mkdir()
    shared = os.environ.get("ADAPTERHUB_TEST_MODELS")
    if shared:
        (home / "models").symlink_to(shared)
    monkeypatch.setenv("ADAPTERHUB_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_json_model(tmp_path_factory) -> Path:
    """The tiny model with a tokenizer that writes any printable ASCII (JSON, tool calls) and 2048 positions."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-json") / "tiny-json", json_vocab=True, context=2048)


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> Path:
    """A different architecture (hidden 32): adapters for ``tiny_model`` must be refused on it."""
    return build_tiny_model(tmp_path_factory.mktemp("other") / "other-llama", seed=5, hidden=32)


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model, tmp_path_factory) -> list[Path]:
    """Four distinct LoRA adapters for the tiny model (ranks 4, 8, 4, 2)."""
    root = tmp_path_factory.mktemp("adapters")
    specs = [(1, 4), (2, 8), (3, 4), (4, 2)]
    return [build_lora_adapter(tiny_model, root / f"a{seed}", seed=seed, r=r) for seed, r in specs]


@pytest.fixture()
def registry(_isolated_home):
    from adapterhub.registry import Registry
    from adapterhub.settings import Settings

    return Registry.open(Settings())


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server of our own on 127.0.0.1 (Debian's binaries; .ci/run installs them)."""
    import importlib.util

    from tests.services import PostgresServer, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb) not installed: apt-get install postgresql")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg not installed: pip install 'adapterhub[remote]'")
    server = PostgresServer(bindir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3-compatible server on 127.0.0.1, reached through boto3 over HTTP."""
    pytest.importorskip("moto.server", reason="moto[server] not installed")
    from tests.services import S3Server

    server = S3Server()
    yield server
    server.stop()


@pytest.fixture()
def shared_registry(pg_server, s3_server, monkeypatch):
    """Point this test's ADAPTERHUB_* at a fresh PostgreSQL database and bucket; returns (db URL, s3 URL)."""
    db_url, artifacts = pg_server.new_database(), f"s3://{s3_server.new_bucket()}/registry"
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_URL", db_url)
    monkeypatch.setenv("ADAPTERHUB_ARTIFACTS_URL", artifacts)
    return db_url, artifacts


@pytest.fixture()
def dataset(tmp_path):
    """Eight short instruction records (the training tests' default data)."""
    recs = [{"instruction": f"what is {w}", "output": f"{w} is a good day"} for w in
            ("red", "blue", "green", "cat", "dog", "tree", "river", "mountain")]
    p = tmp_path / "data.json"
    p.write_text(json.dumps(recs))
    return p


@pytest.fixture()
def hf_env(tmp_path, monkeypatch):
    """A fake Hugging Face Hub over real HTTP on 127.0.0.1, with the client pointed at it."""
    from tests.fake_hub import FakeHub

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        # huggingface_hub reads HF_HUB_DISABLE_XET at import (transformers imported it already): patch the constant.
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_XET", True)
        yield hub
