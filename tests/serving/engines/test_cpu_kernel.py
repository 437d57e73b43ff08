"""The fused CPU decode kernel for batched LoRA: it builds here, computes what the bmm path computes for every
dtype and rank the engine serves, and refuses operands it was not written for instead of reading past them."""

from __future__ import annotations

import os
import shutil
import sys
import threading

import pytest
import torch

from adapterhub.serving.engines.hf import cpu_kernel


@pytest.fixture(scope="module")
def kernel():
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler: the engine serves with torch.bmm")
    assert cpu_kernel.prepare(wait=True, timeout=600), f"the kernel did not build (state: {cpu_kernel.state})"
    return cpu_kernel.decode


def _reference(y, x, at, bt):
    """The bmm path: fp32 LoRA on x, added into y and rounded once to y's dtype."""
    return (y.float() + torch.bmm(torch.bmm(x.float(), at), bt)).to(y.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("rows", "fan_in", "fan_out", "rank"), [
    (8, 576, 576, 8), (8, 576, 192, 16), (3, 1536, 576, 64), (1, 12, 20, 1), (5, 7, 1536, 3),
])
def test_the_kernel_adds_each_rows_own_lora_as_the_bmm_path_does(kernel, dtype, rows, fan_in, fan_out, rank):
    torch.manual_seed(rows * fan_in + rank)
    x = torch.randn(rows, 1, fan_in).to(dtype)
    y = torch.randn(rows, 1, fan_out).to(dtype)
    at = torch.randn(rows, fan_in, rank) / fan_in**0.5
    bt = torch.randn(rows, rank, fan_out) / rank**0.5
    bt[0] = 0  # a base row (slot 0) in the batch: zeros, so its output is left as it was
    want = _reference(y, x, at, bt)
    before = y.clone()
    kernel(y, x, at, bt)
    torch.testing.assert_close(y[0], before[0], rtol=0, atol=0)
    if dtype == torch.float32:
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    else:  # both sum in fp32 and round once: at most one unit in the last place apart
        torch.testing.assert_close(y.float(), want.float(), rtol=2 ** -7, atol=1e-3)


def test_the_kernel_refuses_operands_it_was_not_written_for(kernel):
    at, bt = torch.zeros(2, 8, 4), torch.zeros(2, 4, 6)
    cases = {
        "one token per row": (torch.zeros(2, 2, 6), torch.zeros(2, 2, 8), at, bt),
        "contiguous": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 16)[:, :, ::2], at, bt),
        "differ in dtype": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 8, dtype=torch.bfloat16), at, bt),
        "fp32 A and B": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 8), at.bfloat16(), bt.bfloat16()),
        "do not match": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 8), at, torch.zeros(3, 4, 6)),
    }
    for message, args in cases.items():
        with pytest.raises(RuntimeError, match=message):
            kernel(*args)


@pytest.mark.skipif(sys.platform != "linux", reason="the per-thread nice value is Linux's")
def test_the_build_runs_at_the_lowest_priority_and_a_failed_one_says_so(monkeypatch, caplog):
    """A first start compiles beside the serving threads on a machine of few cores: the build thread (and the
    compiler it starts) drops to nice 19, the server's threads keep theirs, and a failed build is a warning
    naming its cause while the bmm path serves."""
    import torch.utils.cpp_extension

    seen = {}

    def no_compiler(*args, **kwargs):
        seen["nice"] = os.nice(0)
        raise RuntimeError("error: command 'c++' failed: No such file or directory")

    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", no_compiler)
    monkeypatch.setattr(cpu_kernel, "state", "idle")
    monkeypatch.setattr(cpu_kernel, "decode", None)
    monkeypatch.setattr(cpu_kernel, "_done", threading.Event())
    before = os.nice(0)
    assert cpu_kernel.prepare(wait=True, timeout=60) is False
    assert seen["nice"] == 19 and os.nice(0) == before
    assert cpu_kernel.state == "failed" and cpu_kernel.decode is None
    assert "No such file or directory" in caplog.text and "torch.bmm" in caplog.text
