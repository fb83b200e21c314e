"""Process-level settings for CPU training: glibc's allocator and OpenMP's idle spin.

Both act on the whole process, so only entry points (the `metarl` command, benchmarks) call them.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Keep freed buffers in glibc's heap: without it every step's activations are mmap-ed, unmapped and
    page-faulted back in (~18 % of a CPU Omniglot run; `metarl bench omniglot-meta-step --no-mallopt`).
    Linux glibc only; returns whether both settings took."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


# libgomp's default: an idle OpenMP worker spins 300,000 rounds before it sleeps.
SHORT_OPENMP_SPIN = "3000"


def short_openmp_spin() -> bool:
    """Let torch's idle OpenMP workers sleep after a short spin (``GOMP_SPINCOUNT``) unless the user set it.

    Why: an A2C loop alternates torch compute with EnvPool stepping on the same cores. With libgomp's long
    default spin, the worker left spinning after each acting pass takes a core from EnvPool's threads, so
    env steps inside the loop run much slower than back to back; the short spin recovers most of that
    (`metarl bench a2c-throughput`, docs/RESULTS.md). Compute-only work showed no cost. libgomp reads the
    variable once, when torch loads it: returns False (and changes nothing) if torch is already imported.
    """
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("GOMP_SPINCOUNT", SHORT_OPENMP_SPIN)
    return True
