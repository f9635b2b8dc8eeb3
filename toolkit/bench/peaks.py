"""This CPU's matrix-multiply peaks: the yardstick the efficiency targets divide a model's achieved rate by.

Measured through torch (MKL/oneDNN), the best of a few sizes and repeats, so the peak is what this machine
reaches in practice rather than a datasheet figure for another one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def _best_rate(op: Callable[[Any, Any], Any], make: Callable[[int], tuple[Any, Any]]) -> float:
    """Best rate of `op(a, b)` on n x n operands, in 1e9 multiply-adds x 2 per second."""
    best = 0.0
    for n in (1024, 2048, 2048, 4096):
        a, b = make(n)
        op(a, b)  # warm-up
        for _ in range(3 if n < 4096 else 2):
            t0 = time.perf_counter()
            op(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def matmul_peak_gflops(dtype: Any = None) -> float:
    """Best matrix-multiply rate of this CPU through torch (MKL/oneDNN), in GFLOP/s, on torch's current thread
    count (bench sets it from --threads); float32 unless `dtype` (a torch dtype, e.g. torch.bfloat16) says."""
    import torch

    dtype = dtype or torch.float32
    return _best_rate(lambda a, b: a @ b, lambda n: (torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)))


def int8_matmul_peak_gops() -> float | None:
    """The same measurement for int8 x int8 -> int32 (torch._int_mm: oneDNN, VNNI where the CPU has it), in
    GOP/s; None where this torch has no CPU int8 matmul."""
    import torch

    if not hasattr(torch, "_int_mm"):
        return None

    def make(n: int) -> tuple[Any, Any]:
        return (torch.randint(-128, 128, (n, n), dtype=torch.int8), torch.randint(-128, 128, (n, n), dtype=torch.int8))
    try:
        return _best_rate(torch._int_mm, make)
    except RuntimeError:  # no CPU kernel in this build
        return None
