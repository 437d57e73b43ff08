"""The fused CPU kernel for batched LoRA: it builds here, computes what the bmm path computes for every dtype
and rank the engine serves (one token per row or many, ranks mixed in a batch), and refuses operands it was not
written for instead of reading past them."""

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
    return cpu_kernel.apply


def _stacks(fan_in, fan_out, ranks, max_rank):
    """Slot stacks as a layer holds them: A [slots, R, in], Bᵀ [slots, R, out], zero beyond each slot's rank;
    slot 0 (the base) all zero."""
    a = torch.randn(len(ranks), max_rank, fan_in) / fan_in**0.5
    bt = torch.randn(len(ranks), max_rank, fan_out) / max_rank**0.5
    for s, r in enumerate(ranks):
        a[s, r:] = 0
        bt[s, r:] = 0
    return a, bt, torch.tensor(ranks, dtype=torch.int32)


def _reference(y, x, a, bt, slots):
    """The bmm path: each row's fp32 LoRA on x, added into y and rounded once to y's dtype."""
    return (y.float() + torch.bmm(torch.bmm(x.float(), a[slots].transpose(1, 2)), bt[slots])).to(y.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("rows", "tokens", "fan_in", "fan_out", "ranks"), [
    (8, 1, 576, 576, [0, 8, 8, 16, 4]),  # decode: ranks differ within the batch
    (3, 7, 576, 1536, [0, 64, 16, 1]),  # prefill: several tokens per row
    (2, 33, 1536, 576, [0, 8, 64]),
    (1, 1, 12, 20, [0, 1]),
    (5, 3, 7, 33, [0, 3, 5]),  # odd sizes: the loops' remainders
])
def test_the_kernel_adds_each_rows_own_lora_as_the_bmm_path_does(kernel, dtype, rows, tokens, fan_in, fan_out,
                                                                  ranks):
    torch.manual_seed(rows * fan_in + tokens)
    a, bt, rank_t = _stacks(fan_in, fan_out, ranks, max(ranks))
    slots = torch.arange(rows) % len(ranks)  # slot 0 (a base row) included, and rows sharing a slot
    x = torch.randn(rows, tokens, fan_in).to(dtype)
    y = torch.randn(rows, tokens, fan_out).to(dtype)
    want = _reference(y, x, a, bt, slots)
    before = y.clone()
    kernel(y, x, a, bt, slots, rank_t)
    torch.testing.assert_close(y[0], before[0], rtol=0, atol=0)  # the base row is left exactly as it was
    if dtype == torch.float32:
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    else:  # both sum in fp32 and round once: at most one unit in the last place apart
        torch.testing.assert_close(y.float(), want.float(), rtol=2 ** -7, atol=1e-3)


def test_the_kernel_reads_only_up_to_each_slots_rank():
    """A slot's rank bounds what is read: values past it (a slot's previous, larger adapter, say) add nothing."""
    kernel = cpu_kernel.apply
    if kernel is None:
        pytest.skip(f"the CPU kernel is not available ({cpu_kernel.state})")
    a, bt = torch.ones(2, 8, 4), torch.ones(2, 8, 3)
    y = torch.zeros(1, 1, 3)
    kernel(y, torch.ones(1, 1, 4), a, bt, torch.tensor([1]), torch.tensor([0, 2], dtype=torch.int32))
    assert y.flatten().tolist() == [8.0, 8.0, 8.0]  # rank 2: 2 × (1·4), not 8 × 4


def test_the_kernel_refuses_operands_it_was_not_written_for(kernel):
    a, bt, ranks = torch.zeros(3, 4, 8), torch.zeros(3, 4, 6), torch.tensor([0, 4, 2], dtype=torch.int32)
    one = torch.tensor([1, 2])
    cases = {
        "contiguous": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 16)[:, :, ::2], a, bt, one, ranks),
        "differ in dtype": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 8, dtype=torch.bfloat16), a, bt, one, ranks),
        "fp32 A and B": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 8), a.bfloat16(), bt.bfloat16(), one, ranks),
        "do not match": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 8), a, torch.zeros(3, 5, 6), one, ranks),
        "int64 slots and int32 ranks": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 8), a, bt, one, ranks.long()),
        "slot 3 out of range": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 8), a, bt, torch.tensor([1, 3]), ranks),
        "rank 9 out of range": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 8), a, bt, one,
                                torch.tensor([0, 9, 2], dtype=torch.int32)),
        "rows of tokens of the layer's in": (torch.zeros(2, 1, 6), torch.zeros(2, 1, 7), a, bt, one, ranks),
        "rows of tokens of the layer's out": (torch.zeros(2, 2, 6), torch.zeros(2, 1, 8), a, bt, one, ranks),
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
    monkeypatch.setattr(cpu_kernel, "apply", None)
    monkeypatch.setattr(cpu_kernel, "_done", threading.Event())
    before = os.nice(0)
    assert cpu_kernel.prepare(wait=True, timeout=60) is False
    assert seen["nice"] == 19 and os.nice(0) == before
    assert cpu_kernel.state == "failed" and cpu_kernel.apply is None
    assert "No such file or directory" in caplog.text and "torch.bmm" in caplog.text


@pytest.mark.skipif(sys.platform == "win32", reason="the build guard is a POSIX flock")
def test_a_build_killed_earlier_does_not_keep_the_kernel_from_loading(kernel, monkeypatch, caplog):
    """A server killed during its first start's build leaves torch's ``lock`` file in the build directory, and
    torch waits for that file to go away forever. The next start removes it (no live build holds our flock) and
    loads the kernel instead of serving on bmm for good."""
    from pathlib import Path

    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory(cpu_kernel.build_name(), False)) / "lock"
    lock.touch()
    monkeypatch.setattr(cpu_kernel, "state", "idle")
    monkeypatch.setattr(cpu_kernel, "apply", None)
    monkeypatch.setattr(cpu_kernel, "_done", threading.Event())
    try:
        assert cpu_kernel.prepare(wait=True, timeout=300), f"the kernel did not load ({cpu_kernel.state})"
        assert not lock.exists() and "interrupted" in caplog.text
    finally:
        lock.unlink(missing_ok=True)  # never leave it for the rest of the suite
