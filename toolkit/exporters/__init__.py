"""Builders of exported files: one module per format, named by the `exporter` field of its row in formats.py.

Each format's module has `build(module, precision, options, ctx, tmp, metadata) -> Built`, which writes the
file to `tmp` (the export stage renames it into place once it is complete); `builder(fmt)` finds it from the
format's row, so a new format is one row in formats.py plus one module here. What the builders share lives
in this module: the per-export context, the metadata every file carries, the quiet context manager and the
I/O description of a written file. `triton.py` lays out a Triton repository from the files built here.

This module imports neither torch nor onnx at import time; the format modules need torch.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from toolkit import sysinfo
from toolkit.formats import APP, FORMATS, NORMALIZED, ONNX_FORMATS
from toolkit.preprocess import MEAN, STD
from toolkit.refinputs import MNIST_SHAPE, PREPROCESSING, is_mnist, layout

CLASS_LABELS = [str(d) for d in range(10)]

# What a file's metadata says about its input and output, per input kind.
_IO_TEXT = {
    NORMALIZED: {
        "input_layout": "N,C,H,W with C=1, H=W=28", "input_dtype": "float32",
        "preprocessing": "x = (pixel / 255 - mean) / std, white digit on black, 28x28",
        "output": "log_probs: float32 [N,10] natural-log class probabilities (log_softmax)"},
    APP: {
        "input_layout": "N,H,W (raw pixels)", "input_dtype": "uint8",
        "preprocessing": "none: 0-255 grayscale pixels, white digit on black, 28x28",
        "output": "probabilities: float32 [N,10] softmax; digit: int64 [N] argmax"},
}
# The I/O of a file whose graph cannot be read without running it (TorchScript), per input kind.
_IO_SPEC = {
    NORMALIZED: ([{"name": "image", "shape": ["batch", 1, 28, 28], "dtype": "float32"}],
                 [{"name": "log_probs", "shape": ["batch", 10], "dtype": "float32"}]),
    APP: ([{"name": "pixels", "shape": ["batch", 28, 28], "dtype": "uint8"}],
          [{"name": "probabilities", "shape": ["batch", 10], "dtype": "float32"},
           {"name": "digit", "shape": ["batch"], "dtype": "int64"}]),
}


class BuildOptions(Protocol):
    """The export settings a builder reads (the export stage's ExportConfig has them all)."""

    opset: int
    simplify: bool
    data_dir: str
    calibration_size: int
    quant_format: str
    quant_activation: str
    per_channel: bool
    seed: int


@dataclass
class ExportContext:
    """What every builder may need, computed once per export."""

    checkpoint_path: str
    checkpoint_sha256: str
    ckpt: dict[str, Any]
    fp32_onnx: Any = None  # the fp32 ModelProto, reused by int8 quantization
    calibration_images: int = 0  # how many training images int8 calibration really used
    int8_variant: dict[str, Any] = field(default_factory=dict)  # which int8 graph the onnx file got, and why
    input_shape: tuple[int, ...] = MNIST_SHAPE  # one sample's shape: normalized MNIST unless --input-shape
    reference_inputs: Any = None  # float32 [K, *input_shape] (--inputs), for a model of another input shape
    # calibration.Calibration: the own inputs that calibrate int8 for a model of another input shape
    own_calibration: Any = None

    def example(self, batch: int = 2, device: str = "cpu") -> Any:
        """A zero batch of `batch` samples to trace with (2 by default: torch.export specializes a batch of 1)."""
        import torch

        return torch.zeros(batch, *self.input_shape, device=device)


@dataclass
class Built:
    """What a builder tells the manifest about the file it wrote."""

    settings: dict[str, Any] = field(default_factory=dict)
    opset: int | None = None  # None for a format that is not an ONNX graph
    # the companion files written beside `tmp` (in the order of the format's companions), which the export
    # stage hashes and renames into place with the main file
    parts: list[Path] = field(default_factory=list)
    io: tuple[list[dict], list[dict]] | None = None  # (inputs, outputs) when not the input kind's own (io_spec)


Build = Callable[[Any, str, BuildOptions, ExportContext, Path, dict], Built]


def scratch_path(tmp: Path, suffix: str) -> Path:
    """A not-yet-existing path beside `tmp` for a companion file the builder writes (removed if left over)."""
    return tmp.with_name(f"{tmp.name}{suffix}")


def builder(fmt: str) -> Build:
    """The `build` function of a format's module, found from its row in formats.py."""
    return importlib.import_module(f"toolkit.exporters.{FORMATS[fmt].exporter}").build


def quiet() -> contextlib.ExitStack:
    """Silence the exporters' progress prints, deprecation warnings and torch's log warnings (AOTInductor's
    compiler notes): they are not the user's concern; a failure still raises."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    torch_log = logging.getLogger("torch")
    stack.callback(torch_log.setLevel, torch_log.level)
    torch_log.setLevel(logging.ERROR)
    return stack


def metadata(ctx: ExportContext, fmt: str, precision: str) -> dict[str, str]:
    """The self-description stored in every artifact (ONNX metadata_props / TorchScript extra file / OpenVINO
    rt_info)."""
    text = _IO_TEXT[FORMATS[fmt].kind]
    mean, std = MEAN, STD
    if not is_mnist(ctx.input_shape):  # the model's own input: nothing normalizes it ((x - 0) / 1)
        text = {**text, "input_layout": layout(ctx.input_shape), "preprocessing": PREPROCESSING}
        mean, std = 0.0, 1.0
    v = sysinfo.versions("torch", "onnx")
    return {
        "toolkit.format_version": "1",
        "model": ctx.ckpt["model"]["name"],
        "artifact_format": fmt,
        "precision": precision,
        "input_layout": text["input_layout"],
        "input_dtype": text["input_dtype"],
        "preprocessing": text["preprocessing"],
        "mean": str(mean),
        "std": str(std),
        "labels": json.dumps(CLASS_LABELS),
        "output": text["output"],
        "source_checkpoint_sha256": ctx.checkpoint_sha256,
        "test_accuracy": str(ctx.ckpt.get("metrics", {}).get("test_accuracy", "")),
        "toolkit_version": v["toolkit"],
        "torch_version": v.get("torch", ""),
        "onnx_version": v.get("onnx", ""),
    }


def fixed_io(fmt: str, batch: int, dtype: str = "float32", input_shape: tuple[int, ...] = MNIST_SHAPE
             ) -> tuple[list[dict], list[dict]]:
    """The input kind's I/O with the batch fixed at `batch` and tensors of `dtype` (a file of fixed shape),
    its samples of `input_shape`."""
    inputs, outputs = _kind_io(fmt, input_shape)
    for spec in inputs + outputs:
        spec["shape"][0], spec["dtype"] = batch, dtype
    return inputs, outputs


def _kind_io(fmt: str, input_shape: tuple[int, ...]) -> tuple[list[dict], list[dict]]:
    """The input kind's own I/O, with samples of `input_shape`."""
    inputs, outputs = copy.deepcopy(_IO_SPEC[FORMATS[fmt].kind])
    if not is_mnist(input_shape):
        inputs[0]["shape"] = ["batch", *input_shape]
    return inputs, outputs


def io_spec(fmt: str, path: Path, input_shape: tuple[int, ...] = MNIST_SHAPE) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of a written file as name/shape/dtype dicts: read from the graph of an ONNX file,
    the input kind's own (with `input_shape` per sample) for any other."""
    if fmt not in ONNX_FORMATS:
        return _kind_io(fmt, input_shape)
    import onnx
    from onnx import helper

    graph = onnx.load(str(path)).graph

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    return describe(graph.input), describe(graph.output)
