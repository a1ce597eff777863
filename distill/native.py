"""C++ kernels for passes torch runs as several, or slowly: the fused bf16 update (`sgd_step`) and a linear layer's
transposed gradient (`transpose_bf16`), used by distill/bf16_step.py; the random shifts
of augmentation (`shift_images`, distill/data.py); the dropout masks (`dropout_mask_scale`, distill/dropout.py).
Those modules also say what each computes.

They are one extension, built with `torch.utils.cpp_extension` (a C++ compiler and ninja) on first use, once per
CPU type, torch version and source, into torch's extension folder ($TORCH_EXTENSIONS_DIR, else
~/.cache/torch_extensions): one build, because compiling torch's headers takes most of its half minute. The build
runs under a lock the operating system releases when its holder dies: torch's own build lock is a file that a
worker killed mid-build would leave behind, and every later load would wait on it forever. Where the build fails,
`kernels()` warns once and returns None, and the callers compute the same things with torch operations.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import tempfile
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

_SOURCE = r"""
// bf16 as raw 16-bit words: the kernels read and write torch's bf16 tensors element by element.
#include <algorithm>
#include <cstring>
static inline float from_bf16(uint16_t h) { uint32_t b = uint32_t(h) << 16; float f; std::memcpy(&f, &b, 4); return f; }

// Round to nearest even, as torch's cast does for finite values; a NaN stays a NaN (quiet bit set).
static inline uint16_t to_bf16(float f) {
  uint32_t b; std::memcpy(&b, &f, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40u);
  return uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// ---- The fused SGD update of distill/bf16_step.py ----
#include <cmath>

// One row: d = s g + decay w (s: the step's gradient scale, below 1 where gradients are clipped); m = d (first
// step) or mu m + d; w -= lr (d + mu m) with Nesterov, lr m without; a row whose norm exceeds cap > 0 is scaled to
// cap / (norm + 1e-7) of itself (torch.renorm); copy = bf16(w). The choices are template arguments: as runtime
// selects inside the loop they made it four times slower.
template <bool First, bool Nesterov, bool Decay>
static void sgd_row(float* __restrict w, float* __restrict m, const uint16_t* __restrict g, uint16_t* __restrict c,
                    int64_t n, float lr, float mu, float decay, float cap, float scale) {
  float squares = 0.f;
  #pragma omp simd reduction(+:squares)
  for (int64_t k = 0; k < n; ++k) {
    const float gk = from_bf16(g[k]) * scale;  // exact where scale is 1
    const float d = Decay ? gk + decay * w[k] : gk;  // as torch: no 0 * inf
    const float mk = First ? d : mu * m[k] + d;
    m[k] = mk;
    const float wk = w[k] - lr * (Nesterov ? d + mu * mk : mk);
    w[k] = wk;
    squares += wk * wk;
  }
  const float norm = std::sqrt(squares);
  if (cap > 0.f && norm > cap) {
    const float shrink = cap / (norm + 1e-7f);
    #pragma omp simd
    for (int64_t k = 0; k < n; ++k) w[k] *= shrink;
  }
  #pragma omp simd
  for (int64_t k = 0; k < n; ++k) c[k] = to_bf16(w[k]);
}

template <bool First, bool Nesterov, bool Decay>
static void sgd_rows(float* w, float* m, const uint16_t* g, uint16_t* c, int64_t rows, int64_t cols, float lr,
                     float mu, float decay, float cap, float scale) {
  at::parallel_for(0, rows, 1, [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      sgd_row<First, Nesterov, Decay>(w + r * cols, m + r * cols, g + r * cols, c + r * cols, cols, lr, mu, decay,
                                      cap, scale);
    }
  });
}

// One SGD step on an fp32 weight from its gradient times grad_scale, its rows capped at max_norm when > 0 (a weight
// of fewer than 2 dimensions is one row).
void sgd_step(torch::Tensor weight, torch::Tensor momentum, torch::Tensor grad, torch::Tensor copy, double lr,
              double mu, bool nesterov, double decay, double max_norm, bool first, double grad_scale) {
  for (const auto& t : {weight, momentum, grad, copy}) {
    TORCH_CHECK(t.is_contiguous() && t.numel() == weight.numel(), "sgd_step: tensors must be contiguous, one shape");
  }
  TORCH_CHECK(weight.scalar_type() == at::kFloat && momentum.scalar_type() == at::kFloat &&
              grad.scalar_type() == at::kBFloat16 && copy.scalar_type() == at::kBFloat16, "sgd_step: dtypes");
  const int64_t rows = weight.dim() < 2 ? 1 : weight.size(0);
  const int64_t cols = weight.numel() / rows;
  float* w = weight.data_ptr<float>();
  float* m = momentum.data_ptr<float>();
  const uint16_t* g = reinterpret_cast<const uint16_t*>(grad.data_ptr<at::BFloat16>());
  uint16_t* c = reinterpret_cast<uint16_t*>(copy.data_ptr<at::BFloat16>());
  const float args[] = {float(lr), float(mu), float(decay), float(max_norm), float(grad_scale)};
  const int variant = (first ? 4 : 0) + (nesterov ? 2 : 0) + (decay != 0.0 ? 1 : 0);
  switch (variant) {
    case 0: sgd_rows<false, false, false>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3], args[4]); break;
    case 1: sgd_rows<false, false, true>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3], args[4]); break;
    case 2: sgd_rows<false, true, false>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3], args[4]); break;
    case 3: sgd_rows<false, true, true>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3], args[4]); break;
    case 4: sgd_rows<true, false, false>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3], args[4]); break;
    case 5: sgd_rows<true, false, true>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3], args[4]); break;
    case 6: sgd_rows<true, true, false>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3], args[4]); break;
    default: sgd_rows<true, true, true>(w, m, g, c, rows, cols, args[0], args[1], args[2], args[3], args[4]); break;
  }
}

// ---- The transposed gradient of distill/bf16_step.py ----
// x^T laid out contiguously. torch.mm runs a weight's gradient grad^T @ input twice as slowly on the transposed view
// as on grad^T copied out, and torch's own transposing copy is as slow as the difference: a tiled copy of 16-bit
// words here.
torch::Tensor transpose_bf16(torch::Tensor x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kBFloat16, "transpose_bf16: a contiguous "
              "2-d bf16 tensor");
  const int64_t rows = x.size(0), cols = x.size(1);
  auto y = torch::empty({cols, rows}, x.options());
  const uint16_t* a = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  uint16_t* b = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
  constexpr int64_t tile = 32;
  at::parallel_for(0, (cols + tile - 1) / tile, 1, [=](int64_t begin, int64_t end) {
    for (int64_t c0 = begin * tile; c0 < std::min(cols, end * tile); c0 += tile) {
      const int64_t c1 = std::min(cols, c0 + tile);
      for (int64_t r0 = 0; r0 < rows; r0 += tile) {
        const int64_t r1 = std::min(rows, r0 + tile);
        for (int64_t c = c0; c < c1; ++c) {
          for (int64_t r = r0; r < r1; ++r) b[c * rows + r] = a[r * cols + c];
        }
      }
    }
  });
  return y;
}

// ---- The random shifts of distill/data.py ----
// Image i moved by offsets[0][i] - shift rows and offsets[1][i] - shift columns, zeros where it moved in from
// outside: the gather of translate_batch on a zero-padded copy, done here row segment by row segment, for any
// element type (it only moves bytes; the zero bytes are +0.0).
torch::Tensor shift_images(torch::Tensor images, torch::Tensor offsets, int64_t shift) {
  TORCH_CHECK(images.dim() == 4 && images.is_contiguous() && images.device().is_cpu(), "shift_images: a "
              "contiguous N x C x H x W CPU tensor");
  TORCH_CHECK(offsets.dim() == 2 && offsets.size(0) == 2 && offsets.size(1) == images.size(0) &&
              offsets.scalar_type() == at::kLong && offsets.is_contiguous(), "shift_images: offsets (2, N) int64");
  const int64_t n = images.size(0), planes = images.size(1), h = images.size(2), w = images.size(3);
  const int64_t bytes = images.element_size();
  auto out = torch::empty_like(images);
  const char* src = static_cast<const char*>(images.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t* off = offsets.data_ptr<int64_t>();
  at::parallel_for(0, n, 16, [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t dy = off[i] - shift, dx = off[n + i] - shift;  // output (y, x) reads (y + dy, x + dx)
      const int64_t x0 = std::clamp<int64_t>(-dx, 0, w), x1 = std::clamp<int64_t>(w - dx, x0, w);
      for (int64_t plane = i * planes; plane < (i + 1) * planes; ++plane) {
        for (int64_t y = 0; y < h; ++y) {
          char* row = dst + (plane * h + y) * w * bytes;
          const int64_t from = y + dy;
          if (from < 0 || from >= h) {
            std::memset(row, 0, w * bytes);
            continue;
          }
          std::memset(row, 0, x0 * bytes);
          if (x1 > x0) {  // else the source column would lie outside the image: nothing to copy
            std::memcpy(row + x0 * bytes, src + ((plane * h + from) * w + x0 + dx) * bytes, (x1 - x0) * bytes);
          }
          std::memset(row + x1 * bytes, 0, (w - x1) * bytes);
        }
      }
    }
  });
  return out;
}

// ---- The dropout masks of distill/dropout.py ----
#include <type_traits>

static constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;

// SplitMix64's output function: word j of stream `seed` is mix(seed + (j + 1) * kGamma).
static inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Words counter..counter+255 of stream `seed`.
static void block_words(uint64_t* __restrict words, uint64_t seed, uint64_t counter) {
  #pragma omp simd
  for (int64_t j = 0; j < 256; ++j) words[j] = mix(seed + (counter + uint64_t(j)) * kGamma);
}

// y = x * (uniform >= threshold ? scale : 0), rounded to T as torch's multiplication rounds it.
template <typename T>
static void block_product(const T* __restrict x, T* __restrict y, const int16_t* __restrict uniform, int64_t count,
                          int32_t threshold, float scale) {
  #pragma omp simd
  for (int64_t k = 0; k < count; ++k) {
    const float m = uniform[k] >= threshold ? scale : 0.f;
    if constexpr (std::is_same_v<T, float>) y[k] = x[k] * m; else y[k] = to_bf16(from_bf16(x[k]) * m);
  }
}

// Blocks of 1,024 elements: their 256 words, then their products; element 4j + k takes bits 16k.. of word j.
template <typename T>
static void masked_scale(const T* x, T* y, int64_t n, uint64_t seed, int32_t threshold, float scale) {
  at::parallel_for(0, (n + 1023) / 1024, 16, [=](int64_t begin, int64_t end) {
    alignas(64) uint64_t words[256];
    alignas(64) int16_t uniform[1024];
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * 1024;
      block_words(words, seed, uint64_t(first / 4) + 1);
      std::memcpy(uniform, words, sizeof(words));  // the 16-bit view, without breaking the aliasing rules
      block_product(x + first, y + first, uniform, std::min<int64_t>(1024, n - first), threshold, scale);
    }
  });
}

torch::Tensor dropout_mask_scale(torch::Tensor x, int64_t seed, int64_t threshold, double scale) {
  TORCH_CHECK(x.is_contiguous() && x.device().is_cpu(), "dropout_mask_scale: a contiguous CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "dropout_mask_scale: dtype");
  auto y = torch::empty_like(x);
  if (x.scalar_type() == at::kBFloat16) {
    masked_scale(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
                 reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), x.numel(), uint64_t(seed),
                 int32_t(threshold), float(scale));
  } else {
    masked_scale(x.data_ptr<float>(), y.data_ptr<float>(), x.numel(), uint64_t(seed), int32_t(threshold),
                 float(scale));
  }
  return y;
}
"""

_FUNCTIONS = ["sgd_step", "transpose_bf16", "shift_images", "dropout_mask_scale"]
_FLAGS = ["-O3", "-march=native", "-fopenmp"]


@functools.cache
def kernels() -> ModuleType | None:
    """The compiled kernels, or None (after one warning) where they cannot be built: no compiler, no ninja."""
    name = f"distillery_kernels_{_build_key()}"
    try:
        cpp_extension = _cpp_extension()
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()  # as torch's builds
        library = Path(root) / "distillery" / f"{name}.so"
        if not library.exists():
            _build(cpp_extension, name, library)
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except Exception as error:  # noqa: BLE001 (a missing compiler surfaces as many kinds of error)
        log.warning("the C++ kernels could not be built (%s); bf16 training uses torch.autocast, and dropout masks "
                    "and shifted images come from torch operations (the same values, more slowly)",
                    str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None


def _cpp_extension():
    # Its import warns about CUDA_HOME on machines without CUDA: noise on a user's terminal, and the one-line
    # errors of the command line must stay one line.
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension
    finally:
        cpp_log.setLevel(level)
    return torch.utils.cpp_extension


def _build(cpp_extension, name: str, library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    with open(library.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if library.exists():  # built by another process while this one waited
            return
        with tempfile.TemporaryDirectory(dir=library.parent) as folder:
            cpp_extension.load_inline(name, cpp_sources=_SOURCE, functions=_FUNCTIONS, extra_cflags=_FLAGS,
                                      extra_ldflags=["-fopenmp"], build_directory=folder)
            os.replace(Path(folder) / f"{name}.so", library)  # whole or absent, never half-written


def _build_key() -> str:
    """-march=native builds for this CPU only: the key carries its instruction sets (a cache folder shared by a
    cluster's different hosts must not hand one host's build to another), torch's version (its ABI) and the
    source."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "") \
        if cpuinfo.exists() else ""
    identity = "\n".join([platform.machine(), flags, torch.__version__, " ".join(_FLAGS), _SOURCE])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]
