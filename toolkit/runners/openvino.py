"""OpenVINO on the CPU, reading the .onnx directly: f32 for parity, bf16 as its own compute mode."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from toolkit import formats
from toolkit.artifacts import Artifact, read_verified
from toolkit.runners.base import Runner, RunnerOptions, Timed, check_kind, load_error

HINTS = ("latency", "throughput")  # OpenVINO's performance hints
RUNTIME = "openvino"


def compile_onnx(data: bytes, options: RunnerOptions, label: str) -> Any:
    """The .onnx bytes compiled for the CPU with the options' compute mode, hint and threads."""
    import openvino as ov

    core = ov.Core()
    props: dict[str, Any] = {"PERFORMANCE_HINT": options.hint.upper(), "INFERENCE_PRECISION_HINT": options.mode}
    if options.threads:
        props["INFERENCE_NUM_THREADS"] = options.threads
    try:
        return core.compile_model(core.read_model(model=io.BytesIO(data)), "CPU", props)
    except Exception as e:  # OpenVINO raises RuntimeError (and others) for what it cannot read or compile
        raise load_error(label, RUNTIME, e) from None


def input_kind(compiled: Any) -> str:
    element = str(compiled.inputs[0].get_element_type())
    return formats.APP if "u8" in element or "uint8" in element else formats.NORMALIZED


class OpenVinoRunner(Runner):
    """A compiled OpenVINO model and one infer request."""

    runtime = RUNTIME

    def __init__(self, compiled: Any, label: str, options: RunnerOptions) -> None:
        super().__init__(label, input_kind(compiled), options)
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def settings(self) -> dict[str, Any]:
        return {"device": "cpu", "inference_precision": self.options.mode,
                "performance_hint": self.options.hint, "threads": self.options.threads,
                "infer_requests": self.in_flight}

    @property
    def in_flight(self) -> int:
        """Requests kept in flight when timing: OpenVINO's optimal number with the throughput hint, else 1."""
        if self.options.hint != "throughput":
            return 1
        return max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def _cancel(self) -> bool:
        self.request.cancel()  # stops a queued request; a running one may finish its node first
        return True

    def _infer(self, native: Any) -> list[Any]:
        result = self.request.infer([native])
        return [result[out] for out in self.compiled.outputs]

    def timed(self, batches: list[np.ndarray], io: str = "host") -> Timed:
        if self.options.hint != "throughput":
            return super().timed(batches, io)
        import openvino as ov

        inputs = [self._feed(b) for b in batches]
        n = self.in_flight
        queue = ov.AsyncInferQueue(self.compiled, n)

        def run_queue(i: int) -> None:  # one call: n batches in flight at once, then wait for all
            for k in range(n):
                queue.start_async([inputs[(i * n + k) % len(inputs)]])
            queue.wait_all()
        return Timed(run_queue, batches_per_call=n)


def open_artifact(artifact: Artifact, options: RunnerOptions) -> OpenVinoRunner:
    compiled = compile_onnx(read_verified(artifact), options, artifact.file)
    check_kind(artifact.file, artifact.format, input_kind(compiled))
    return OpenVinoRunner(compiled, artifact.file, options)
