"""OpenVINO on the CPU, reading the .onnx directly or its own IR (.xml + .bin): f32 for parity, bf16 as its own
compute mode.

Both are loaded from hash-checked bytes: the IR's graph and weights are each checked against the manifest and
handed to OpenVINO from memory, so nothing is read from disk after hashing. Torch-free.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from toolkit import formats
from toolkit.artifacts import Artifact, read_verified, read_verified_parts
from toolkit.errors import ArtifactError
from toolkit.metadata import read_normalization
from toolkit.model_files import read_model_bundle
from toolkit.runners.base import Runner, RunnerOptions, Timed, check_kind, load_error

HINTS = ("latency", "throughput")  # OpenVINO's performance hints
RUNTIME = "openvino"
IR = "openvino"  # the format of the toolkit's IR files (formats.FORMATS)
RT_INFO_KEY = "toolkit"  # the rt_info section export writes the metadata into


def read_onnx(data: bytes, label: str) -> Any:
    """An ov.Model from .onnx bytes."""
    import openvino as ov

    try:
        return ov.Core().read_model(model=io.BytesIO(data))
    except Exception as e:  # OpenVINO raises RuntimeError (and others) for what it cannot read
        raise load_error(label, RUNTIME, e) from None


def read_ir(xml: bytes, weights: bytes, label: str) -> Any:
    """An ov.Model from the IR's .xml bytes and its .bin bytes, both already in memory."""
    import openvino as ov

    try:
        return ov.Core().read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, np.uint8).copy()))
    except Exception as e:
        raise load_error(label, RUNTIME, e) from None


def ir_metadata(model: Any) -> dict[str, str]:
    """The toolkit metadata an IR carries in its rt_info ({} when it has none)."""
    try:
        section = model.get_rt_info()[RT_INFO_KEY]
        return {str(k): section[k].astype(str) for k in section}
    except Exception:  # no such section, or not a map of texts: not a toolkit IR
        return {}


def toolkit_normalization(model: Any, label: str) -> tuple[float, float]:
    """(mean, std) of a toolkit IR, from its rt_info (checked like every file's metadata, see metadata.py);
    ArtifactError when it is not one or its metadata is not sane."""
    meta = ir_metadata(model)
    if "toolkit.format_version" not in meta:
        raise ArtifactError(f"{label} is not a toolkit model (no toolkit rt_info); export one with `toolkit export`")
    norm = read_normalization(meta, label)
    return norm.mean, norm.std


def compile_model(model: Any, options: RunnerOptions, label: str) -> Any:
    """An ov.Model compiled for the CPU with the options' compute mode, hint and threads."""
    import openvino as ov

    props: dict[str, Any] = {"PERFORMANCE_HINT": options.hint.upper(), "INFERENCE_PRECISION_HINT": options.mode}
    if options.threads:
        props["INFERENCE_NUM_THREADS"] = options.threads
    try:
        return ov.Core().compile_model(model, "CPU", props)
    except Exception as e:  # OpenVINO raises RuntimeError (and others) for what it cannot compile
        raise load_error(label, RUNTIME, e) from None


def compile_onnx(data: bytes, options: RunnerOptions, label: str) -> Any:
    """The .onnx bytes compiled for the CPU with the options' compute mode, hint and threads."""
    return compile_model(read_onnx(data, label), options, label)


def input_kind(compiled: Any) -> str:
    element = str(compiled.inputs[0].get_element_type())
    return formats.APP if "u8" in element or "uint8" in element else formats.NORMALIZED


class OpenVinoRunner(Runner):
    """A compiled OpenVINO model and one infer request."""

    runtime = RUNTIME

    def __init__(self, compiled: Any, label: str, options: RunnerOptions,
                 normalization: tuple[float, float] | None = None, metadata: dict[str, str] | None = None) -> None:
        super().__init__(label, input_kind(compiled), options)
        if normalization is not None:
            self.mean, self.std = normalization
        self.metadata = metadata or {}
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def settings(self) -> dict[str, Any]:
        return {"device": "cpu", "inference_precision": self.computed_mode,
                "performance_hint": self.options.hint, "threads": self.options.threads,
                "infer_requests": self.in_flight}

    @property
    def computed_mode(self) -> str:
        """The precision OpenVINO compiled the model for, read back (f32 where this CPU cannot do the mode asked)."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    @property
    def in_flight(self) -> int:
        """Requests kept in flight when timing: requests_in_flight with the throughput hint, else 1."""
        return requests_in_flight(self.compiled) if self.options.hint == "throughput" else 1

    def _cancel(self) -> bool:
        self.request.cancel()  # stops a queued request; a running one may finish its node first
        return True

    def _infer(self, native: Any) -> list[Any]:
        result = self.request.infer([native])
        return [result[out] for out in self.compiled.outputs]

    def timed(self, batches: list[np.ndarray], io: str = "host") -> Timed:
        if self.options.hint != "throughput":
            return super().timed(batches, io)
        return timed_in_flight(self.compiled, [[self._feed(b)] for b in batches], optimal_requests(self.compiled))


def optimal_requests(compiled: Any) -> int:
    """OpenVINO's optimal number of requests in flight for a model compiled with the throughput hint."""
    return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))


# requests queued per optimal one: when a stream finishes a batch, the next is already waiting for it
# (benchmarks/openvino_requests.py measures the depths)
QUEUE_DEPTH = 2


def requests_in_flight(compiled: Any) -> int:
    """How many requests bench keeps in flight with the throughput hint."""
    return QUEUE_DEPTH * optimal_requests(compiled)


def timed_in_flight(compiled: Any, inputs: list[Any], n: int, depth: int = QUEUE_DEPTH) -> Timed:
    """A loop body for bench that keeps a queue of `depth` times `n` OpenVINO requests fed, as its throughput
    hint expects: each call starts `n` of the converted `inputs` and returns (a start waits for a free request),
    and `drain` waits for those still running."""
    import openvino as ov

    queue = ov.AsyncInferQueue(compiled, depth * n)

    def run_queue(i: int) -> None:
        for k in range(n):
            queue.start_async(inputs[(i * n + k) % len(inputs)])
    return Timed(run_queue, batches_per_call=n, drain=queue.wait_all)


def open_artifact(artifact: Artifact, options: RunnerOptions) -> OpenVinoRunner:
    """A manifest artifact (.onnx, or IR with its .bin part), from its hash-checked bytes."""
    data = read_verified(artifact)
    if artifact.format != IR:
        compiled = compile_onnx(data, options, artifact.file)
        check_kind(artifact.file, artifact.format, input_kind(compiled))
        return OpenVinoRunner(compiled, artifact.file, options)
    (weights,) = read_verified_parts(artifact)  # read_manifest made sure the entry lists exactly the .bin
    return _ir_runner(read_ir(data, weights, artifact.file), artifact.file, options, artifact.format)


def open_file(path: str, options: RunnerOptions) -> OpenVinoRunner:
    """A toolkit IR from its .xml path, its .bin beside it (both checked against a manifest there, if any)."""
    xml, parts = read_model_bundle(path)
    if len(parts) != 1:
        raise ArtifactError(f"{path}: an OpenVINO IR needs its .bin weights beside it")
    return _ir_runner(read_ir(xml, parts[0], path), path, options, IR)


def _ir_runner(model: Any, label: str, options: RunnerOptions, declared_format: str) -> OpenVinoRunner:
    normalization = toolkit_normalization(model, label)
    compiled = compile_model(model, options, label)
    check_kind(label, declared_format, input_kind(compiled))
    return OpenVinoRunner(compiled, label, options, normalization, ir_metadata(model))
