"""Runners: one interface over every runtime the toolkit proves and times its exports on.

A runner is opened for one runtime and device from an exported artifact (or, for the PyTorch eager
baseline, from the checkpoint). It takes uint8 pixels [N, 28, 28] and returns named outputs: `log_probs`
for the normalized models, `probabilities` and `digit` for the app model. It can also be prepared for
timing (inputs converted once, I/O bound, CUDA graphs). verify, bench and predict use nothing else, so a
new runtime is one runner class and one row in RUNTIMES.

A runner opened from a manifest artifact loads the hash-checked bytes (artifacts.read_verified), never
the path: what runs is exactly what was hashed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.artifacts import Artifact, read_verified
from toolkit.errors import ArtifactError, ConfigError, ProviderUnavailable, ToolkitError
from toolkit.preprocess import MEAN, STD, normalize
from toolkit.runtime import check_provider, create_session, describe

LOG_PROBS = ("log_probs",)
APP_OUTPUTS = ("probabilities", "digit")
IO_MODES = ("host", "device")  # host: inputs from numpy and outputs back (copies timed); device: resident
OPENVINO_PRECISIONS = ("f32", "bf16")  # OpenVINO's inference precision hint
OPENVINO_HINTS = ("latency", "throughput")
# How much an OpenVINO precision mode costs: the artifact is judged as the lower of its precision and this.
PRECISION_ORDER = ("fp32", "fp16", "bf16", "int8")
_MODE_PRECISION = {"f32": "fp32", "bf16": "bf16"}


@dataclass(frozen=True)
class RunnerOptions:
    """How to open a runner; each runtime reads the fields that apply to it."""

    device: str = "cpu"  # cpu, cuda or tensorrt (an ONNX Runtime provider; torch runs tensorrt rows as cuda)
    threads: int | None = None  # intra-op threads on the CPU; None: the runtime's default
    optimization: str = "all"  # ONNX Runtime graph optimization level
    precision: str = "f32"  # OpenVINO inference precision: f32 (parity) or bf16
    hint: str = "latency"  # OpenVINO performance hint: latency (one call at a time) or throughput (async queue)
    cuda_graph: bool = False  # ONNX Runtime CUDA: replay a CUDA graph (device-resident I/O)


@dataclass
class Timed:
    """A prepared timing loop body: `call(i)` runs batch i (of the rotated ones) `batches_per_call` at a time."""

    call: Callable[[int], Any]
    batches_per_call: int = 1


class Runner:
    """One model loaded in one runtime. Subclasses set `kind` and implement `_feed` and `_infer`."""

    runtime = ""

    def __init__(self, label: str, kind: str, options: RunnerOptions) -> None:
        self.label = label  # the file (or checkpoint) it was opened from, for messages
        self.kind = kind  # "normalized" (log_probs) or "app" (probabilities, digit)
        self.options = options
        self.mean, self.std = MEAN, STD

    @property
    def outputs(self) -> tuple[str, ...]:
        return APP_OUTPUTS if self.kind == "app" else LOG_PROBS

    def settings(self) -> dict[str, Any]:
        """What this runner was opened with, as recorded in results."""
        return {"device": self.options.device}

    def _feed(self, pixels: np.ndarray) -> Any:
        """uint8 pixels -> this runtime's input (normalized floats for the normalized models)."""
        return pixels if self.kind == "app" else normalize(pixels, self.mean, self.std)

    def _infer(self, native: Any) -> list[Any]:
        raise NotImplementedError

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for uint8 pixels [N, 28, 28]; a failure inside the model is an ArtifactError."""
        with run_guard(self):
            raw = self._infer(self._feed(pixels))
        if len(raw) != len(self.outputs):
            raise ArtifactError(f"{self.label} on {self.runtime} returned {len(raw)} outputs, expected "
                                f"{len(self.outputs)} ({', '.join(self.outputs)})")
        return {name: np.asarray(value) for name, value in zip(self.outputs, raw)}

    def timed(self, batches: list[np.ndarray], io: str = "host") -> Timed:
        """A loop body for bench: inputs converted once, so only the runtime's call is timed."""
        with run_guard(self):
            inputs = [self._feed(b) for b in batches]
        return Timed(lambda i: self._infer(inputs[i % len(inputs)]))


@contextlib.contextmanager
def run_guard(runner: Runner) -> Iterator[None]:
    """Turn what a runtime raises while running into typed errors: memory -> ConfigError, else ArtifactError."""
    try:
        yield
    except ToolkitError:
        raise
    except MemoryError:
        raise ConfigError(f"not enough memory to run {runner.label} on {runner.runtime}; use smaller batches") from None
    except Exception as e:  # each runtime raises its own types (ORT's Fail/RuntimeException, cv2.error, ...)
        text = " ".join(str(e).split())[:300] or type(e).__name__
        if "alloc" in text.lower() or "out of memory" in text.lower():
            raise ConfigError(f"cannot allocate memory to run {runner.label} on {runner.runtime} "
                              f"({text[:120]}); use smaller batches") from None
        raise ArtifactError(f"{runner.label} failed while running on {runner.runtime}: {text}") from None


def _expected_kind(artifact: Artifact) -> str:
    return "app" if artifact.format == "onnx-app" else "normalized"


def _load_error(artifact_label: str, runtime: str, e: Exception) -> ArtifactError:
    text = " ".join(str(e).split())[:300] or type(e).__name__
    return ArtifactError(f"{runtime} cannot load {artifact_label}: {text}")


# --- ONNX Runtime ---------------------------------------------------------------------------------------

class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, model: bytes, label: str, options: RunnerOptions, expected_kind: str | None = None) -> None:
        self._bytes = model
        self.session = create_session(model, options.device, threads=options.threads,
                                      optimization=options.optimization, label=label)
        self.info = describe(self.session, label)
        if expected_kind and self.info.kind != expected_kind:
            raise ArtifactError(f"{label}: manifest says {'onnx-app' if expected_kind == 'app' else 'onnx'} "
                                f"but its input is {self.info.kind}")
        super().__init__(label, self.info.kind, options)
        self.mean, self.std = self.info.mean, self.info.std

    @classmethod
    def from_artifact(cls, artifact: Artifact, options: RunnerOptions) -> OnnxRuntimeRunner:
        return cls(read_verified(artifact), artifact.file, options, _expected_kind(artifact))

    def settings(self) -> dict[str, Any]:
        return {"device": self.options.device, "optimization": self.options.optimization,
                "threads": self.options.threads}

    def _infer(self, native: Any) -> list[Any]:
        return self.session.run(None, {self.info.input_name: native})

    def timed(self, batches: list[np.ndarray], io: str = "host") -> Timed:
        if self.options.cuda_graph:
            return self._timed_cuda_graph(batches)
        if self.options.device == "cpu":
            return super().timed(batches, io)
        import onnxruntime as ort

        inputs = [self._feed(b) for b in batches]
        binding = self.session.io_binding()
        name = self.info.input_name
        if io == "host":  # copies in and out are part of every timed call
            def run_host(i: int) -> Any:
                binding.bind_cpu_input(name, inputs[i % len(inputs)])
                for out in self.info.output_names:
                    binding.bind_output(out, "cpu")
                self.session.run_with_iobinding(binding)
                return binding.copy_outputs_to_cpu()
            return Timed(run_host)
        resident = [ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0) for x in inputs]
        for out in self.info.output_names:
            binding.bind_output(out, "cuda")

        def run_device(i: int) -> Any:
            binding.bind_ortvalue_input(name, resident[i % len(resident)])
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return Timed(run_device)

    def _timed_cuda_graph(self, batches: list[np.ndarray]) -> Timed:
        # A CUDA graph replays fixed device addresses: one session per batch size, one input buffer (the graph
        # cannot rotate pointers), outputs bound at fixed addresses too and left on the device.
        import onnxruntime as ort

        session = create_session(self._bytes, "cuda", cuda_graph=True, label=self.label)
        batch = self._feed(batches[0])
        binding = session.io_binding()
        binding.bind_ortvalue_input(self.info.input_name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
        for output in session.get_outputs():
            shape = [len(batch) if not isinstance(d, int) else d for d in output.shape]
            dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64}[output.type]
            binding.bind_ortvalue_output(output.name, ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", 0))

        def run_graph(i: int) -> Any:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return Timed(run_graph)


# --- PyTorch eager and TorchScript ----------------------------------------------------------------------

class TorchRunner(Runner):
    """A torch module (eager from the checkpoint, or a TorchScript archive) on the CPU or CUDA."""

    def __init__(self, module: Any, label: str, runtime: str, options: RunnerOptions) -> None:
        super().__init__(label, "normalized", options)
        self.runtime = runtime
        self.device = "cpu" if options.device == "cpu" else "cuda"
        self.module = module

    @classmethod
    def eager(cls, checkpoint: str, options: RunnerOptions) -> TorchRunner:
        from toolkit.checkpoint import load_checkpoint, model_from_checkpoint

        model = model_from_checkpoint(load_checkpoint(checkpoint))
        _check_torch_device(options.device)
        return cls(model.to("cpu" if options.device == "cpu" else "cuda"), str(checkpoint), "pytorch", options)

    @classmethod
    def scripted(cls, artifact: Artifact, options: RunnerOptions) -> TorchRunner:
        import torch

        _check_torch_device(options.device)
        data = read_verified(artifact)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                module = torch.jit.load(io.BytesIO(data), map_location="cpu" if options.device == "cpu" else "cuda")
        except Exception as e:  # torch.jit raises RuntimeError and others for damaged archives
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"{artifact.file} is not a loadable TorchScript file ({first})") from None
        return cls(module, artifact.file, "torchscript", options)

    def _feed(self, pixels: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(super()._feed(pixels)).to(self.device)

    def _infer(self, native: Any) -> list[Any]:
        import torch

        with torch.inference_mode():
            return [self.module(native).float().cpu().numpy()]

    def timed(self, batches: list[np.ndarray], io: str = "host") -> Timed:
        import torch

        host = [torch.from_numpy(super(TorchRunner, self)._feed(b)) for b in batches]
        module, device = self.module, self.device
        if device == "cpu" or io == "host":
            def run_host(i: int) -> Any:
                with torch.inference_mode():
                    return module(host[i % len(host)].to(device)).cpu()
            return Timed(run_host)
        resident = [x.to(device) for x in host]

        def run_device(i: int) -> Any:
            with torch.inference_mode():
                y = module(resident[i % len(resident)])
            torch.cuda.synchronize()
            return y
        return Timed(run_device)


def _check_torch_device(device: str) -> None:
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ProviderUnavailable("torch sees no CUDA device for the PyTorch/TorchScript runners; "
                                  "pass --runtime onnxruntime to use ONNX Runtime alone")


# --- OpenVINO -------------------------------------------------------------------------------------------

class OpenVinoRunner(Runner):
    """OpenVINO on the CPU, reading the .onnx directly; f32 for parity, bf16 as its own mode."""

    runtime = "openvino"

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        import openvino as ov

        super().__init__(artifact.file, _expected_kind(artifact), options)
        data = read_verified(artifact)
        core = ov.Core()
        props: dict[str, Any] = {"PERFORMANCE_HINT": options.hint.upper(),
                                 "INFERENCE_PRECISION_HINT": options.precision}
        if options.threads:
            props["INFERENCE_NUM_THREADS"] = options.threads
        try:
            model = core.read_model(model=io.BytesIO(data))
            self.compiled = core.compile_model(model, "CPU", props)
        except Exception as e:  # OpenVINO raises RuntimeError (and others) for what it cannot read or compile
            raise _load_error(artifact.file, self.runtime, e) from None
        element = str(self.compiled.inputs[0].get_element_type())
        kind = "app" if "u8" in element or "uint8" in element else "normalized"
        if kind != self.kind:
            raise ArtifactError(f"{artifact.file}: manifest says {artifact.format} but its input is {kind}")
        self.request = self.compiled.create_infer_request()

    def settings(self) -> dict[str, Any]:
        return {"device": "cpu", "inference_precision": self.options.precision,
                "performance_hint": self.options.hint, "threads": self.options.threads,
                "infer_requests": self.in_flight}

    @property
    def in_flight(self) -> int:
        """Requests kept in flight when timing: OpenVINO's optimal number with the throughput hint, else 1."""
        if self.options.hint != "throughput":
            return 1
        return max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

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


# --- OpenCV DNN -----------------------------------------------------------------------------------------

class OpenCvRunner(Runner):
    """OpenCV's DNN module (5.x: its new engine, falling back to the classic importer) on the CPU."""

    runtime = "opencv"

    def __init__(self, artifact: Artifact, options: RunnerOptions) -> None:
        import cv2

        super().__init__(artifact.file, _expected_kind(artifact), options)
        data = read_verified(artifact)
        if options.threads:
            cv2.setNumThreads(options.threads)
        try:
            self.net = cv2.dnn.readNetFromONNX(np.frombuffer(data, np.uint8))
            found = set(self.net.getUnconnectedOutLayersNames())
        except Exception as e:  # cv2.error
            raise _load_error(artifact.file, self.runtime, e) from None
        if not set(self.outputs) <= found:  # asked for by name: OpenCV lists its outputs in its own order
            raise ArtifactError(f"{artifact.file}: OpenCV finds outputs {', '.join(sorted(found))}, "
                                f"not {', '.join(self.outputs)}")

    def settings(self) -> dict[str, Any]:
        return {"device": "cpu", "threads": self.options.threads}

    def _infer(self, native: Any) -> list[Any]:
        self.net.setInput(native)
        return list(self.net.forward(list(self.outputs)))


# --- the table ------------------------------------------------------------------------------------------

Opener = Callable[[Any, RunnerOptions], Runner]


@dataclass(frozen=True)
class Runtime:
    """One row of RUNTIMES: what a runtime opens, where it runs, and how to open it."""

    name: str
    module: str  # import name; the runtime counts as installed when it can be found
    packages: tuple[str, ...]  # distributions that provide it; the first installed one gives the version
    formats: tuple[str, ...]  # artifact formats it opens ("pytorch": the checkpoint itself)
    precisions: tuple[str, ...]  # artifact precisions it opens
    devices: tuple[str, ...]
    open: Opener  # (artifact or checkpoint path, options) -> Runner
    modes: tuple[str, ...] = ("f32",)  # inference precisions offered (OpenVINO's f32 and bf16)
    tunes: tuple[str, ...] = ()  # the bench settings that apply: optimization, concurrency, io, cuda_graph, mode, hint
    description: str = ""

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def version(self) -> str | None:
        for package in self.packages:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                return importlib.metadata.version(package)
        return None

    def opens(self, fmt: str, precision: str) -> bool:
        return fmt in self.formats and precision in self.precisions


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("onnxruntime", "onnxruntime", ("onnxruntime-gpu", "onnxruntime"), ("onnx", "onnx-app"),
            ("fp32", "fp16", "int8"), ("cpu", "cuda", "tensorrt"), OnnxRuntimeRunner.from_artifact,
            tunes=("optimization", "concurrency", "io", "cuda_graph"), description="ONNX Runtime (CPU, CUDA and TensorRT providers)"),
    Runtime("pytorch", "torch", ("torch",), ("pytorch",), ("fp32",), ("cpu", "cuda"), TorchRunner.eager, tunes=("io",),
            description="PyTorch eager, from the checkpoint"),
    Runtime("torchscript", "torch", ("torch",), ("torchscript",), ("fp32",), ("cpu", "cuda"), TorchRunner.scripted,
            tunes=("io",), description="the TorchScript archive in torch"),
    Runtime("openvino", "openvino", ("openvino",), ("onnx", "onnx-app"), ("fp32", "fp16", "int8"), ("cpu",),
            OpenVinoRunner, modes=OPENVINO_PRECISIONS, tunes=("mode", "hint"), description="OpenVINO on the CPU, reading the .onnx"),
    Runtime("opencv", "cv2", ("opencv-python-headless", "opencv-python", "opencv-contrib-python"),
            ("onnx", "onnx-app"), ("fp32",), ("cpu",), OpenCvRunner, description="OpenCV DNN on the CPU"),
)}
NATIVE_RUNTIMES = ("onnxruntime", "torchscript")  # what verify uses unless told: each artifact's own runtime


@dataclass
class Selection:
    """The runtimes a command will use, and why any asked-for runtime is left out."""

    runtimes: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


def select_runtimes(requested: tuple[str, ...] | list[str], default: tuple[str, ...] = ("all",)) -> Selection:
    """Resolve runtime names. 'all' is every installed runtime, one that is missing skipped with a note; a
    runtime asked for by name that is not installed, or an unknown name, is a ConfigError. Nothing asked
    for means `default`, whose missing runtimes are skipped too."""
    names = list(dict.fromkeys(requested or default))
    for name in names:
        if name not in RUNTIMES and name != "all":
            raise ConfigError(f"unknown runtime {name!r}; choose from: {', '.join([*RUNTIMES, 'all'])}")
    explicit = set(requested) - {"all"}
    wanted = list(RUNTIMES) if "all" in names else names
    selection = Selection([])
    for name in wanted:
        spec = RUNTIMES[name]
        if spec.installed():
            selection.runtimes.append(name)
        elif name in explicit:
            raise ConfigError(f"runtime {name} is not installed here; pip install {spec.packages[0]}")
        else:
            selection.skipped[name] = f"not installed (pip install {spec.packages[0]})"
    return selection


def runtime_versions(names: list[str]) -> dict[str, str]:
    """{runtime: installed version} for the given runtimes."""
    return {n: RUNTIMES[n].version() or "unknown" for n in names}


def judged_precision(artifact_precision: str, mode: str) -> str:
    """The precision a run is judged at: the lower of the file's and the runtime's compute precision."""
    mode_precision = _MODE_PRECISION.get(mode, "fp32")
    return max(artifact_precision, mode_precision, key=PRECISION_ORDER.index)


def open_runner(runtime: str, source: Artifact | str, options: RunnerOptions | None = None) -> Runner:
    """Open `source` (an artifact, or the checkpoint path for 'pytorch') in `runtime`, timing nothing."""
    options = options or RunnerOptions()
    spec = RUNTIMES[runtime]
    check_provider(options.device)
    if options.device not in spec.devices:
        raise ProviderUnavailable(f"{runtime} runs on {', '.join(spec.devices)}, not {options.device}")
    if isinstance(source, Artifact) and not spec.opens(source.format, source.precision):
        raise ArtifactError(f"{runtime} does not open {source.label} files")
    return spec.open(source, options)


def open_timed(runtime: str, source: Artifact | str, options: RunnerOptions) -> tuple[Runner, float]:
    """A runner and how long opening it took, in milliseconds."""
    t0 = time.perf_counter()
    runner = open_runner(runtime, source, options)
    return runner, (time.perf_counter() - t0) * 1e3
