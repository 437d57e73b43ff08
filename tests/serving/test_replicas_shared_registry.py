"""Two `adapterhub serve` replicas (separate processes and home dirs, so separate caches) on one shared
registry (a real PostgreSQL and moto's S3 server on 127.0.0.1), spoken to with the official client."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.settings import Settings
from tests.builders import pythonpath
from tests.services import free_port


def _start(tiny_model, home, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": pythonpath(), "ADAPTERHUB_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "adapterhub.cli.main", "serve", "--base", str(tiny_model),
                             "--port", str(port), "--max-loaded", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _wait(url: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("server did not start")


@pytest.fixture()
def replicas(shared_registry, tiny_model, tmp_path):
    ports = [free_port(), free_port()]
    procs = [_start(tiny_model, tmp_path / f"replica-{i}", p) for i, p in enumerate(ports)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for u, p in zip(urls, procs, strict=True):
            _wait(u, p)
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def _ask(url: str, model: str):
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    return client.chat.completions.create(model=model, max_tokens=6, temperature=0,
                                          messages=[{"role": "user", "content": "hello"}])


def test_replicas_share_versions_aliases_and_refuse_corrupt_objects(replicas, tiny_model, tiny_adapters, tmp_path,
                                                                    shared_registry, s3_server):
    base = resolve_model(str(tiny_model), Settings()).identity()
    writer = Registry.open(Settings(home=tmp_path / "trainer"))  # a third machine, e.g. the trainer
    # Registered after both replicas started: both serve it, with the same answer.
    writer.register(tiny_adapters[0], "lumen", base_model=base, aliases=["production"])
    first = [_ask(u, "lumen@production").choices[0].message.content for u in replicas]
    v1 = _ask(replicas[0], "lumen@1").choices[0].message.content
    assert first == [v1, v1]
    # Moving @production changes what the next request on each replica gets.
    writer.register(tiny_adapters[1], "lumen", base_model=base)
    writer.set_alias("lumen@2", "production")
    second = [_ask(u, "lumen@production").choices[0].message.content for u in replicas]
    v2 = _ask(replicas[1], "lumen@2").choices[0].message.content
    assert second == [v2, v2] and v2 != v1
    # A corrupted object is refused with a checksum error on every replica, never served.
    rec, _ = writer.register(tiny_adapters[2], "broken", base_model=base)
    sha = writer.manifest(rec).files["adapter_model.safetensors"].sha256
    bucket, prefix = shared_registry[1].removeprefix("s3://").split("/", 1)
    key = f"{prefix}/objects/{sha[:2]}/{sha}"
    s3 = s3_server.client()
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    for u in replicas:
        r = httpx.post(u + "/v1/chat/completions", timeout=120,
                       json={"model": "broken", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code >= 500 and "checksum mismatch" in r.json()["error"]["message"], r.text
        assert _ask(u, "lumen@production").choices[0].message.content == v2  # the others are still served
