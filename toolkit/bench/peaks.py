"""This CPU's matrix-multiply peaks: the yardstick the efficiency targets divide a model's achieved rate by.

Measured through torch (MKL/oneDNN) and ONNX Runtime (MLAS): the best of a few sizes and repeats in either, so
the peak is what this machine reaches in practice rather than a datasheet figure for another one. One library
alone can understate it: torch's float32 matmul on an AMD CPU with full-width AVX-512 units runs an AVX2 kernel at
about half of what MLAS reaches there, and torch's int8 matmul on a CPU without VNNI is a generic loop.

Both libraries start one thread per physical core. Where this process may use more CPUs than that (two
hyperthreads a core), bench's concurrent configurations run on all of them, so the peak is also measured there
and the better count kept: the yardstick uses every CPU the configurations it divides may use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from toolkit import sysinfo

# a size whose one call takes longer than this is not worth growing past: a kernel that slow (torch's int8
# matmul on a CPU without VNNI) is nowhere near a peak, and each doubling of n costs 8 times more. A float32 call
# at n = 4096 is 137 GFLOP, well within this on any CPU fast enough to bench on: the sizes it needs stay.
SLOW_CALL_S = 5.0
SIZES = (1024, 2048, 2048, 4096)  # n of the n x n operands, in the order timed; the best rate of all is kept


def _best_rate(op: Callable[[Any, Any], Any], make: Callable[[int], tuple[Any, Any]]) -> float:
    """Best rate of `op(a, b)` on n x n operands, in 1e9 multiply-adds x 2 per second."""
    best = 0.0
    for n in SIZES:
        a, b = make(n)
        t0 = time.perf_counter()
        op(a, b)  # warm-up
        warmup_s = time.perf_counter() - t0
        if warmup_s > SLOW_CALL_S:
            return max(best, 2 * n ** 3 / warmup_s / 1e9)
        for _ in range(3 if n < 4096 else 2):
            t0 = time.perf_counter()
            op(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def thread_counts(threads: int | None = None) -> list[int]:
    """The thread counts a peak is measured at: `threads` where given (bench's --threads), else torch's own count
    and, where this process may use more CPUs than that, all of them."""
    import torch

    return [threads] if threads else sorted({torch.get_num_threads(), sysinfo.usable_cores()})


def _at_each(counts: list[int], rate: Callable[[int], float | None]) -> float | None:
    """The best of `rate(n)` over the thread counts, with torch's thread count set to n for each."""
    import torch

    before, best = torch.get_num_threads(), None
    try:
        for n in counts:
            torch.set_num_threads(n)
            found = rate(n)
            if found and (best is None or found > best):
                best = found
    finally:
        torch.set_num_threads(before)
    return best


def matmul_peak_gflops(dtype: Any = None, rates: dict[str, float] | None = None, threads: int | None = None,
                       ) -> float:
    """Best matrix-multiply rate of this CPU, in GFLOP/s, at `thread_counts(threads)`: float32 unless `dtype` (a
    torch dtype, e.g. torch.bfloat16) says. float32 is the better of torch (MKL/oneDNN) and ONNX Runtime's MatMul
    (MLAS); other dtypes are torch's alone. `rates`, where given, gets each library's rate."""
    import torch

    dtype = dtype or torch.float32
    counts = thread_counts(threads)
    found = {"torch": _at_each(counts, lambda n: _torch_rate(dtype))}
    if dtype == torch.float32:
        found["onnxruntime"] = _at_each(counts, lambda n: _ort_matmul_rate("float32", n))
    return _best_of(found, rates)


def _best_of(found: dict[str, float | None], rates: dict[str, float] | None) -> Any:
    found = {name: rate for name, rate in found.items() if rate}
    if rates is not None:
        rates.update(found)
    return max(found.values()) if found else None


def _torch_rate(dtype: Any) -> float:
    import torch

    return _best_rate(lambda a, b: a @ b, lambda n: (torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)))


def int8_matmul_peak_gops(rates: dict[str, float] | None = None, threads: int | None = None) -> float | None:
    """The same measurement for int8 x int8 -> int32, in GOP/s: the better of torch._int_mm (oneDNN) and ONNX
    Runtime's MatMulInteger (u8 x s8, MLAS). Both use VNNI where the CPU has it; without VNNI torch's falls back
    to a generic kernel orders of magnitude slower than ONNX Runtime's, so torch alone would understate the
    peak there. None where neither library runs; `rates`, where given, gets each library's rate."""
    counts = thread_counts(threads)
    return _best_of({"torch": _at_each(counts, lambda n: _torch_int8_rate()),
                     "onnxruntime": _at_each(counts, lambda n: _ort_matmul_rate("int8", n))}, rates)


def _torch_int8_rate() -> float | None:
    import torch

    if not hasattr(torch, "_int_mm"):
        return None

    def make(n: int) -> tuple[Any, Any]:
        return (torch.randint(-128, 128, (n, n), dtype=torch.int8), torch.randint(-128, 128, (n, n), dtype=torch.int8))
    try:
        return _best_rate(torch._int_mm, make)
    except RuntimeError:  # no CPU kernel in this build
        return None


def _ort_matmul_rate(kind: str, threads: int | None = None) -> float | None:
    """ONNX Runtime's best matmul rate on the CPU, float32 (MatMul) or int8 (MatMulInteger, u8 x s8), in a
    session made as the toolkit makes its own (runners.onnxruntime.create_session: on the CPUs this process may
    use), on `threads` threads (None: the toolkit's default); None without ONNX Runtime."""
    try:
        from onnx import TensorProto, helper

        from toolkit.runners.onnxruntime import create_session
    except ImportError:
        return None
    import numpy as np

    rng = np.random.default_rng(0)
    if kind == "int8":
        op, types = "MatMulInteger", (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)

        def make(n: int) -> tuple[Any, Any]:
            return (rng.integers(0, 256, (n, n), dtype=np.uint8), rng.integers(-128, 128, (n, n), dtype=np.int8))
    else:
        op, types = "MatMul", (TensorProto.FLOAT,) * 3

        def make(n: int) -> tuple[Any, Any]:
            return (rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32))

    def value(name: str, kind: int) -> Any:
        return helper.make_tensor_value_info(name, kind, ["n", "n"])
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], f"{kind}_matmul",
                              [value("a", types[0]), value("b", types[1])], [value("y", types[2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = create_session(model.SerializeToString(), threads=threads, label=f"the {kind} matmul probe")
    return _best_rate(lambda a, b: session.run(None, {"a": a, "b": b}), make)
