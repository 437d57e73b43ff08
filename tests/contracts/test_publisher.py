"""Publisher contract (adapterhub.hub.sync over each transport), run on both hubs: Hugging Face (a fake Hub over real HTTP on 127.0.0.1)
and OpenXLab (git + git-lfs to a local bare repository)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adapterhub.errors import PublishError
from adapterhub.hub.sync import make_publisher
from adapterhub.loading.bases import resolve_model
from adapterhub.settings import Settings
from tests.builders import pythonpath
from tests.fake_hub import FakeHub

HAS_LFS = shutil.which("git-lfs") is not None


class HFSide:
    scheme = "hf"

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub

    def publisher(self, **kw):
        return make_publisher("hf", endpoint=self.hub.url, backoff=0.01, **kw)

    def prepare(self, repo: str) -> None:
        pass

    def files(self, repo: str, tag: str) -> dict[str, bytes]:
        return self.hub.files_at(repo, tag)

    def tags(self, repo: str) -> set[str]:
        return set(self.hub.repos[repo].tags)


class OXLSide:
    scheme = "openxlab"

    def __init__(self, root: Path) -> None:
        self.root = root

    def publisher(self, **kw):
        return make_publisher("openxlab", base_url=f"file://{self.root}", backoff=0.01, **kw)

    def prepare(self, repo: str) -> None:  # OpenXLab repos are created on the site first
        d = self.root / f"{repo}.git"
        d.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(d)], check=True)

    def files(self, repo: str, tag: str) -> dict[str, bytes]:
        work = self.root.parent / f"check-{tag}"
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["git", "clone", "-q", "--branch", tag, f"file://{self.root}/{repo}.git", str(work)], check=True)
        subprocess.run(["git", "lfs", "pull"], cwd=work, check=True)
        return {p.relative_to(work).as_posix(): p.read_bytes() for p in work.rglob("*")
                if p.is_file() and ".git" not in p.relative_to(work).parts}

    def tags(self, repo: str) -> set[str]:
        out = subprocess.run(["git", "--git-dir", str(self.root / f"{repo}.git"), "tag"], capture_output=True, text=True)
        return set(out.stdout.split())


@pytest.fixture(params=["hf", pytest.param("openxlab", marks=pytest.mark.skipif(not HAS_LFS, reason="git-lfs missing"))])
def side(request, tmp_path):
    if request.param == "hf":
        yield HFSide(request.getfixturevalue("hf_env"))
    else:
        yield OXLSide(tmp_path / "oxl-remote")


@pytest.fixture()
def published(registry, tiny_adapters, tiny_model):
    base = resolve_model(str(tiny_model), Settings()).identity()
    registry.register(tiny_adapters[0], "lumen", base_model=base, training={"method": "lora", "steps": 3})
    registry.register(tiny_adapters[1], "lumen", base_model=base)
    registry.set_alias("lumen@2", "production")
    return registry


def test_push_pull_round_trip(side, published, tiny_adapters):
    repo = "alice/lumen"
    side.prepare(repo)
    pub = side.publisher()
    r1 = pub.push(published, "lumen@1", repo)
    r2 = pub.push(published, "lumen@production", repo)
    assert r1.created and r2.created and (r1.tag, r2.tag) == ("v1", "v2")
    assert {"v1", "v2"} <= side.tags(repo)
    files = side.files(repo, "v1")
    assert {"adapter_config.json", "adapter_model.safetensors", "adapterhub.json", "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert card.startswith("---\n") and "library_name: peft" in card and "lumen@1" in card
    assert "PeftModel.from_pretrained" in card and "vllm serve" in card and "adapterhub serve" in card

    again = pub.push(published, "lumen@1", repo)  # idempotent
    assert not again.created

    rec, created = pub.pull(published, repo, "v1", "pulled")
    original = published.resolve("lumen@1")
    assert created and rec.content_hash == original.content_hash
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        assert (published.path(rec) / f).read_bytes() == (published.path(original) / f).read_bytes()
    assert published.manifest(rec).lineage["pulled_from"].endswith(f"{repo}@v1")
    assert pub.pull(published, repo, "v2", "pulled")[0].version == 2


def test_tag_with_other_content_is_refused(side, published, tiny_adapters, tiny_model, tmp_path):
    from adapterhub.registry import Registry
    from adapterhub.registry.local import LocalStore

    repo = "alice/lumen"
    side.prepare(repo)
    pub = side.publisher()
    pub.push(published, "lumen@1", repo)
    other = Registry(LocalStore(tmp_path / "other-registry"))  # another machine's lumen@1, different weights
    other.register(tiny_adapters[2], "lumen", base_model={"id": str(tiny_model)})
    with pytest.raises(PublishError, match="already has tag v1 with different content: nothing was published"):
        pub.push(other, "lumen@1", repo)
    assert side.files(repo, "v1")["adapter_model.safetensors"] == (tiny_adapters[0] / "adapter_model.safetensors").read_bytes()


def test_pull_of_tampered_file_is_refused(hf_env, published):
    from adapterhub.errors import AdapterHubError
    pub = make_publisher("hf", endpoint=hf_env.url, backoff=0.01)
    pub.push(published, "lumen@1", "alice/lumen")
    oid = published.manifest("lumen@1").files["adapter_model.safetensors"].sha256
    data = bytearray(hf_env.lfs[oid])
    data[-1] ^= 0xFF
    hf_env.lfs[oid] = bytes(data)
    with pytest.raises(AdapterHubError, match="adapter_model.safetensors"):
        pub.pull(published, "alice/lumen", "v1", "tampered")
    from adapterhub.errors import AdapterNotFoundError

    with pytest.raises(AdapterNotFoundError):
        published.resolve("tampered")  # nothing was registered


def test_no_token_is_clear(hf_env, published, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(PublishError, match="no Hugging Face token"):
        make_publisher("hf", endpoint=hf_env.url).push(published, "lumen@1", "alice/lumen")
    assert not hf_env.repos


def test_hf_repo_of_another_owner_is_refused(hf_env, published):
    with pytest.raises(PublishError, match="HTTP 403"):
        make_publisher("hf", endpoint=hf_env.url, backoff=0.01).push(published, "lumen@1", "bob/lumen")


def test_hf_transient_failure_is_retried_then_reported(hf_env, published):
    pub = make_publisher("hf", endpoint=hf_env.url, backoff=0.01)
    hf_env.fail["commit"] = 1  # one 500, then fine
    assert pub.push(published, "lumen@1", "alice/lumen").created
    hf_env.fail["commit"] = 10  # keeps failing
    with pytest.raises(PublishError, match="Nothing was published"):
        pub.push(published, "lumen@2", "alice/lumen")
    assert "v2" not in hf_env.repos["alice/lumen"].tags
    hf_env.fail.clear()
    assert pub.push(published, "lumen@2", "alice/lumen").created


def test_cli_push_and_pull(hf_env, published, _isolated_home):
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    out = subprocess.run([sys.executable, "-m", "adapterhub.cli.main", "push", "lumen@1", "--to", "hf", "--repo",
                          "alice/lumen"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "published lumen@1 to hf:alice/lumen as tag v1" in out.stdout
    out = subprocess.run([sys.executable, "-m", "adapterhub.cli.main", "pull", "hf:alice/lumen@v1", "--name", "copy"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "registered copy@1" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "adapterhub.cli.main", "pull", "hf:alice/lumen@v9", "--name", "x"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 4 and "no revision or tag 'v9'" in bad.stderr and bad.stderr.count("\n") == 1


def test_network_guard_blocks_non_loopback(_no_network):
    import socket

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: refused before any packet
    assert "192.0.2.1" in _no_network
