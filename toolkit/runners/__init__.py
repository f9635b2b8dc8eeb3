"""Runners: one interface over every runtime the toolkit proves and times its exports on.

A runner is opened for one runtime and device from an exported artifact (or, for the PyTorch eager
baseline, from the checkpoint); see `base.Runner`. verify, bench, compare and predict use nothing else, so a
new runtime is one module here (a loader that turns hash-checked bytes into the runtime's object, and a
runner class that takes it) plus one row in RUNTIMES.

A runner opened from a manifest artifact loads the hash-checked bytes (artifacts.read_verified), never
the path: what runs is exactly what was hashed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from toolkit import devices, formats, sysinfo
from toolkit.artifacts import Artifact, select
from toolkit.errors import ArtifactError, ConfigError, ProviderUnavailable
from toolkit.runners import executorch as _executorch
from toolkit.runners import litert as _litert
from toolkit.runners import onnxruntime as _ort
from toolkit.runners import opencv as _opencv
from toolkit.runners import openvino as _openvino
from toolkit.runners import torch as _torch
from toolkit.runners import torch_export as _torch_export
from toolkit.runners.base import IO_MODES, Runner, RunnerOptions, Timed, run_guard

if TYPE_CHECKING:
    from toolkit.checkpoint import RecordedCheckpoint

__all__ = ["IO_MODES", "NATIVE_RUNTIMES", "NO_NATIVE_MODE", "OPENVINO_HINTS", "RUNTIMES", "Run", "Runner",
           "RunnerOptions", "Runtime", "Selection", "Timed", "baseline_selected", "choose_modes", "modes_to_run",
           "open_runner", "open_timed", "run_guard", "runs", "runtime_versions", "select_runtimes", "would_run"]

OPENVINO_HINTS = _openvino.HINTS
PYTORCH = "pytorch"  # the eager baseline's "format": the checkpoint itself

Opener = Callable[[Any, RunnerOptions], Runner]


@dataclass(frozen=True)
class Runtime:
    """One row of RUNTIMES: what a runtime opens, where it runs, and how to open it."""

    name: str
    module: str  # import name; the runtime counts as installed when it can be found
    packages: tuple[str, ...]  # distributions that provide it; the first installed one gives the version
    formats: tuple[str, ...]  # artifact formats it opens (PYTORCH: the checkpoint itself)
    precisions: tuple[str, ...]  # artifact precisions it opens
    devices: tuple[str, ...]
    modes: tuple[str, ...]  # compute modes offered (formats.MODES); the first is the default
    tunes: tuple[str, ...]  # the bench settings that apply: optimization, concurrency, io, cuda_graph, mode, hint
    description: str
    open: Opener  # (artifact or checkpoint path, options) -> Runner
    extra: str = ""  # the toolkit extra that installs it (pyproject.toml); "": the base install has it

    @property
    def install_hint(self) -> str:
        return f"pip install 'toolkit[{self.extra}]'" if self.extra else f"pip install {self.packages[0]}"

    def installed(self) -> bool:
        return sysinfo.installed(self.module)

    def version(self) -> str | None:
        for package in self.packages:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                return importlib.metadata.version(package)
        return None

    def opens(self, fmt: str, precision: str) -> bool:
        return fmt in self.formats and precision in self.precisions


_F32 = (formats.DEFAULT_MODE,)
_GPU = tuple(devices.DEVICES)
RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("onnxruntime", "onnxruntime", ("onnxruntime-gpu", "onnxruntime"), formats.ONNX_FORMATS, formats.PRECISIONS,
            _GPU, _F32, ("optimization", "concurrency", "io", "cuda_graph"),
            "ONNX Runtime (CPU, CUDA and TensorRT providers)", _ort.open_artifact),
    Runtime(PYTORCH, "torch", ("torch",), (PYTORCH,), ("fp32",), ("cpu", "cuda"), _F32, ("io",),
            "PyTorch eager, from the checkpoint", _torch.open_eager, "train"),
    Runtime("torchscript", "torch", ("torch",), ("torchscript",), formats.FORMATS["torchscript"].precisions,
            ("cpu", "cuda"), _F32, ("io",), "the TorchScript archive in torch", _torch.open_scripted, "train"),
    Runtime("torch-export", "torch", ("torch",), ("pt2",), formats.FORMATS["pt2"].precisions, ("cpu", "cuda"), _F32,
            ("io",), "the torch.export program (.pt2) in torch", _torch_export.open_exported, "train"),
    Runtime("aoti", "torch", ("torch",), ("aoti",), formats.FORMATS["aoti"].precisions, ("cpu", "cuda"), _F32,
            ("io",), "the AOTInductor package's compiled model, loaded by torch", _torch_export.open_aoti, "train"),
    Runtime("openvino", "openvino", ("openvino",), (*formats.ONNX_FORMATS, _openvino.IR), formats.PRECISIONS, ("cpu",),
            formats.MODES, ("mode", "hint"), "OpenVINO on the CPU, reading its IR or the .onnx",
            _openvino.open_artifact, "runtimes"),
    Runtime("opencv", "cv2", ("opencv-python-headless", "opencv-python", "opencv-contrib-python"),
            formats.ONNX_FORMATS, ("fp32",), ("cpu",), _F32, (), "OpenCV DNN on the CPU", _opencv.open_artifact,
            "runtimes"),
    Runtime("executorch", "executorch", ("executorch",), ("executorch",), ("fp32", "int8"), ("cpu",), _F32,
            (), "ExecuTorch with the XNNPACK delegate, on the CPU", _executorch.open_artifact, "executorch"),
    Runtime("litert", "ai_edge_litert", ("ai-edge-litert",), ("tflite",), ("fp32", "int8"), ("cpu",),
            _F32, (), "LiteRT's interpreter (XNNPACK) on the CPU", _litert.open_artifact, "litert"),
)}
# what verify uses unless told: each artifact's own runtime (formats.FORMATS[f].native_runtime)
NATIVE_RUNTIMES = tuple(dict.fromkeys(f.native_runtime for f in formats.FORMATS.values()))


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
            raise ConfigError(f"runtime {name} is not installed here; {spec.install_hint}")
        else:
            selection.skipped[name] = f"not installed ({spec.install_hint})"
    return selection


def runtime_versions(names: list[str]) -> dict[str, str]:
    """{runtime: installed version} for the given runtimes."""
    return {n: RUNTIMES[n].version() or "unknown" for n in names}


class Run(NamedTuple):
    """One source in one runtime and compute mode: what verify checks and bench times."""

    runtime: str
    source: Artifact | RecordedCheckpoint | str  # an artifact, or the checkpoint for the PyTorch eager baseline
    mode: str = formats.DEFAULT_MODE

    @property
    def format(self) -> str:
        return self.source.format if isinstance(self.source, Artifact) else PYTORCH

    @property
    def precision(self) -> str:
        return self.source.precision if isinstance(self.source, Artifact) else "fp32"


def modes_to_run(named: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The compute modes named, else f32 plus every mode this CPU computes natively (bf16 with AVX512-BF16 or
    AMX): where bf16 is emulated it is slower than f32, so nobody would deploy that mode there."""
    if named:
        return named
    return formats.MODES if sysinfo.native_bf16() else (formats.DEFAULT_MODE,)


NO_NATIVE_MODE = (f"this CPU has no native bf16 ({' or '.join(sysinfo.NATIVE_BF16_FLAGS)}): OpenVINO would "
                  "emulate it, slower than f32, or compute f32; --mode f32,bf16 runs it anyway")


def choose_modes(todo: list[Run], named: tuple[str, ...] = ()) -> tuple[list[Run], dict[str, str]]:
    """The runs to do of `todo`: in a runtime with several compute modes (OpenVINO), each fp32 file at the modes
    `named`, else at modes_to_run()'s; every other run as it is. A mode left out by default (one this CPU only
    emulates) gets a note, keyed 'runtime mode'."""
    wanted = modes_to_run(named)
    kept, notes = [], {}
    for run in todo:
        if run.precision != "fp32" or len(RUNTIMES[run.runtime].modes) < 2 or run.mode in wanted:
            kept.append(run)
        elif not named:
            notes[f"{run.runtime} {run.mode}"] = NO_NATIVE_MODE
    return kept, notes


def baseline_selected(wanted_formats: list[str] | None, wanted_precisions: list[str] | None) -> bool:
    """Whether the formats and precisions selected (none: all) take in the PyTorch eager baseline's, pytorch/fp32."""
    return (not wanted_formats or PYTORCH in wanted_formats) and (not wanted_precisions or "fp32" in wanted_precisions)


def _sources(spec: Runtime, chosen: list[Artifact], checkpoint: RecordedCheckpoint | str | None,
             wanted_formats: list[str] | None, wanted_precisions: list[str] | None,
             native_only: bool = False) -> list[Artifact | RecordedCheckpoint | str]:
    if PYTORCH in spec.formats:
        return [checkpoint] if checkpoint and baseline_selected(wanted_formats, wanted_precisions) else []
    return [a for a in chosen if spec.opens(a.format, a.precision)
            and (not native_only or formats.FORMATS[a.format].native_runtime == spec.name)]


def runs(artifacts: list[Artifact], runtimes: list[str], device: str, formats: list[str] | None = None,
         precisions: list[str] | None = None, checkpoint: RecordedCheckpoint | str | None = None,
         native_only: bool = False) -> tuple[list[Run], dict[str, str]]:
    """Every (runtime, source, mode) to run on `device`: each runtime with each selected artifact it opens (with
    `native_only`, each artifact in its format's own runtime only; the 'pytorch' runtime with `checkpoint`, when
    given); a runtime that would run something but cannot run on `device` is skipped with a note. A runtime's extra
    compute modes (OpenVINO bf16) apply to the fp32 files, where they change something."""
    chosen = select(artifacts, formats, precisions)
    out, skipped = [], {}
    for name in runtimes:
        spec = RUNTIMES[name]
        sources = _sources(spec, chosen, checkpoint, formats, precisions, native_only)
        if sources and device not in spec.devices:
            skipped[name] = f"runs on {', '.join(spec.devices)}, not {device}"
            continue
        for source in sources:
            run = Run(name, source)
            out += [run._replace(mode=m) for m in (spec.modes if run.precision == "fp32" else spec.modes[:1])]
    return out, skipped


def would_run(selection: Selection, artifacts: list[Artifact], devices: list[str], formats: list[str] | None = None,
              precisions: list[str] | None = None, baseline: bool = False,
              native_only: bool = False) -> dict[str, list[Artifact]]:
    """Of the runtimes `selection` left out as not installed, those that would have run something selected here on
    one of `devices`, each with the artifacts it would have run. With `baseline`, the PyTorch eager baseline counts
    too where its format is selected; it runs the checkpoint, so it lists no artifact. A note about any other runtime
    would only be noise."""
    out: dict[str, list[Artifact]] = {}
    for device in devices:
        todo, _ = runs(artifacts, list(selection.skipped), device, formats, precisions, native_only=native_only)
        for run in todo:
            sources = out.setdefault(run.runtime, [])
            if run.source not in sources:  # once, whatever the modes and devices it would run at
                sources.append(run.source)
    if (baseline and PYTORCH in selection.skipped and baseline_selected(formats, precisions)
            and set(devices) & set(RUNTIMES[PYTORCH].devices)):
        out[PYTORCH] = []
    return out


def open_runner(runtime: str, source: Artifact | RecordedCheckpoint | str,
                options: RunnerOptions | None = None) -> Runner:
    """Open `source` (an artifact, or the checkpoint for 'pytorch') in `runtime`, timing nothing."""
    options = options or RunnerOptions()
    spec = RUNTIMES[runtime]
    devices.check(options.device)
    if options.device not in spec.devices:
        raise ProviderUnavailable(f"{runtime} runs on {', '.join(spec.devices)}, not {options.device}")
    if isinstance(source, Artifact) and not spec.opens(source.format, source.precision):
        raise ArtifactError(f"{runtime} does not open {source.label} files")
    return spec.open(source, options)


def open_timed(runtime: str, source: Artifact | RecordedCheckpoint | str,
               options: RunnerOptions) -> tuple[Runner, float]:
    """A runner and how long opening it took, in milliseconds."""
    t0 = time.perf_counter()
    runner = open_runner(runtime, source, options)
    return runner, (time.perf_counter() - t0) * 1e3
