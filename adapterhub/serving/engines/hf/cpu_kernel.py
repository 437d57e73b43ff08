"""A fused CPU kernel for one decode step of batched LoRA: ``y[n] += (x[n] @ Aᵀ[n]) @ Bᵀ[n]`` per row.

Why: on CPU a decode step's LoRA is ~4 small ops per adapted layer (cast x to fp32, shrink bmm, expand bmm,
add into the base's output), 7 layers × 30 blocks on the demo model. Each bmm of one token per row runs far
below what the core can do (~3 GMAC/s measured), so LoRA added ~8 ms to a 46 ms step of 8 rows. One
vectorized loop per layer that reads x in its own dtype, accumulates in fp32 and adds into y in place does the
same arithmetic in about half the time (``benchmarks.lora_ops``; numbers in docs/benchmarks.md).

The kernel is C++ compiled on this machine with ``torch.utils.cpp_extension`` (g++ and ninja; ``-march=native``
so it uses this CPU's vector units), in a background thread the first time a CPU engine starts; the build is
cached (``TORCH_EXTENSIONS_DIR``, by default ~/.cache/torch_extensions) under a name that hashes the source,
torch's version and the CPU's flags, so a later start loads it in well under a second. Until it is ready, or if
it cannot be built (no compiler: a warning says so), or with ``ADAPTERHUB_LORA_KERNEL=off``, layers use the
bmm path: the same results up to fp32 summation order. Only decode (one token per row) uses it; prefill's
matrix products stay with torch, which is faster there.

This module knows nothing about slots or batches: :data:`decode` is ``None`` or the op.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# The op once built and loaded: decode(y, x, at, bt) with y [n, …, out] and x [n, …, in] (one token per row,
# contiguous, the same dtype: fp32, bf16 or fp16), at = Aᵀ [n, in, r] and bt = Bᵀ [n, r, out] contiguous fp32.
decode: Callable[..., Any] | None = None
state = "idle"  # idle → building → ready | failed | off
_lock = threading.Lock()
_done = threading.Event()

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

// y[row] += (x[row] · Aᵀ[row]) · Bᵀ[row], summed in fp32. R > 0: the rank, fixed at compile time, so the
// shrink's sums live in registers (four independent chains over the input features); R == 0: any rank.
template <typename T, int R>
static void lora_row(const T* __restrict xr, const float* __restrict a, const float* __restrict b,
                     T* __restrict yr, int64_t in, int64_t r, int64_t out, float* __restrict z) {
  if constexpr (R > 0) {
    float z0[R] = {}, z1[R] = {}, z2[R] = {}, z3[R] = {};
    int64_t i = 0;
    for (; i + 4 <= in; i += 4) {
      const float x0 = static_cast<float>(xr[i]), x1 = static_cast<float>(xr[i + 1]);
      const float x2 = static_cast<float>(xr[i + 2]), x3 = static_cast<float>(xr[i + 3]);
      const float* __restrict ai = a + i * R;
#pragma omp simd
      for (int k = 0; k < R; ++k) {
        z0[k] += x0 * ai[k];
        z1[k] += x1 * ai[R + k];
        z2[k] += x2 * ai[2 * R + k];
        z3[k] += x3 * ai[3 * R + k];
      }
    }
    for (; i < in; ++i) {
      const float xi = static_cast<float>(xr[i]);
#pragma omp simd
      for (int k = 0; k < R; ++k) z0[k] += xi * a[i * R + k];
    }
    for (int k = 0; k < R; ++k) z[k] = (z0[k] + z1[k]) + (z2[k] + z3[k]);
  } else {
    std::fill(z, z + r, 0.f);
    for (int64_t i = 0; i < in; ++i) {
      const float xi = static_cast<float>(xr[i]);
      const float* __restrict ai = a + i * r;
#pragma omp simd
      for (int64_t k = 0; k < r; ++k) z[k] += xi * ai[k];
    }
  }
  constexpr int64_t BLOCK = 64;  // output features per block: its sums stay in registers across the ranks
  for (int64_t o0 = 0; o0 < out; o0 += BLOCK) {
    const int64_t len = std::min(BLOCK, out - o0);
    float acc[BLOCK] = {};
    for (int64_t k = 0; k < r; ++k) {
      const float zk = z[k];
      const float* __restrict bk = b + k * out + o0;
#pragma omp simd
      for (int64_t o = 0; o < len; ++o) acc[o] += zk * bk[o];
    }
    T* __restrict yo = yr + o0;
#pragma omp simd
    for (int64_t o = 0; o < len; ++o) yo[o] = static_cast<T>(static_cast<float>(yo[o]) + acc[o]);
  }
}

template <typename T, int R>
static void lora_rows(const T* x, const float* at, const float* bt, T* y, int64_t n, int64_t in, int64_t r,
                      int64_t out) {
  // Rows in parallel on torch's intra-op threads once a row's work is worth a thread.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, r * (in + out)));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> z(r);
    for (int64_t row = begin; row < end; ++row)
      lora_row<T, R>(x + row * in, at + row * in * r, bt + row * r * out, y + row * out, in, r, out, z.data());
  });
}

void lora_decode_(torch::Tensor y, torch::Tensor x, torch::Tensor at, torch::Tensor bt) {
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu() && at.device().is_cpu() && bt.device().is_cpu(),
              "lora_decode_: CPU tensors only");
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous() && at.is_contiguous() && bt.is_contiguous(),
              "lora_decode_: contiguous tensors only");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "lora_decode_: x and y differ in dtype");
  TORCH_CHECK(at.scalar_type() == at::kFloat && bt.scalar_type() == at::kFloat, "lora_decode_: fp32 A and B only");
  TORCH_CHECK(at.dim() == 3 && bt.dim() == 3, "lora_decode_: A and B are [rows, in, r] and [rows, r, out]");
  const int64_t n = at.size(0), in = at.size(1), r = at.size(2), out = bt.size(2);
  TORCH_CHECK(bt.size(0) == n && bt.size(1) == r, "lora_decode_: A and B do not match");
  TORCH_CHECK(x.size(0) == n && y.size(0) == n && x.numel() == n * in && y.numel() == n * out,
              "lora_decode_: one token per row, of the layer's in and out features");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "lora_decode_", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const float* ap = at.data_ptr<float>();
    const float* bp = bt.data_ptr<float>();
    switch (r) {
      case 8: lora_rows<scalar_t, 8>(xp, ap, bp, yp, n, in, r, out); break;
      case 16: lora_rows<scalar_t, 16>(xp, ap, bp, yp, n, in, r, out); break;
      case 32: lora_rows<scalar_t, 32>(xp, ap, bp, yp, n, in, r, out); break;
      case 64: lora_rows<scalar_t, 64>(xp, ap, bp, yp, n, in, r, out); break;
      default: lora_rows<scalar_t, 0>(xp, ap, bp, yp, n, in, r, out);
    }
  });
}
"""


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor()


def build_name() -> str:
    """The extension's name: changes with the source, torch's version and the CPU (``-march=native`` code
    built on one CPU may not run on another sharing the cache)."""
    import torch

    digest = hashlib.sha256("\0".join((SOURCE, torch.__version__, platform.machine(), _cpu_flags())).encode())
    return f"adapterhub_lora_decode_{digest.hexdigest()[:16]}"


def _build() -> None:
    global decode, state
    try:
        if sys.platform == "linux":
            # The compiler runs beside a serving process on a machine of few cores (a first start compiles
            # for ~30 s on 2): at the lowest priority it takes only idle time. Linux keeps the nice value per
            # thread, so this thread and the compiler it starts drop, not the server's own threads.
            os.nice(19)
        from torch.utils.cpp_extension import load_inline

        module = load_inline(
            build_name(), cpp_sources=SOURCE, functions=["lora_decode_"],
            extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False,
        )
        decode = module.lora_decode_
        state = "ready"
        log.info("CPU LoRA decode kernel ready")
    except Exception as e:  # no compiler, no ninja, a build error: the bmm path serves, a little slower
        state = "failed"
        log.warning("the CPU LoRA decode kernel could not be built (%s); LoRA layers use torch.bmm",
                    str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
    finally:
        _done.set()


def prepare(wait: bool = False, timeout: float | None = None) -> bool:
    """Start building (or loading the cached build of) the kernel in a background thread, once per process;
    ``wait``: block until that ends. True when the kernel is ready."""
    global state
    with _lock:
        if state == "idle":
            if os.environ.get("ADAPTERHUB_LORA_KERNEL", "").lower() in ("0", "off", "false", "no"):
                state = "off"
                _done.set()
            else:
                state = "building"
                threading.Thread(target=_build, name="lora-kernel-build", daemon=True).start()
    if wait:
        _done.wait(timeout)
    return decode is not None
