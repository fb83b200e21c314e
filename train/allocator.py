"""glibc allocator settings for CPU training."""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Keep freed buffers in glibc's heap: without it every step's activations are mmap-ed, unmapped and
    page-faulted back in (~18 % of a CPU Omniglot run; `metarl bench omniglot-meta-step --mallopt`).
    Linux glibc only; returns whether both settings took."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False
