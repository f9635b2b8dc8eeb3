"""Which int8 candidate to ship: each is timed against the fp32 graph with ONNX Runtime on the CPU the export runs
on, interleaved in one process, on a validation slice of training images (never the test set that verify judges
on); the fastest whose accuracy on that slice stays within `MAX_ACCURACY_DROP` points of fp32 wins.

The sessions run one thread each: what differs between the candidates is per-core kernel work, and one thread
gives steady ratios on a machine that other work keeps busy, where two threads wait on each other.

Why measure rather than fix one answer: the candidates differ in the first convolution block and in padding.
That convolution's single input channel makes it a poor int8 GEMM (a reduction of 25 values per output, with a
requantization per output) and a good fp32 direct convolution; which of the two wins depends on the CPU's fp32 and
int8 units. Over space-to-depth blocks it reduces 36 values per output and pools with a uint8 Max, at the cost of
splitting its output into four phases. Padding the convolutions' output channels to whole blocks of 16 adds zero
filters (more work) so that ONNX Runtime's blocked fp32 layout spans the first pool and its int8 convolution takes
its faster path; whether that pays depends on the CPU's vector units. Everything else (no Transpose or
DequantizeLinear between the quantized ops) is the same in all of them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

MAX_ACCURACY_DROP = 0.3  # points of accuracy on the validation slice that an int8 candidate may lose to fp32
BATCH = 256  # images per timed call: the throughput-bound batch size where layout conversions show
WARMUP_CALLS = 2
PASSES = 2  # timed passes over the validation slice
THREADS = 1
SPEEDUP_DECIMALS = 3


@dataclass
class Measured:
    """One candidate's figures on the validation slice, against the fp32 graph's."""

    name: str
    speedup_vs_fp32: float  # median over the timed batches of fp32 time / candidate time, paired per batch
    accuracy: float
    fp32_accuracy: float

    @property
    def holds_accuracy(self) -> bool:
        return self.accuracy >= self.fp32_accuracy - MAX_ACCURACY_DROP


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = options.inter_op_num_threads = THREADS
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def measure(fp32: bytes, candidates: dict[str, bytes], images, labels) -> list[Measured]:
    """Time every candidate against `fp32` on `images` (float32 [N,1,28,28], N a multiple of BATCH is best),
    batch by batch in alternating order, and score each on `labels`."""
    import numpy as np

    names = ["fp32", *candidates]
    sessions = {"fp32": _session(fp32), **{n: _session(b) for n, b in candidates.items()}}
    input_name = sessions["fp32"].get_inputs()[0].name
    batches = [np.ascontiguousarray(images[i:i + BATCH]) for i in range(0, len(images), BATCH)]
    for session in sessions.values():
        for _ in range(WARMUP_CALLS):
            session.run(None, {input_name: batches[0]})
    seconds: dict[str, list[float]] = {n: [] for n in names}
    predicted: dict[str, list[Any]] = {n: [] for n in names}
    for k, batch in enumerate(batches * PASSES):
        for name in names if k % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            out = sessions[name].run(None, {input_name: batch})[0]
            seconds[name].append(time.perf_counter() - t0)
            if k < len(batches):
                predicted[name].append(out.argmax(1))

    def accuracy(name: str) -> float:
        return 100.0 * float((np.concatenate(predicted[name]) == labels).mean())

    base = accuracy("fp32")
    # rounded once, here: the manifest records this figure and the reason quotes it, so both show one number
    return [Measured(name, round(statistics.median(f / c for f, c in zip(seconds["fp32"], seconds[name])),
                                 SPEEDUP_DECIMALS), accuracy(name), base) for name in candidates]


def choose(measured: list[Measured]) -> tuple[Measured, str]:
    """The candidate to ship and why: the fastest that holds accuracy, else the most accurate."""
    holding = [m for m in measured if m.holds_accuracy]
    if holding:
        best = max(holding, key=lambda m: m.speedup_vs_fp32)
        others = ", ".join(f"{m.name} x{m.speedup_vs_fp32:.2f}" for m in measured if m is not best)
        return best, (f"fastest here that holds accuracy: x{best.speedup_vs_fp32:.2f} fp32 throughput on ONNX "
                      f"Runtime (CPU, {THREADS} thread, batch {BATCH}){f'; {others}' if others else ''}")
    best = max(measured, key=lambda m: (m.accuracy, m.speedup_vs_fp32))
    return best, (f"no candidate stayed within {MAX_ACCURACY_DROP} points of fp32 on the validation slice: "
                  f"the most accurate ({best.accuracy:.2f} vs {best.fp32_accuracy:.2f})")
