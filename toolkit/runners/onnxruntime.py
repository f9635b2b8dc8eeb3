"""ONNX Runtime: the loader (`create_session`, on exactly the device asked for) and its runner.

Torch-free: `toolkit.runtime` (the app API) builds on this with onnxruntime and numpy alone.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import devices, fileio, formats, refinputs, sysinfo
from toolkit.artifacts import Artifact, read_verified
from toolkit.errors import ArtifactError, ConfigError, ProviderUnavailable
from toolkit.metadata import read_normalization
from toolkit.runners.base import Runner, RunnerOptions, Timed, check_kind

_OPTIMIZATION_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC",
                        "none": "ORT_DISABLE_ALL"}


def default_threads() -> int | None:
    """Intra-op threads when none are asked for: ONNX Runtime's own choice (None: one per physical core), unless
    this process may run on fewer CPUs than the machine has (taskset, a pinned container): then one per CPU it may
    use. ONNX Runtime pins its default pool's threads to cores itself, outside the process's affinity mask."""
    usable = sysinfo.usable_cores()
    return usable if usable < (os.cpu_count() or usable) else None


def _session_options(ort: Any, threads: int | None, optimization: str) -> Any:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPTIMIZATION_LEVELS[optimization])
    threads = threads or default_threads()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # ORT's warnings are noise here; errors become ArtifactError/ProviderUnavailable
    return opts


def _prepare_gpu(ort: Any) -> None:
    ort.set_default_logger_severity(4)  # a provider that fails to load is reported by create_session, in one line
    if hasattr(ort, "preload_dlls"):
        with contextlib.suppress(Exception):
            ort.preload_dlls()  # finds the CUDA/cuDNN libraries that pip's nvidia-* packages (or torch) ship


def _model_source(model: str | os.PathLike | bytes, label: str) -> tuple[str | bytes, Path]:
    """What InferenceSession reads (a path, or bytes already read and hash-checked) and the path for messages."""
    if isinstance(model, bytes):
        source: str | bytes = model
        path = Path(label or "the model")
    else:
        path = Path(model)
        if not path.is_file():
            raise ArtifactError(f"model file {path} {fileio.absent(path, 'run `toolkit export` first')}")
        source = str(path)
    if not source or (isinstance(source, str) and path.stat().st_size == 0):
        raise ArtifactError(f"{path} is empty; export it again")
    return source, path


def create_session(model: str | os.PathLike | bytes, device: str = "cpu", *, threads: int | None = None,
                   cuda_graph: bool = False, optimization: str = "all", label: str = "",
                   folder: str | os.PathLike | None = None):
    """An InferenceSession on exactly `device`, or ProviderUnavailable saying what is missing.

    `model` is a path, or the model's bytes (already hash-checked; `label` then names it in errors, and `folder`
    is the one the file was read from: see `_external_data_folder`).

    ONNX Runtime silently falls back to the CPU when a GPU provider cannot load; this checks
    `session.get_providers()` so nothing labelled CUDA ever runs on the CPU.
    """
    import onnxruntime as ort

    name = devices.check(device).provider
    missing = devices.onnxruntime_unavailable(device)
    if missing:
        raise ProviderUnavailable(missing)
    if device != devices.CPU:
        _prepare_gpu(ort)
    opts = _session_options(ort, threads, optimization)
    provider_options: dict[str, Any] = {}
    if cuda_graph:
        if device != "cuda":
            raise ConfigError("CUDA graphs need --provider cuda")
        provider_options["enable_cuda_graph"] = "1"
    providers = [(name, provider_options)] + ([] if device == devices.CPU else [devices.DEVICES["cpu"].provider])
    source, path = _model_source(model, label)
    try:
        # ORT prints "EP Error ... Falling back" itself when a GPU provider fails; the check below says it better
        with contextlib.redirect_stdout(io.StringIO()), _external_data_folder(opts, source, folder):
            session = ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types for unreadable or invalid models
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {_ort_message(e)}") from None
    if session.get_providers()[0] != name:
        raise ProviderUnavailable(f"{name} failed to load, ONNX Runtime would silently use the CPU: "
                                  f"{devices.onnxruntime_load_failure(device)}")
    return session


# the session option (ONNX Runtime 1.18 and later) naming the folder external data is read from for a model loaded
# from bytes
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


@contextlib.contextmanager
def _external_data_folder(opts: Any, source: str | bytes, folder: str | os.PathLike | None) -> Iterator[None]:
    """A model loaded from bytes has no folder of its own, and ONNX Runtime would read the external data it names
    (weights kept in other files, which no toolkit export writes) from the working directory. It is read from
    `folder`, the one the model file is in, where the caller knows it, else from an empty one: never from
    elsewhere. ONNX Runtime refuses names that leave the folder."""
    if not isinstance(source, bytes):
        yield  # loaded from its path: ONNX Runtime reads external data beside it
        return
    with contextlib.ExitStack() as stack:
        where = folder if folder is not None else stack.enter_context(tempfile.TemporaryDirectory())
        opts.add_session_config_entry(EXTERNAL_DATA_FOLDER, os.path.abspath(where))
        yield


def _ort_message(e: Exception) -> str:
    """ONNX Runtime's error text without its status prefix and C++ source location."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"\S*onnxruntime_src/\S+:\d+ \S+?\(.*?\) ", "", text)
    return text[:300]


@dataclass(frozen=True)
class ModelInfo:
    """What a toolkit .onnx says about itself."""

    kind: str  # formats.NORMALIZED (float32 [N,1,28,28] -> log_probs) or formats.APP (uint8 [N,28,28] -> ...)
    input_name: str
    output_names: tuple[str, ...]
    mean: float
    std: float
    labels: tuple[str, ...]
    metadata: dict[str, str]
    scores: str | None = None  # the output kind the metadata declares (metadata.SCORE_KINDS); None: not said


def _input_kind(inp: Any, path: str | os.PathLike, meta: dict[str, str]) -> str:
    shape = list(inp.shape)
    if inp.type == "tensor(uint8)" and shape[1:] == [28, 28]:
        return formats.APP
    if inp.type == "tensor(float)" and shape[1:] == [1, 28, 28]:
        return formats.NORMALIZED
    # a model exported with --input-shape: its own input, which verify feeds from the reference inputs
    if inp.type == "tensor(float)" and refinputs.declares_own_input(shape[1:], meta):
        return formats.NORMALIZED
    raise ArtifactError(f"{path}: input {inp.name!r} is {inp.type} {shape}; toolkit models take "
                        "float32 [N,1,28,28] or uint8 [N,28,28]")


def describe(session, path: str | os.PathLike = "") -> ModelInfo:
    """Check that `session` holds a toolkit MNIST model and read its I/O contract from the metadata."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "toolkit.format_version" not in meta:
        raise ArtifactError(f"{path or 'the model'} is not a toolkit model (no toolkit metadata); "
                            "export one with `toolkit export`")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ArtifactError(f"{path} has {len(inputs)} inputs; toolkit models take one image tensor")
    kind = _input_kind(inputs[0], path, meta)
    norm = read_normalization(meta, str(path or "the model"))
    return ModelInfo(kind, inputs[0].name, tuple(o.name for o in session.get_outputs()), norm.mean, norm.std,
                     norm.labels, meta, norm.scores)


class OnnxRuntimeRunner(Runner):
    """An ONNX Runtime session. `source` (the bytes or path it was built from) lets timing build a second,
    CUDA-graph session; `info` is the toolkit metadata (None for a file the toolkit did not make)."""

    runtime = "onnxruntime"

    def __init__(self, session: Any, label: str, kind: str, options: RunnerOptions, *,
                 source: bytes | str | os.PathLike | None = None, info: ModelInfo | None = None) -> None:
        super().__init__(label, kind, options)
        self.session, self.info, self._source = session, info, source
        if info is not None:
            self.mean, self.std = info.mean, info.std
            self.metadata = info.metadata
        self._uncancel()

    @property
    def model_bytes(self) -> bytes | None:
        """The bytes the session was built from (None: it was built from a path)."""
        return self._source if isinstance(self._source, bytes) else None

    def _cancel(self) -> bool:
        self.run_options.terminate = True  # ONNX Runtime checks it between nodes, Loop iterations included
        return True

    def _uncancel(self) -> None:
        import onnxruntime as ort

        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4  # a cancelled run is reported once, by run_guard

    @classmethod
    def toolkit_model(cls, model: bytes, label: str, options: RunnerOptions, declared_format: str | None = None,
                      folder: str | os.PathLike | None = None) -> OnnxRuntimeRunner:
        """A toolkit .onnx from its (hash-checked) bytes, read from a file in `folder`, its normalization read from
        its metadata; with `declared_format`, its input must be that format's kind."""
        session = create_session(model, options.device, threads=options.threads,
                                 optimization=options.optimization, label=label, folder=folder)
        info = describe(session, label)
        if declared_format:
            check_kind(label, declared_format, info.kind)
        return cls(session, label, info.kind, options, source=model, info=info)

    def settings(self) -> dict[str, Any]:
        return {"device": self.options.device, "optimization": self.options.optimization,
                "threads": self.options.threads}

    def _infer(self, native: Any) -> list[Any]:
        return self.session.run(None, {self.info.input_name: native}, self.run_options)

    def timed(self, batches: list[np.ndarray], io: str = "host") -> Timed:
        if self.options.cuda_graph:
            return self._timed_cuda_graph(batches)
        if self.options.device == devices.CPU:
            return super().timed(batches, io)
        inputs = [self._feed(b) for b in batches]
        binding = self.session.io_binding()
        return _timed_host(self, binding, inputs) if io == "host" else _timed_device(self, binding, inputs)

    def _timed_cuda_graph(self, batches: list[np.ndarray]) -> Timed:
        # A CUDA graph replays fixed device addresses: one session per batch size, one input buffer (the graph
        # cannot rotate pointers), outputs bound at fixed addresses too and left on the device.
        import onnxruntime as ort

        session = create_session(self._source, "cuda", cuda_graph=True, label=self.label)
        batch = self._feed(batches[0])
        binding = session.io_binding()
        binding.bind_ortvalue_input(self.info.input_name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
        for output in session.get_outputs():
            shape = [len(batch) if not isinstance(d, int) else d for d in output.shape]
            dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64}[output.type]
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", 0)
            binding.bind_ortvalue_output(output.name, buffer)

        def run_graph(i: int) -> Any:
            session.run_with_iobinding(binding, self.run_options)
            binding.synchronize_outputs()
        return Timed(run_graph)


def _timed_host(runner: OnnxRuntimeRunner, binding: Any, inputs: list[np.ndarray]) -> Timed:
    """Copies in and out are part of every timed call."""
    name, outputs = runner.info.input_name, runner.info.output_names

    def run_host(i: int) -> Any:
        binding.bind_cpu_input(name, inputs[i % len(inputs)])
        for out in outputs:
            binding.bind_output(out, "cpu")
        runner.session.run_with_iobinding(binding, runner.run_options)
        return binding.copy_outputs_to_cpu()
    return Timed(run_host)


def _timed_device(runner: OnnxRuntimeRunner, binding: Any, inputs: list[np.ndarray]) -> Timed:
    """Inputs resident on the GPU and outputs left there: only the run is timed."""
    import onnxruntime as ort

    resident = [ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0) for x in inputs]
    for out in runner.info.output_names:
        binding.bind_output(out, "cuda")
    name = runner.info.input_name

    def run_device(i: int) -> Any:
        binding.bind_ortvalue_input(name, resident[i % len(resident)])
        runner.session.run_with_iobinding(binding, runner.run_options)
        binding.synchronize_outputs()
    return Timed(run_device)


def open_artifact(artifact: Artifact, options: RunnerOptions) -> OnnxRuntimeRunner:
    """A manifest artifact in ONNX Runtime, from its hash-checked bytes."""
    return OnnxRuntimeRunner.toolkit_model(read_verified(artifact), artifact.file, options, artifact.format,
                                           folder=Path(artifact.path).parent)
