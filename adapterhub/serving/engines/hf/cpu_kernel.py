"""A fused CPU kernel for batched LoRA: ``y[n, t] += (x[n, t] @ A[s]ᵀ) @ Bᵀ[s]`` with ``s`` row n's slot.

Why: on CPU the bmm path is ~4 small ops per adapted layer (cast x to fp32, shrink bmm, expand bmm, add into
the base's output), 7 layers × 30 blocks on the demo model, and it needs each batch's per-row A/B gathered
from the slot stacks into contiguous copies (rebuilt or re-derived whenever rows join or leave). Each bmm of
one token per row runs far below what the core can do. One vectorized loop per layer instead reads every
row's adapter straight from the stacks at that slot's own rank, reads x in its own dtype, sums in fp32 and
adds into y in place: no gather, no per-batch copies, rows that share an adapter read the same weights, a
batch of mixed ranks costs each row its own rank, and a prefill's tokens go through the same loop as a
decode step's one (``benchmarks.lora_ops``; numbers in docs/benchmarks.md).

The kernel is C++ compiled on this machine with ``torch.utils.cpp_extension`` (g++ and ninja; ``-march=native``
so it uses this CPU's vector units), in a background thread the first time a CPU engine starts; the build is
cached (``TORCH_EXTENSIONS_DIR``, by default ~/.cache/torch_extensions) under a name that hashes the source,
torch's version and the CPU's flags, so a later start loads it in well under a second. Until it is ready, or if
it cannot be built (no compiler: a warning says so), or with ``ADAPTERHUB_LORA_KERNEL=off``, layers use the
bmm path: the same results up to fp32 summation order.

This module knows nothing about batches: :data:`apply` is ``None`` or the op.
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

# The op once built and loaded: apply(y, x, A, Bt, slots, ranks) adds each row's LoRA into y in place.
# y [n, …, out] and x [n, …, in]: n rows of one or more tokens, contiguous, the same dtype (fp32, bf16 or fp16);
# A [S, R, in] and Bt [S, R, out]: the layer's slot stacks, contiguous fp32; slots int64 [n]: each row's slot;
# ranks int32 [≥ S]: each slot's rank in this layer (0: nothing to add).
apply: Callable[..., Any] | None = None
state = "idle"  # idle → building → ready | failed | off
_lock = threading.Lock()
_done = threading.Event()

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

// One token: y += (x · A[s]ᵀ) · Bᵀ[s] at the slot's own rank r, summed in fp32. a: A[s] [R, in] (rank k's row
// at a + k·in), b: Bᵀ[s] [R, out]; xf: scratch for x in fp32, z: scratch for the r shrunk values.
template <typename T>
static void lora_token(const T* __restrict xr, const float* __restrict a, const float* __restrict b,
                       T* __restrict yr, int64_t in, int64_t r, int64_t out, float* __restrict xf,
                       float* __restrict z) {
  for (int64_t i = 0; i < in; ++i) xf[i] = static_cast<float>(xr[i]);
  int64_t k = 0;
  for (; k + 4 <= r; k += 4) {  // four ranks per pass over x: four independent sums
    const float* __restrict a0 = a + k * in;
    const float* __restrict a1 = a0 + in;
    const float* __restrict a2 = a1 + in;
    const float* __restrict a3 = a2 + in;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = 0; i < in; ++i) {
      const float xi = xf[i];
      s0 += xi * a0[i];
      s1 += xi * a1[i];
      s2 += xi * a2[i];
      s3 += xi * a3[i];
    }
    z[k] = s0, z[k + 1] = s1, z[k + 2] = s2, z[k + 3] = s3;
  }
  for (; k < r; ++k) {
    const float* __restrict ak = a + k * in;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < in; ++i) s += xf[i] * ak[i];
    z[k] = s;
  }
  constexpr int64_t BLOCK = 64;  // output features per block: its sums stay in registers across the ranks
  for (int64_t o0 = 0; o0 < out; o0 += BLOCK) {
    const int64_t len = std::min(BLOCK, out - o0);
    float acc[BLOCK] = {};
    for (int64_t kk = 0; kk < r; ++kk) {
      const float zk = z[kk];
      const float* __restrict bk = b + kk * out + o0;
#pragma omp simd
      for (int64_t o = 0; o < len; ++o) acc[o] += zk * bk[o];
    }
    T* __restrict yo = yr + o0;
#pragma omp simd
    for (int64_t o = 0; o < len; ++o) yo[o] = static_cast<T>(static_cast<float>(yo[o]) + acc[o]);
  }
}

// y[n, t] += LoRA of slot slots[n] on x[n, t] for every row n and each of its tokens t (decode: one; prefill:
// the prompt's), read straight from the slot stacks A [S, R, in] and Bᵀ [S, R, out] at the slot's rank
// ranks[slot] (0: nothing to add, e.g. the base's slot 0). Rows that share an adapter read the same weights.
void lora_apply_(torch::Tensor y, torch::Tensor x, torch::Tensor a, torch::Tensor bt, torch::Tensor slots,
                 torch::Tensor ranks) {
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu() && a.device().is_cpu() && bt.device().is_cpu() &&
              slots.device().is_cpu() && ranks.device().is_cpu(), "lora_apply_: CPU tensors only");
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous() && a.is_contiguous() && bt.is_contiguous() &&
              slots.is_contiguous() && ranks.is_contiguous(), "lora_apply_: contiguous tensors only");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "lora_apply_: x and y differ in dtype");
  TORCH_CHECK(a.scalar_type() == at::kFloat && bt.scalar_type() == at::kFloat, "lora_apply_: fp32 A and B only");
  TORCH_CHECK(slots.scalar_type() == at::kLong && ranks.scalar_type() == at::kInt,
              "lora_apply_: int64 slots and int32 ranks");
  TORCH_CHECK(a.dim() == 3 && bt.dim() == 3, "lora_apply_: A and B are [slots, rank, in] and [slots, rank, out]");
  const int64_t S = a.size(0), R = a.size(1), in = a.size(2), out = bt.size(2), n = slots.numel();
  TORCH_CHECK(bt.size(0) == S && bt.size(1) == R && ranks.numel() >= S, "lora_apply_: A, B and ranks do not match");
  TORCH_CHECK(n > 0 && x.numel() % (n * in) == 0, "lora_apply_: x is not rows of tokens of the layer's in features");
  const int64_t tokens = x.numel() / (n * in);
  TORCH_CHECK(y.numel() == n * tokens * out, "lora_apply_: y is not rows of tokens of the layer's out features");
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int32_t* rp = ranks.data_ptr<int32_t>();
  int64_t work = 0;  // multiply-adds, to decide how many threads the call is worth
  for (int64_t row = 0; row < n; ++row) {
    TORCH_CHECK(sp[row] >= 0 && sp[row] < S, "lora_apply_: slot ", sp[row], " out of range");
    TORCH_CHECK(rp[sp[row]] >= 0 && rp[sp[row]] <= R, "lora_apply_: rank ", rp[sp[row]], " out of range");
    work += rp[sp[row]];
  }
  if (work == 0) return;
  work *= tokens * (in + out);
  const int64_t items = n * tokens;  // (row, token) pairs, row-major as x and y hold them
  const int64_t grain = std::max<int64_t>(1, items * 32768 / work);  // ≥ ~32k multiply-adds per thread's chunk
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "lora_apply_", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const float* ap = a.data_ptr<float>();
    const float* bp = bt.data_ptr<float>();
    at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> xf(in), z(R > 0 ? R : 1);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t s = sp[item / tokens];
        const int64_t r = rp[s];
        if (r == 0) continue;
        lora_token<scalar_t>(xp + item * in, ap + s * R * in, bp + s * R * out, yp + item * out, in, r, out,
                             xf.data(), z.data());
      }
    });
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
    """The extension's name: changes with the source, torch's version, the CPU (``-march=native`` code
    built on one CPU may not run on another sharing the cache) and the Python environment (two venvs sharing
    the cache would otherwise rebuild it in turn: their torch headers live at different paths)."""
    import torch

    digest = hashlib.sha256("\0".join((SOURCE, torch.__version__, platform.machine(), _cpu_flags(),
                                        sys.prefix)).encode())
    return f"adapterhub_lora_{digest.hexdigest()[:16]}"


def _claim_build_directory(name: str) -> Any:
    """Hold an exclusive flock on the build directory while this process builds or loads the kernel, and
    remove torch's ``lock`` file if one is there. torch marks a build in progress with that file alone and
    waits for it to go away, forever; a process killed mid-build (a server stopped during its first start)
    leaves it behind, and every later start then waited in the background with the kernel never ready. The
    flock is released by the OS when its holder dies, so holding it proves no live process of ours is
    building: a ``lock`` file then is stale. Returns the open guard file (close it to release); None where
    flock does not exist."""
    try:
        import fcntl

        from torch.utils.cpp_extension import _get_build_directory  # private: a later torch may drop it
    except ImportError:  # not POSIX, or no such helper: torch's own lock file only, and the build still runs
        return None

    directory = _get_build_directory(name, False)
    os.makedirs(directory, exist_ok=True)
    guard = open(os.path.join(directory, "adapterhub-build.flock"), "a+")  # noqa: SIM115 - held across the build
    fcntl.flock(guard, fcntl.LOCK_EX)  # another process of ours building it: wait for it
    stale = os.path.join(directory, "lock")
    if os.path.exists(stale):
        log.warning("removing %s, left by a build that was interrupted", stale)
        os.remove(stale)
    return guard


def _build() -> None:
    global apply, state
    guard = None
    try:
        if sys.platform == "linux":
            # The compiler runs beside a serving process on a machine of few cores (a first start compiles
            # for ~30 s on 2): at the lowest priority it takes only idle time. Linux keeps the nice value per
            # thread, so this thread and the compiler it starts drop, not the server's own threads.
            os.nice(19)
        from torch.utils.cpp_extension import load_inline

        name = build_name()
        guard = _claim_build_directory(name)
        module = load_inline(
            name, cpp_sources=SOURCE, functions=["lora_apply_"],
            extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False,
        )
        apply = module.lora_apply_
        state = "ready"
        log.info("CPU LoRA kernel ready")
    except Exception as e:  # no compiler, no ninja, a build error: the bmm path serves, a little slower
        state = "failed"
        log.warning("the CPU LoRA kernel could not be built (%s); LoRA layers use torch.bmm",
                    str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
    finally:
        if guard is not None:
            guard.close()
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
    return apply is not None
