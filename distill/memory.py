"""Memory: how much this machine has (to refuse, in one line, a model or data set that cannot fit), and keeping
freed heap memory in the training process instead of handing it back to the operating system.

A CPU training step allocates and frees the same few megabytes every batch (activations, gradients: 5 MB for
the 800-800 student). glibc's malloc returns such blocks to the kernel (mmap for large blocks, trimming the top
of the heap), so the next step takes a page fault on every fresh 4 KiB page: hundreds to thousands of faults per
step, about a tenth of an 800-800 step's time on this project's 2-core machine. Raising glibc's two thresholds
keeps those blocks in the heap for reuse; blocks of 32 MiB and more (data sets) are still mapped and unmapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

from distill.errors import ConfigError

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its adaptive threshold on 64-bit systems
TRIM_THRESHOLD = 256 << 20  # at most this much freed memory is kept at the top of the heap

_retained = False


def check_fits(needed_bytes: int, what: str) -> None:
    """Refuse `what` when it needs more than this machine's physical memory: it would fail in the allocator, with a
    stack trace, or page for hours."""
    total = physical_memory()
    if needed_bytes > total:
        raise ConfigError(f"{what} needs about {needed_bytes / 2**30:,.1f} GiB, more than this machine's "
                          f"{total / 2**30:,.1f} GiB")


def physical_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def retain_freed_memory() -> bool:
    """Set glibc's malloc thresholds for a training process (once per process). Returns whether they are set:
    False where the C library is not glibc, which then keeps its own behaviour."""
    global _retained
    if not _retained:
        mallopt = getattr(_libc(), "mallopt", None)
        _retained = bool(mallopt and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                         and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        if not _retained:
            log.debug("malloc thresholds left as they are (no glibc mallopt)")
    return _retained


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None
