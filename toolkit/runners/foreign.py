"""Runners for model files the toolkit did not make: any ONNX, TorchScript, pt2 or aoti digit classifier.

A foreign file has no toolkit metadata and no manifest lists it, so what it expects is given by options
(`Preprocessing`: mean, std, layout) and read from the file itself (the ONNX input's declared shape and
type). Its outputs: the first output of shape [N, 10] is taken as the class scores, whatever they are
(log-probabilities, logits or probabilities); `scores_kind` tells which.

A TorchScript file is code: loading it runs what its author wrote, and so are a torch.export program (its
loader unpickles) and an AOTInductor package (a shared library). Only give files you trust like a script.
A file is loaded from the bytes read (checked against its manifest's hash, where one lists it); an ONNX file's
external data is read from its folder, ONNX Runtime refusing paths that leave it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import devices, onnx_wire, refinputs
from toolkit.errors import ArtifactError, ConfigError
from toolkit.formats import FORMATS, format_of_file
from toolkit.model_files import read_listed_model_file, read_model_file
from toolkit.runners import executorch as _executorch
from toolkit.runners import litert as _litert
from toolkit.runners import opencv, openvino, torch_export
from toolkit.runners.base import DEFAULT_TIME_LIMIT_S, Runner, RunnerOptions, Timed, run_guard
from toolkit.runners.feeding import FEEDING, FILE_OPTIONS, SHAPES, Preprocessing
from toolkit.runners.onnxruntime import OnnxRuntimeRunner, create_session
from toolkit.runners.torch import TorchRunner, load_torchscript

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
           "tensor(uint64)": np.uint64, "tensor(int8)": np.int8, "tensor(int16)": np.int16,
           "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}
SCORES = "scores"
FOREIGN = "foreign"  # a runner's kind for a file without toolkit metadata: its output is taken as the scores


def is_torchscript(data: bytes) -> bool:
    # a TorchScript archive is a zip, and so is a PT2 archive (told apart by archive_kind); ONNX is a protobuf
    return data[:4] == b"PK\x03\x04" and torch_export.archive_kind(data) is None


def archive_name(data: bytes) -> str | None:
    """What kind of torch archive `data` is, in words ("TorchScript", ...), or None for a file that is no zip."""
    if data[:4] != b"PK\x03\x04":
        return None
    return {torch_export.PT2: "a torch.export program (pt2)",
            torch_export.AOTI: "an AOTInductor package (aoti)"}.get(torch_export.archive_kind(data), "TorchScript")


def scores_kind(scores: np.ndarray) -> str:
    """'log_probs', 'probabilities' or 'logits', from the values themselves (every row must fit)."""
    x = np.asarray(scores, np.float64)
    if not np.isfinite(x).all() or not len(x):
        return "logits"
    if (x >= 0).all() and (x <= 1).all() and np.allclose(x.sum(1), 1, atol=1e-3):
        return "probabilities"
    if (x <= 1e-6).all() and np.allclose(np.log(np.exp(x).sum(1)), 0, atol=1e-3):
        return "log_probs"
    return "logits"


class _Input:
    """One declared ONNX input and how bench/compare fill it."""

    def __init__(self, name: str, onnx_type: str, shape: list[Any], shapes: dict[str, tuple[int, ...]],
                 label: str = "") -> None:
        if onnx_type not in _DTYPES:
            raise ArtifactError(f"{label}: input {name!r} has type {onnx_type}, which the toolkit cannot feed")
        self.name, self.onnx_type, self.dtype = name, onnx_type, _DTYPES[onnx_type]
        self.batch_fixed = shape[0] if shape and isinstance(shape[0], int) else None
        if not shape:  # timed at batch 8, one call would count as 8 inputs
            raise ArtifactError(f"{label}: input {name!r} is a scalar, with no batch dimension; the toolkit feeds "
                                "batches")
        rest = shapes.get(name) or tuple(shape[1:])
        if len(rest) != len(shape) - 1:
            raise ConfigError(f"--shape {name}={'x'.join(map(str, rest))} gives {len(rest)} dimensions after the "
                              f"batch; input {name!r} of {label} has {len(shape) - 1} ({list(shape)})")
        if any(not isinstance(d, int) or d < 1 for d in rest):
            raise ArtifactError(f"{label}: input {name!r} has dynamic dimensions {list(shape)}; pass --shape "
                                f"{name}=Dx... with the dimensions after the batch")
        self.rest = tuple(int(d) for d in rest)
        self.layout = next((k for k, v in SHAPES.items() if v == self.rest), None)

    @property
    def integer(self) -> bool:
        """Whether it takes integers: as an image input, the raw pixels 0..255 (where its type holds them)."""
        return bool(np.issubdtype(self.dtype, np.integer))

    def random(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        shape = (n, *self.rest)
        if self.dtype == np.bool_:
            return rng.integers(0, 2, shape).astype(bool)
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            return rng.integers(max(info.min, 0), min(info.max, 255), shape, endpoint=True).astype(self.dtype)
        return rng.standard_normal(shape).astype(self.dtype)


def random_pixels(n: int = 10_000, seed: int = 0) -> np.ndarray:
    """Random 28x28 pixels, seeded: what a file is fed without MNIST (a runner whose input is no image turns each
    batch into random data of its own shapes, seeded by the batch's pixels, so batches differ)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _pixels_as(pixels: np.ndarray, layout: str, dtype: Any, prep: Preprocessing) -> np.ndarray:
    """MNIST pixels as an image input of `dtype` takes them: an integer one the raw pixels 0..255 (its type holds
    them: see `_image_input`), a float one `(pixel/255 - mean) / std`."""
    x = np.asarray(pixels)
    if np.issubdtype(dtype, np.integer):
        x = x.astype(dtype)
    else:
        x = ((x.astype(np.float32) / 255.0 - prep.mean) / prep.std).astype(dtype)
    return x.reshape(len(x), *SHAPES[layout])


class _ForeignFile:
    """What every runner of a file the toolkit did not write shares: one output, read as the class scores, and a
    time limit on each call even when none was asked for (such a file may never finish)."""

    options: RunnerOptions

    @property
    def outputs(self) -> tuple[str, ...]:
        return (SCORES,)

    @property
    def time_limit_s(self) -> float:
        return self.options.time_limit_s or DEFAULT_TIME_LIMIT_S


class ForeignOnnxRunner(_ForeignFile, OnnxRuntimeRunner):
    """A foreign .onnx in ONNX Runtime: MNIST pixels in when its input fits, random data otherwise."""

    def __init__(self, path: str | Path, options: RunnerOptions, prep: Preprocessing = Preprocessing(),
                 shapes: dict[str, tuple[int, ...]] | None = None, data: bytes | None = None) -> None:
        """`data`: the file's bytes, already read (and hash-checked where a manifest lists it), loaded as they are
        with its external data read from its folder; None: ONNX Runtime reads the file at `path`."""
        self.path, self.prep = Path(path), prep
        model = self.path if data is None else data
        session = create_session(model, options.device, threads=options.threads,
                                 optimization=options.optimization, label=str(path), folder=self.path.parent)
        super().__init__(session, str(path), FOREIGN, options, source=model)  # no toolkit metadata: info None
        declared = self.session.get_inputs()
        unknown = set(shapes or {}) - {i.name for i in declared}
        if unknown:  # before the inputs: a misspelt name must not look like a missing --shape
            raise ConfigError(f"--shape names no input of {path}: {', '.join(sorted(unknown))}; its inputs are "
                              f"{', '.join(i.name for i in declared)}")
        self.inputs = [_Input(i.name, i.type, list(i.shape), shapes or {}, str(path)) for i in declared]
        self.image = self._image_input()
        outputs = self.session.get_outputs()
        tens = [o for o in outputs if len(o.shape) == 2 and (o.shape[-1] == 10 or not isinstance(o.shape[-1], int))]
        self.output_name = (tens or outputs)[0].name

    def _image_input(self) -> _Input | None:
        """The input MNIST images go into: the only input, when its shape fits a layout (or the one asked for).
        An integer one takes the raw pixels, so its type must hold 0..255 (int8 cannot: refused)."""
        if len(self.inputs) != 1 or self.inputs[0].dtype == np.bool_:
            if self.prep.layout != "auto":
                raise ArtifactError(f"{self.label} has {len(self.inputs)} inputs; --layout needs one image input")
            return None
        inp = self.inputs[0]
        if self.prep.layout != "auto" and inp.layout != self.prep.layout:
            raise ArtifactError(f"{self.label}: input {inp.name!r} has shape [N,{','.join(map(str, inp.rest))}], "
                                f"not layout {self.prep.layout} [N,{','.join(map(str, SHAPES[self.prep.layout]))}]")
        if inp.layout and inp.integer and np.iinfo(inp.dtype).max < 255:
            raise ArtifactError(f"{self.label}: image input {inp.name!r} is {inp.onnx_type}, which cannot hold the "
                                "raw pixels 0..255 an integer image input is fed")
        return inp if inp.layout else None

    @property
    def takes_images(self) -> bool:
        return self.image is not None

    @property
    def normalizes(self) -> bool:
        """Whether --mean and --std apply: it takes images, as floats (an integer input gets the raw pixels)."""
        return self.image is not None and not self.image.integer

    def settings(self) -> dict[str, Any]:
        fed = {"mean": self.prep.mean, "std": self.prep.std} if self.normalizes else {}  # neither is used otherwise
        return {**super().settings(), "file": self.label, **fed,
                "input": "MNIST test images" if self.image else "random data",
                "layout": self.image.layout if self.image else "-"}

    def _feed(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        n = len(pixels)
        for inp in self.inputs:
            if inp.batch_fixed is not None and inp.batch_fixed != n:
                raise ConfigError(f"{self.label}: input {inp.name!r} has a fixed batch of {inp.batch_fixed}, "
                                  f"not {n}; bench it with --batch-sizes {inp.batch_fixed}")
        if self.inputs_as_given:  # one input, fed as given (reference inputs of its shape)
            return {self.inputs[0].name: np.asarray(pixels, self.inputs[0].dtype)}
        if self.image is not None:
            return {self.image.name: _pixels_as(pixels, self.image.layout, self.image.dtype, self.prep)}
        seed = int(np.asarray(pixels).reshape(n, -1)[:, :10].sum()) if n else 0  # differs per rotated batch
        return {inp.name: inp.random(n, seed + k) for k, inp in enumerate(self.inputs)}

    def _infer(self, native: dict[str, np.ndarray]) -> list[Any]:
        return self.session.run([self.output_name], native, self.run_options)

    def timed(self, batches: list[np.ndarray], io: str = "host") -> Timed:
        return Runner.timed(self, batches, io)  # inputs from numpy on every device (no I/O binding by name)


class ForeignTorchRunner(_ForeignFile, TorchRunner):
    """A TorchScript file, torch.export program or AOTInductor package no manifest lists: runs its author's
    code. Input float32 in `prep.layout` (auto: [N,1,28,28]); the output is taken as the class scores."""

    def __init__(self, module: Any, label: str, options: RunnerOptions, prep: Preprocessing,
                 runtime: str = "torchscript") -> None:
        super().__init__(module, label, runtime, options)
        self.kind, self.prep = FOREIGN, prep
        self.layout = "nchw" if prep.layout == "auto" else prep.layout

    @property
    def takes_images(self) -> bool:
        return True

    def _host_input(self, pixels: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(_pixels_as(pixels, self.layout, np.float32, self.prep))

    @property
    def failure_hint(self) -> str:
        """A failing call most often means the model takes another layout: which one it was fed, what else to try."""
        how = f"--layout {self.layout}" if self.prep.layout != "auto" else \
            "nchw: the toolkit reads no input shape from a torch file"
        others = [f"{k} [N,{','.join(map(str, v))}]" for k, v in SHAPES.items() if k != self.layout]
        return (f"; it was fed float32[N,{','.join(map(str, SHAPES[self.layout]))}] ({how}): if it takes another "
                f"layout, pass --layout {', '.join(others[:-1])} or {others[-1]} (compare: A,B for the first file "
                "and the rest)")


def open_file(path: str | Path, options: RunnerOptions | None = None, prep: Preprocessing = Preprocessing(),
              shapes: dict[str, tuple[int, ...]] | None = None) -> Runner:
    """A runner for any .onnx, TorchScript, torch.export (.pt2) or AOTInductor file, or a toolkit OpenVINO IR
    (.xml, its .bin beside it). A toolkit .onnx (with its metadata) runs as itself, its own normalization read
    from the file, and a TorchScript, .pt2 or .aoti.pt2 file that a manifest beside it lists as the artifact it
    is, fed as its export says; anything else as a foreign file with `prep` (see `options_taken`)."""
    options = options or RunnerOptions()
    if format_of_file(Path(path).name) == openvino.IR:  # the graph and its .bin, both checked like one file
        return openvino.open_file(str(path), options)
    data, artifact = read_listed_model_file(path)  # checked against a manifest beside it, if there is one
    if data[4:8] in _EDGE_OPENERS:  # a toolkit .pte or .tflite: its metadata is in the file
        return _EDGE_OPENERS[data[4:8]](data, str(path), options)
    if artifact is not None and archive_name(data) is not None:
        return torch_export.open_listed(data, artifact, str(path), options)
    kind = torch_export.archive_kind(data)
    if kind == torch_export.PT2:
        module = torch_export.load_exported(data, options.device, str(path))
        return ForeignTorchRunner(module, str(path), options, prep, runtime="torch-export")
    if kind == torch_export.AOTI:
        module = torch_export.load_aoti(data, options.device, str(path))
        return ForeignTorchRunner(module, str(path), options, prep, runtime="aoti")
    if is_torchscript(data):
        module = load_torchscript(data, options.device, str(path),
                                  what="is neither ONNX nor a loadable TorchScript file")
        return ForeignTorchRunner(module, str(path), options, prep)
    if _has_toolkit_metadata(data):
        return OnnxRuntimeRunner.toolkit_model(data, str(path), options, folder=Path(path).parent)
    return ForeignOnnxRunner(path, options, prep, shapes, data)  # the bytes read: the file is not read again


_EDGE_OPENERS = {_executorch.IDENTIFIER: _executorch.open_bytes, _litert.IDENTIFIER: _litert.open_bytes}
ONNX_RUNTIMES = ("onnxruntime", openvino.RUNTIME, opencv.RUNTIME)  # what can read any .onnx


def options_taken(path: str | Path, shapes: dict[str, tuple[int, ...]] | None = None) -> frozenset[str]:
    """The FILE_OPTIONS `open_file` uses for `path` (its inputs' dimensions given by `shapes`): for a foreign .onnx,
    --shape, and --layout where it is fed MNIST images (not random data), and --mean and --std where those images
    are floats (not raw pixels, as an integer input takes them); the FEEDING ones for a TorchScript, .pt2 or
    .aoti.pt2 file that no manifest lists (the toolkit reads no normalization from it); none for a file that feeds
    itself from its toolkit metadata (a toolkit .onnx, IR, .pte or .tflite) or as its export says (a TorchScript,
    .pt2 or .aoti.pt2 file a manifest lists)."""
    if format_of_file(Path(path).name) == openvino.IR:
        return frozenset()
    data, artifact = read_listed_model_file(path)
    if archive_name(data) is not None:
        return frozenset() if artifact is not None else frozenset(FEEDING)
    if data[4:8] in _EDGE_OPENERS or _has_toolkit_metadata(data):
        return frozenset()
    try:  # its declared inputs, as ONNX Runtime reads them when the file is run (from the bytes read here)
        runner = ForeignOnnxRunner(path, RunnerOptions(threads=1, optimization="none"), shapes=shapes, data=data)
    except (ArtifactError, ConfigError):
        return frozenset(FILE_OPTIONS)  # opening it to run it will say what is wrong
    if not runner.takes_images:
        return frozenset(("shape",))
    return frozenset(FILE_OPTIONS if runner.normalizes else ("shape", "layout"))


def runtimes_for(path: str | Path) -> tuple[str, ...]:
    """The runtimes that can open `path`, from its name and first bytes (nothing is loaded): ONNX Runtime,
    OpenVINO and OpenCV for an .onnx; the one runtime of its format for anything else."""
    if format_of_file(Path(path).name) == openvino.IR:
        return (openvino.RUNTIME,)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] in _EDGE_OPENERS:
        fmt = {_executorch.IDENTIFIER: "executorch", _litert.IDENTIFIER: "tflite"}[head[4:8]]
    elif head[:4] == b"PK\x03\x04":  # a zip: a torch.export or AOTInductor archive, else TorchScript
        fmt = torch_export.archive_kind(read_model_file(path)) or "torchscript"
    else:
        return ONNX_RUNTIMES
    return (FORMATS[fmt].native_runtime,)


def open_in(runtime: str, path: str | Path, options: RunnerOptions, prep: Preprocessing = Preprocessing(),
            shapes: dict[str, tuple[int, ...]] | None = None) -> Runner:
    """`path` in `runtime`: the runtime `open_file` picks for it, or OpenVINO or OpenCV reading an .onnx, fed
    as ONNX Runtime reads its inputs (a toolkit .onnx with its own normalization, any other as a foreign file).
    OpenVINO and OpenCV load the very bytes ONNX Runtime was given (read once, and hash-checked where a manifest
    lists the file), not the file read again."""
    if runtime in (openvino.RUNTIME, opencv.RUNTIME) and runtimes_for(path) == ONNX_RUNTIMES:
        spec = open_file(path, replace(options, device=devices.CPU, threads=1), prep, shapes)
        data = spec.model_bytes if isinstance(spec, OnnxRuntimeRunner) else None
        if data is None:  # no longer an .onnx since its first bytes were read
            raise ArtifactError(f"{path} changed while it was opened; give it again")
        return OnnxElsewhere(runtime, spec, data, options)
    runner = open_file(path, options, prep, shapes)
    if runner.runtime != runtime:
        raise ConfigError(f"{path} runs in {runner.runtime}, not {runtime}")
    return runner


class OnnxElsewhere(Runner):
    """An .onnx in OpenVINO or OpenCV on the CPU. `spec`, the file opened in ONNX Runtime, says how it is fed
    (MNIST pixels or random data) and which outputs are read."""

    def __init__(self, runtime: str, spec: Runner, data: bytes, options: RunnerOptions) -> None:
        super().__init__(spec.label, spec.kind, options)
        self.runtime, self.spec = runtime, spec
        self.mean, self.std = spec.mean, spec.std
        session = spec.session  # type: ignore[attr-defined]
        self.input_names = [i.name for i in session.get_inputs()]
        names = [o.name for o in session.get_outputs()]
        wanted = [spec.output_name] if spec.kind == FOREIGN else names[:len(spec.outputs)]  # type: ignore
        self.output_index = [names.index(n) for n in wanted]
        self.output_names = wanted
        if runtime == openvino.RUNTIME:
            self.compiled = openvino.compile_onnx(data, options, spec.label)
            self.request = self.compiled.create_infer_request()
        else:
            self.net = opencv.read_net(data, options.threads, spec.label)

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.spec.outputs

    @property
    def time_limit_s(self) -> float | None:
        return self.spec.time_limit_s if self.spec.kind == FOREIGN else self.options.time_limit_s

    @property
    def takes_images(self) -> bool:
        return getattr(self.spec, "takes_images", True)

    @property
    def normalizes(self) -> bool:
        return getattr(self.spec, "normalizes", True)

    def settings(self) -> dict[str, Any]:
        words = ({"inference_precision": self.options.mode, "performance_hint": self.options.hint}
                 if self.runtime == openvino.RUNTIME else {})
        fed = {k: v for k, v in self.spec.settings().items() if k in ("file", "input", "layout", "mean", "std")}
        return {"device": "cpu", "threads": self.options.threads, **words, **fed}

    def _feed(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        fed = self.spec._feed(pixels)
        return fed if isinstance(fed, dict) else {self.input_names[0]: fed}

    def _cancel(self) -> bool:
        if self.runtime != openvino.RUNTIME:
            return False  # OpenCV cannot stop a call: the guard ends the process instead
        self.request.cancel()
        return True

    def _infer(self, native: dict[str, np.ndarray]) -> list[Any]:
        if self.runtime == openvino.RUNTIME:
            result = self.request.infer(native)
            return [result[self.compiled.outputs[i]] for i in self.output_index]
        for name, value in native.items():
            self.net.setInput(value, name)
        return list(self.net.forward(self.output_names))

    def timed(self, batches: list[np.ndarray], io: str = "host") -> Timed:
        if self.runtime != openvino.RUNTIME or self.options.hint != "throughput":
            return super().timed(batches, io)
        with run_guard(self):
            inputs = [self._feed(b) for b in batches]
        return openvino.timed_in_flight(self.compiled, inputs, openvino.optimal_requests(self.compiled))


def _has_toolkit_metadata(data: bytes) -> bool:
    """Whether the .onnx is a toolkit model that takes MNIST images. One exported with its own input shape
    (--input-shape) takes no image: it runs like a foreign file, on random data of its declared shape. Read
    without the onnx package, which the inference-only install lacks."""
    meta = onnx_wire.metadata(data)  # not a protobuf: {}, and ONNX Runtime will say why when it tries
    return "toolkit.format_version" in meta and meta.get("preprocessing") != refinputs.PREPROCESSING


def _run_in_batches(runner: Runner, pixels: np.ndarray) -> dict[str, np.ndarray]:
    fixed = next((i.batch_fixed for i in getattr(runner, "inputs", []) if i.batch_fixed), None)
    if not fixed or fixed == len(pixels):
        return runner.run(pixels)
    parts = []
    for start in range(0, len(pixels), fixed):
        chunk = pixels[start:start + fixed]
        padded = np.concatenate([chunk, np.zeros((fixed - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        parts.append({k: v[:len(chunk)] if v.ndim and len(v) == fixed else v for k, v in runner.run(padded).items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def scores(runner: Runner, pixels: np.ndarray) -> tuple[np.ndarray, str]:
    """A runner's class scores [N, 10] for MNIST pixels, and what they are (log_probs, probabilities, logits).
    A file whose input has a fixed batch is run that many images at a time (the last batch padded)."""
    out = _run_in_batches(runner, pixels)
    if SCORES in out:
        values = np.asarray(out[SCORES]).reshape(len(pixels), -1) if out[SCORES].size == len(pixels) * 10 \
            else out[SCORES]
        kind = scores_kind(values)
    elif "log_probs" in out:
        values, kind = out["log_probs"], "log_probs"
    else:
        values, kind = out["probabilities"], "probabilities"
    if values.shape != (len(pixels), 10):
        raise ArtifactError(f"{runner.label} returned shape {tuple(values.shape)}, not [{len(pixels)}, 10]: "
                            "not a 10-class digit classifier")
    return values.astype(np.float64), kind
