"""The torch-free app API: a toolkit .onnx (or OpenVINO IR, or .tflite) used from numpy, and digits for images.

This is what an app that embeds the exported .onnx needs: it imports only onnxruntime, numpy and Pillow
(never torch), and reads everything it must know (normalization, layout, labels) from the file itself.
The session itself is built by `toolkit.runners.onnxruntime` (on exactly the device asked for); an IR (.xml,
with its .bin beside it) runs in OpenVINO on the CPU instead (`toolkit.runners.openvino`, also torch-free), and
a .tflite in LiteRT's interpreter on the CPU (`toolkit.runners.litert`, numpy only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.errors import ArtifactError, ConfigError
from toolkit.formats import ONNX_FORMATS, format_of_file
from toolkit.model_files import read_model_file
from toolkit.preprocess import load_image
from toolkit.refinputs import PREPROCESSING
from toolkit.runners import Runner, RunnerOptions, litert, openvino
from toolkit.runners.base import DEFAULT_TIME_LIMIT_S
from toolkit.runners.onnxruntime import ModelInfo, OnnxRuntimeRunner

__all__ = ["Classifier", "ModelInfo", "Prediction", "predict_files"]


class Classifier:
    """A toolkit .onnx, IR or .tflite, used from numpy: raw 28x28 uint8 digits in, probabilities out.

    The file is read once and its bytes loaded (see `read_model_file`: checked against a manifest beside it).
    `session` and `info` are ONNX Runtime's (None for an IR or a .tflite).
    """

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int | None = None,
                 time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> None:
        self.path = Path(path)
        options = RunnerOptions(device=provider, threads=threads, time_limit_s=time_limit_s)
        fmt = format_of_file(self.path.name)
        if fmt is not None and fmt not in (*ONNX_FORMATS, openvino.IR, litert.FORMAT):
            raise ConfigError(f"{self.path} is in the {fmt} format, which needs torch to run; predict runs .onnx, "
                              "OpenVINO IR (.xml) and .tflite files (use toolkit verify or compare for the others)")
        if fmt in (openvino.IR, litert.FORMAT):
            if provider != "cpu":
                raise ConfigError(f"{self.path} is in the {fmt} format, which runs on the CPU only, not {provider}")
            self.runner: Runner = (openvino.open_file(str(self.path), options) if fmt == openvino.IR
                                   else litert.open_bytes(read_model_file(self.path), str(self.path), options, fmt))
            self.session, self.info = None, None
        else:
            self.runner = OnnxRuntimeRunner.toolkit_model(read_model_file(self.path), str(self.path), options,
                                                          folder=self.path.parent)
            self.session, self.info = self.runner.session, self.runner.info
        if self.runner.metadata.get("preprocessing") == PREPROCESSING:  # whatever its format and input shape
            raise ConfigError(f"{self.path} was exported with --input-shape: it takes its model's own inputs, not "
                              "28x28 digit images; predict classifies digits (toolkit verify and compare run models "
                              "of other inputs)")
        if self.session is not None:
            shape = list(self.session.get_inputs()[0].shape)
            if shape[1:] not in ([1, 28, 28], [28, 28]):  # not a digit model's input
                raise ConfigError(f"{self.path} takes inputs of shape {shape}, not 28x28 digit images; predict "
                                  "classifies digits (toolkit verify and compare run models of other inputs)")

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N, 28, 28] (white digit on black) -> float32 class probabilities [N, 10].

        The model's first output is read as what its metadata declares (log-probabilities, logits or
        probabilities; by default what its input kind gives) and converted to probabilities; ArtifactError when
        the result does not keep the contract: ten values in [0, 1] per image, summing to 1 within 1e-3.
        """
        pixels = np.asarray(pixels, dtype=np.uint8).reshape(-1, 28, 28)
        out = self.runner.run(pixels)
        default = "probabilities" if "probabilities" in out else "log_probs"
        kind = (self.info.scores if self.info else None) or default  # an IR: what its input kind gives
        values = np.asarray(out[default], dtype=np.float64)
        if values.shape != (len(pixels), 10):
            raise ArtifactError(f"{self.path} returned outputs of shape {tuple(values.shape)}, not "
                                f"[{len(pixels)}, 10]: not a 10-class digit model")
        probs = _as_probabilities(values, kind)
        check_probabilities(probs, f"{self.path} (its output read as {kind})")
        return probs.astype(np.float32)


def _as_probabilities(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "probabilities":
        return values
    if np.isnan(values).any() or np.isposinf(values).any() or np.isneginf(values).all(1).any():
        return np.full_like(values, np.nan)  # refused by the contract check, not turned into something that passes
    if kind == "log_probs":
        return np.exp(values)
    shifted = values - values.max(1, keepdims=True)  # logits: a numerically safe softmax
    e = np.exp(shifted)
    return e / e.sum(1, keepdims=True)


def check_probabilities(probs: np.ndarray, what: str) -> None:
    """ArtifactError unless every row is ten finite values in [0, 1] that sum to 1 within 1e-3."""
    if not np.isfinite(probs).all():
        raise ArtifactError(f"{what} gives NaN or infinite values, not probabilities; it is not a usable model")
    low, high = float(probs.min()), float(probs.max())
    sums = probs.sum(1)
    worst = float(sums[np.abs(sums - 1).argmax()]) if len(sums) else 1.0
    if low < 0 or high > 1 or abs(worst - 1) > 1e-3:
        raise ArtifactError(f"{what} gives values from {low:.4g} to {high:.4g} with a row summing to {worst:.4g}: "
                            "not probabilities (ten values in [0, 1] summing to 1); not a usable digit model")


@dataclass
class Prediction:
    file: str
    digit: int
    probability: float
    probabilities: list[float]


def predict_files(paths: list[str | os.PathLike], model: str | os.PathLike, invert: bool | None = None,
                  provider: str = "cpu", time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> list[Prediction]:
    """Classify image files with a toolkit .onnx, IR or .tflite: every image is read first, so a bad file fails
    fast."""
    pixels = np.stack([load_image(p, invert) for p in paths])
    probs = Classifier(model, provider, time_limit_s=time_limit_s).predict_proba(pixels)
    return [Prediction(file=str(p), digit=int(row.argmax()), probability=_rounded(row.max()),
                       probabilities=[_rounded(v) for v in row]) for p, row in zip(paths, probs)]


def _rounded(probability) -> float:
    """The one rounding rule for probabilities in predict's JSON, so the top one equals the largest listed."""
    return round(float(probability), 6)
