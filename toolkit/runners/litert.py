"""LiteRT (TensorFlow Lite's interpreter, `ai-edge-litert`) on the CPU, running the .tflite files.

Torch-free. The file's batch is fixed (see toolkit/exporters/tflite.py): any number of images is fed that many
at a time, the last call padded with zeros whose rows are dropped. An int8 file takes and returns int8 tensors;
their scale and zero point, read from the file, convert to and from float32 here.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from toolkit import formats, native_logs
from toolkit.artifacts import META_KEY, Artifact, read_verified
from toolkit.errors import ArtifactError
from toolkit.metadata import Normalization, json_object, read_normalization
from toolkit.refinputs import declares_own_input
from toolkit.runners.base import Runner, RunnerOptions, load_error

RUNTIME = "litert"


def read_metadata(data: bytes, label: str) -> dict[str, str]:
    """The toolkit metadata stored in a .tflite flatbuffer (its META_KEY metadata entry)."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAs(data, 0)
        entries = [model.Metadata(i) for i in range(model.MetadataLength())]
        entry = next((e for e in entries if e.Name() == META_KEY.encode()), None)
        if entry is not None:
            metadata = json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8"))
    except Exception as e:  # a damaged flatbuffer raises struct/index/unicode errors
        raise load_error(label, RUNTIME, e) from None
    if entry is None:
        raise ArtifactError(f"{label} is not a toolkit model (no {META_KEY} metadata); "
                            "export one with `toolkit export`")
    return json_object(metadata, label, f"{META_KEY} metadata")


def check_graph(data: bytes, label: str) -> None:
    """Refuse what LiteRT's interpreter crashes the process on instead of reporting (a flatbuffer without a
    graph, tensor indices out of range): a toolkit .tflite is one graph of one input and at least one output."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAs(data, 0)
        graphs = [model.Subgraphs(i) for i in range(model.SubgraphsLength())]
        ends = [] if len(graphs) != 1 else [*graphs[0].InputsAsNumpy(), *graphs[0].OutputsAsNumpy()]
        ok = (len(graphs) == 1 and graphs[0].InputsLength() == 1 and graphs[0].OutputsLength() >= 1
              and all(0 <= int(t) < graphs[0].TensorsLength() for t in ends))
    except Exception as e:  # a damaged flatbuffer raises struct/index errors
        raise load_error(label, RUNTIME, e) from None
    if not ok:
        raise ArtifactError(f"{label}: not a toolkit .tflite (one graph with one input and its outputs)")


def load_interpreter(data: bytes, options: RunnerOptions, label: str) -> Any:
    """An Interpreter over the (hash-checked) bytes, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        with native_logs.silenced():  # the XNNPACK delegate announces itself on stderr
            interpreter = Interpreter(model_content=data, num_threads=options.threads)
            interpreter.allocate_tensors()
    except Exception as e:  # LiteRT raises ValueError/RuntimeError for what it cannot read
        raise load_error(label, RUNTIME, e) from None
    return interpreter


class LiteRtRunner(Runner):
    """One interpreter; images go through it `batch` at a time."""

    runtime = RUNTIME

    def __init__(self, interpreter: Any, data: bytes, label: str, options: RunnerOptions,
                 normalization: Normalization, metadata: dict[str, str] | None = None) -> None:
        super().__init__(label, formats.NORMALIZED, options)
        self.interpreter, self._data = interpreter, data  # kept alive as long as the interpreter that reads them
        self.input, self.output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        shape = [int(d) for d in self.input["shape"]]
        # [N,1,28,28], or the model's own input where the file says so (an export made with --input-shape)
        own = shape[1:] == [1, 28, 28] or declares_own_input(shape[1:], metadata or {})
        if len(interpreter.get_input_details()) != 1 or not own:
            raise ArtifactError(f"{label}: input is {shape}; toolkit .tflite files take [N,1,28,28] or the input "
                                "shape their metadata's input_layout declares")
        self.batch = shape[0]
        self.mean, self.std = normalization.mean, normalization.std
        self.metadata = metadata or {}

    def settings(self) -> dict[str, Any]:
        return {"device": "cpu", "threads": self.options.threads, "file_batch": self.batch}

    def _call(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        if n < self.batch:
            chunk = np.concatenate([chunk, np.zeros((self.batch - n, *chunk.shape[1:]), chunk.dtype)])
        self.interpreter.set_tensor(self.input["index"], _quantize(chunk, self.input))
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)[:n]

    def _infer(self, native: Any) -> list[Any]:
        return [np.concatenate([self._call(native[i:i + self.batch]) for i in range(0, len(native), self.batch)])]


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y.copy()  # the interpreter reuses its output buffer
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


FORMAT = "tflite"  # the format of formats.FORMATS this runtime opens
IDENTIFIER = b"TFL3"  # the flatbuffer file identifier of a .tflite model, at bytes 4..8


def open_bytes(data: bytes, label: str, options: RunnerOptions, declared_format: str | None = None) -> LiteRtRunner:
    """A toolkit .tflite from its (hash-checked) bytes; with `declared_format`, its metadata must say that format."""
    metadata = read_metadata(data, label)
    if declared_format and metadata.get("artifact_format") != declared_format:
        raise ArtifactError(f"{label}: its metadata says {metadata.get('artifact_format')!r}, "
                            f"the manifest {declared_format}")
    normalization = read_normalization(metadata, label)  # checked before the interpreter is built
    check_graph(data, label)
    return LiteRtRunner(load_interpreter(data, options, label), data, label, options, normalization, metadata)


def open_artifact(artifact: Artifact, options: RunnerOptions) -> LiteRtRunner:
    """A manifest artifact in LiteRT, from its hash-checked bytes."""
    return open_bytes(read_verified(artifact), artifact.file, options, artifact.format)
