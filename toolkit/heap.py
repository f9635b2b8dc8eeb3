"""Keep freed memory in the process for reuse, so a training step does not page-fault on its own tensors.

Every step of a CPU training run allocates and frees the same few-megabyte activations and gradients (the
first convolution's output alone is 5.9 MB at batch 128). glibc serves blocks over its mmap threshold with
fresh mappings and returns them, and trims the heap top, so the next step touches new pages again:
thousands of page faults per step. Raising both thresholds once makes those blocks come from, and go back to,
the heap (benchmarks/train_memory.py measures the float32 step with and without).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems (4 * 1024 * 1024 * sizeof(long)); larger is refused
MMAP_THRESHOLD = 32 * 1024 * 1024
# freed memory at the heap top stays up to this size instead of going back to the system
TRIM_THRESHOLD = 1024 * 1024 * 1024

_kept = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for the rest of this process; True if they were set (or already
    were), False where the C library has no mallopt (not glibc) or refuses them. Idempotent."""
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept
