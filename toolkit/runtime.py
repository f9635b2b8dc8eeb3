"""Torch-free inference: ONNX Runtime sessions and toolkit models from numpy (images: `toolkit.preprocess`).

This is what an app that embeds the exported .onnx needs: it imports only onnxruntime, numpy and Pillow
(never torch), and reads everything it must know (normalization, layout, labels) from the file itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import ArtifactError, ConfigError, ProviderUnavailable
from toolkit.preprocess import load_image

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_PROVIDER_LIBS = {"cuda": "libonnxruntime_providers_cuda.so", "tensorrt": "libonnxruntime_providers_tensorrt.so"}


def _ort():
    import onnxruntime

    return onnxruntime


def _why_provider_fails(provider: str) -> str:
    """Load the provider's shared library ourselves: its loader error names the missing CUDA/TensorRT library."""
    ort = _ort()
    lib = Path(ort.__file__).parent / "capi" / _PROVIDER_LIBS.get(provider, "")
    if not lib.is_file():
        return f"this onnxruntime build has no {lib.name}; install onnxruntime-gpu"
    try:
        ctypes.CDLL(str(lib))
    except OSError as e:
        return str(e)
    return "the provider library loads, but no usable GPU or driver was found"


def check_provider(provider: str, *also: str) -> None:
    """ConfigError unless `provider` names a known provider (or one of `also`, such as 'all')."""
    if provider not in PROVIDERS and provider not in also:
        raise ConfigError(f"unknown provider {provider!r}; choose one of: {', '.join([*PROVIDERS, *also])}")


def create_session(model: str | os.PathLike | bytes, provider: str = "cpu", *, threads: int | None = None,
                   cuda_graph: bool = False, optimization: str = "all", label: str = ""):
    """An InferenceSession on exactly `provider`, or ProviderUnavailable saying what is missing.

    `model` is a path, or the model's bytes (already hash-checked; `label` then names it in errors).

    ONNX Runtime silently falls back to the CPU when a GPU provider cannot load; this checks
    `session.get_providers()` so nothing labelled CUDA ever runs on the CPU.
    """
    ort = _ort()
    check_provider(provider)
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        raise ProviderUnavailable(f"ONNX Runtime {ort.__version__} here offers "
                                  f"{', '.join(ort.get_available_providers())}, not {name}; "
                                  "install onnxruntime-gpu on a machine with a GPU")
    if provider != "cpu":
        ort.set_default_logger_severity(4)  # a provider that fails to load is reported below, in one line
    if provider != "cpu" and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # finds the CUDA/cuDNN libraries that pip's nvidia-* packages (or torch) ship
        except Exception:
            pass
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # ORT's warnings are noise here; errors become ArtifactError/ProviderUnavailable
    provider_options: dict[str, Any] = {}
    if cuda_graph:
        if provider != "cuda":
            raise ConfigError("CUDA graphs need --provider cuda")
        provider_options["enable_cuda_graph"] = "1"
    providers = [(name, provider_options)] + ([] if provider == "cpu" else ["CPUExecutionProvider"])
    if isinstance(model, bytes):  # already read and hash-checked by the caller
        source, path = model, Path(label or "the model")
    else:
        path = Path(model)
        if not path.is_file():
            raise ArtifactError(f"model file {path} does not exist; run `toolkit export` first")
        source = str(path)
    if not source or (isinstance(source, str) and path.stat().st_size == 0):
        raise ArtifactError(f"{path} is empty; export it again")
    try:
        # ORT prints "EP Error ... Falling back" itself when a GPU provider fails; the check below says it better
        with contextlib.redirect_stdout(io.StringIO()):
            session = ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types for unreadable or invalid models
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {_ort_message(e)}") from None
    if session.get_providers()[0] != name:
        raise ProviderUnavailable(f"{name} failed to load, ONNX Runtime would silently use the CPU: "
                                  f"{_why_provider_fails(provider)}")
    return session


def _ort_message(e: Exception) -> str:
    """ONNX Runtime's error text without its status prefix and C++ source location."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"\S*onnxruntime_src/\S+:\d+ \S+?\(.*?\) ", "", text)
    return text[:300]


@dataclass(frozen=True)
class ModelInfo:
    """What a toolkit .onnx says about itself."""

    kind: str  # "normalized" (float32 [N,1,28,28] -> log_probs) or "app" (uint8 [N,28,28] -> probabilities, digit)
    input_name: str
    output_names: tuple[str, ...]
    mean: float
    std: float
    labels: tuple[str, ...]
    metadata: dict[str, str]


def describe(session, path: str | os.PathLike = "") -> ModelInfo:
    """Check that `session` holds a toolkit MNIST model and read its I/O contract from the metadata."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "toolkit.format_version" not in meta:
        raise ArtifactError(f"{path or 'the model'} is not a toolkit model (no toolkit metadata); "
                            "export one with `toolkit export`")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ArtifactError(f"{path} has {len(inputs)} inputs; toolkit models take one image tensor")
    inp = inputs[0]
    shape = list(inp.shape)
    if inp.type == "tensor(uint8)" and shape[1:] == [28, 28]:
        kind = "app"
    elif inp.type == "tensor(float)" and shape[1:] == [1, 28, 28]:
        kind = "normalized"
    else:
        raise ArtifactError(f"{path}: input {inp.name!r} is {inp.type} {shape}; toolkit models take "
                            "float32 [N,1,28,28] or uint8 [N,28,28]")
    try:
        labels = tuple(json.loads(meta.get("labels", "[]"))) or tuple(str(d) for d in range(10))
        mean, std = float(meta["mean"]), float(meta["std"])
    except (KeyError, ValueError) as e:
        raise ArtifactError(f"{path}: toolkit metadata is incomplete ({e})") from None
    return ModelInfo(kind, inp.name, tuple(o.name for o in session.get_outputs()), mean, std, labels, meta)


class Classifier:
    """A toolkit .onnx, used from numpy: raw 28x28 uint8 digits in, probabilities out.

    The file is read once and its bytes loaded (see `read_model_file`: checked against a manifest beside it).
    """

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int | None = None) -> None:
        from toolkit.backends import OnnxRuntimeRunner, RunnerOptions

        self.path = Path(path)
        self.runner = OnnxRuntimeRunner(read_model_file(self.path), str(self.path),
                                        RunnerOptions(device=provider, threads=threads))
        self.session, self.info = self.runner.session, self.runner.info

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N, 28, 28] (white digit on black) -> float32 class probabilities [N, 10].

        ArtifactError when the model does not keep the toolkit's contract (10 finite probabilities per image).
        """
        pixels = np.asarray(pixels, dtype=np.uint8).reshape(-1, 28, 28)
        out = self.runner.run(pixels)
        probs = out["probabilities"] if "probabilities" in out else np.exp(out["log_probs"])
        if probs.shape != (len(pixels), 10):
            raise ArtifactError(f"{self.path} returned outputs of shape {tuple(probs.shape)}, not "
                                f"[{len(pixels)}, 10]: not a 10-class digit model")
        if not np.isfinite(probs).all():
            raise ArtifactError(f"{self.path} returned NaN or infinite probabilities; export it again")
        return probs


def read_model_file(path: str | os.PathLike) -> bytes:
    """The bytes of a .onnx to load. When its folder holds a manifest.json, the file must be listed there and
    match its SHA-256 (checked before anything parses it); a loose .onnx with no manifest beside it is read as is.
    """
    from toolkit.artifacts import MANIFEST_NAME, read_manifest, read_verified

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model file {path} does not exist; run `toolkit export` first")
    manifest = path.parent / MANIFEST_NAME
    if not manifest.exists() and not manifest.is_symlink():  # a manifest.json that is no file is refused, not skipped
        try:
            return path.read_bytes()
        except OSError as e:
            raise ArtifactError(f"cannot read {path}: {e.strerror or e}") from None
    listed = [a for a in read_manifest(path.parent) if a.file == path.name]
    if not listed:
        raise ArtifactError(f"{path} is not listed in the {MANIFEST_NAME} beside it; refusing to load it, "
                            "export again or move it out of that folder")
    return read_verified(listed[0])


@dataclass
class Prediction:
    file: str
    digit: int
    probability: float
    probabilities: list[float]


def predict_files(paths: list[str | os.PathLike], model: str | os.PathLike, invert: bool | None = None,
                  provider: str = "cpu") -> list[Prediction]:
    """Classify image files with a toolkit .onnx: every image is read first, so a bad file fails fast."""
    pixels = np.stack([load_image(p, invert) for p in paths])
    probs = Classifier(model, provider).predict_proba(pixels)
    return [Prediction(file=str(p), digit=int(row.argmax()), probability=_rounded(row.max()),
                       probabilities=[_rounded(v) for v in row]) for p, row in zip(paths, probs)]


def _rounded(probability) -> float:
    """The one rounding rule for probabilities in predict's JSON, so the top one equals the largest listed."""
    return round(float(probability), 6)
