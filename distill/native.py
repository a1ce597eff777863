"""C++ kernels compiled on first use, for passes torch runs as several (distill/bf16_step.py, distill/dropout.py).

Each kernel is built with `torch.utils.cpp_extension` (a C++ compiler and ninja) once per CPU type, torch version
and source into torch's extension folder ($TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions), under a lock the
operating system releases when its holder dies: torch's own build lock is a file that a worker killed mid-build
would leave behind, and every later load would wait on it forever. Where a kernel cannot be built, `load_kernel`
warns once and returns None, and its caller computes the same thing with torch operations.
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

# bf16 as raw 16-bit words, for kernels that read and write torch's bf16 tensors element by element.
BF16_HELPERS = r"""
#include <cstring>
static inline float from_bf16(uint16_t h) { uint32_t b = uint32_t(h) << 16; float f; std::memcpy(&f, &b, 4); return f; }

// Round to nearest even, as torch's cast does for finite values; a NaN stays a NaN (quiet bit set).
static inline uint16_t to_bf16(float f) {
  uint32_t b; std::memcpy(&b, &f, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return uint16_t((b >> 16) | 0x40u);
  return uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
"""

_FLAGS = ["-O3", "-march=native", "-fopenmp"]


@functools.cache
def load_kernel(name: str, source: str, functions: tuple[str, ...], without: str) -> ModuleType | None:
    """The compiled extension `name` of C++ `source` exporting `functions`, or None (after one warning that names
    what happens `without` it) where it cannot be built: no compiler, no ninja."""
    library_name = f"distillery_{name}_{_build_key(source)}"
    try:
        cpp_extension = _cpp_extension()
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()  # as torch's builds
        library = Path(root) / "distillery" / f"{library_name}.so"
        if not library.exists():
            _build(cpp_extension, library_name, source, functions, library)
        spec = importlib.util.spec_from_file_location(library_name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except Exception as error:  # noqa: BLE001 (a missing compiler surfaces as many kinds of error)
        log.warning("the %s could not be built (%s); %s", name.replace("_", " "),
                    str(error).splitlines()[0] if str(error) else type(error).__name__, without)
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


def _build(cpp_extension, name: str, source: str, functions: tuple[str, ...], library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    with open(library.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if library.exists():  # built by another process while this one waited
            return
        with tempfile.TemporaryDirectory(dir=library.parent) as folder:
            cpp_extension.load_inline(name, cpp_sources=source, functions=list(functions), extra_cflags=_FLAGS,
                                      extra_ldflags=["-fopenmp"], build_directory=folder)
            os.replace(Path(folder) / f"{name}.so", library)  # whole or absent, never half-written


def _build_key(source: str) -> str:
    """-march=native builds for this CPU only: the key carries its instruction sets (a cache folder shared by a
    cluster's different hosts must not hand one host's build to another), torch's version (its ABI) and the
    source."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "") \
        if cpuinfo.exists() else ""
    identity = "\n".join([platform.machine(), flags, torch.__version__, " ".join(_FLAGS), source])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]
