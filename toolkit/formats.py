"""The toolkit's vocabulary: every exported format and precision, in one table.

export, verify, bench, compare, predict and the CLI read this table and nothing else to know what a format
is called, what its file is named, which precisions it has, what its input is and which runtime runs it
natively. Adding a format is one row here plus one module in `toolkit/exporters/`; a runtime states which
of these formats it opens in its own row (`toolkit/runners/__init__.py`).

Torch-free and import-free: the bottom floor, read by apps that never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.errors import ConfigError

# Precisions a file can have, from the most exact to the least. A run is judged at the lower of its file's
# precision and the runtime's compute mode (OpenVINO's bf16 mode makes an fp32 file a bf16 run), and the
# tolerance it must meet is that precision's.
PRECISION_ORDER = ("fp32", "fp16", "bf16", "int8")
PRECISIONS = ("fp32", "fp16", "int8")  # what export writes (bf16 only ever comes from a runtime's mode)

# Runtime compute modes (OpenVINO's inference precision hint) and the precision each amounts to.
MODE_PRECISION = {"f32": "fp32", "bf16": "bf16"}
MODES = tuple(MODE_PRECISION)
DEFAULT_MODE = "f32"

# Input kinds: what a toolkit model takes and what it returns.
NORMALIZED = "normalized"  # float32 [N, 1, 28, 28] normalized with the file's mean/std -> log_probs [N, 10]
APP = "app"  # raw uint8 pixels [N, 28, 28] -> probabilities [N, 10], digit [N]
OUTPUTS = {NORMALIZED: ("log_probs",), APP: ("probabilities", "digit")}

# How ONNX files are written, and the defaults of `toolkit export` (here, not in export.py, so that the CLI
# can show them without importing torch).
DEFAULT_OPSET = 20
MIN_OPSET, MAX_OPSET = 18, 23  # torch's exporter emits opset 18 natively; 23 is the newest it converts to
QUANT_FORMATS = ("qdq", "qoperator")  # int8 graph forms; the first is the default
QUANT_ACTIVATIONS = ("u8", "s8")  # int8 activation types (weights are always s8); the first is the default
DEFAULT_CALIBRATION_SIZE = 500  # training images that calibrate int8


@dataclass(frozen=True)
class Format:
    """One row of FORMATS."""

    name: str
    suffix: str  # the file name is "model" + (".<precision>" unless fp32) + suffix
    precisions: tuple[str, ...]
    kind: str  # NORMALIZED or APP
    native_runtime: str  # the runtime verify proves it in unless told otherwise
    exporter: str  # the module of toolkit.exporters that builds it (imported only when exporting: needs torch)
    description: str
    is_code: bool = False  # loading the file can run code it carries (TorchScript, pt2, aoti): load only trusted ones
    # suffixes of the files that come with the main one (OpenVINO IR: the .bin weights beside the .xml graph);
    # each is named like the main file and listed in the manifest with its own size and SHA-256
    companions: tuple[str, ...] = ()

    def file_name(self, precision: str) -> str:
        """model.onnx, model.fp16.onnx, model.int8.onnx, model.app.onnx, model.ts.pt, model.pt2, model.aoti.pt2,
        model.xml."""
        return "model" + ("" if precision == "fp32" else f".{precision}") + self.suffix

    def companion_names(self, precision: str) -> tuple[str, ...]:
        """The companion files of `file_name(precision)`: model.bin beside model.xml."""
        stem = self.file_name(precision)[:-len(self.suffix)]
        return tuple(stem + suffix for suffix in self.companions)

    @property
    def outputs(self) -> tuple[str, ...]:
        return OUTPUTS[self.kind]


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", ".onnx", ("fp32", "fp16", "int8"), NORMALIZED, "onnxruntime", "onnx",
           "normalized float32 image [N,1,28,28] -> log-probabilities [N,10]"),
    Format("torchscript", ".ts.pt", ("fp32",), NORMALIZED, "torchscript", "torchscript",
           "frozen TorchScript, same I/O as onnx", is_code=True),
    Format("onnx-app", ".app.onnx", ("fp32",), APP, "onnxruntime", "onnx_app",
           "raw uint8 pixels [N,28,28] -> probabilities [N,10], digit [N]"),
    # code: torch.export.load unpickles parts of the archive (torch's own docs: "uses pickle under the hood ...
    # never load data from an untrusted source"; weights marked use_pickle go through torch.load(weights_only=False))
    Format("pt2", ".pt2", ("fp32",), NORMALIZED, "torch-export", "pt2",
           "torch.export ExportedProgram (dynamic batch), same I/O as onnx", is_code=True),
    # code: the package's model is a compiled shared library that loading dlopens
    Format("aoti", ".aoti.pt2", ("fp32",), NORMALIZED, "aoti", "aoti",
           "AOTInductor package: a shared library compiled for this CPU (and CUDA), same I/O as onnx",
           is_code=True),
    # metadata inside the file: a constant method returning JSON (a .pte has no metadata section)
    Format("executorch", ".pte", ("fp32", "int8"), NORMALIZED, "executorch", "executorch",
           "ExecuTorch program, XNNPACK delegate, batch 1..1024; same I/O as onnx"),
    # metadata inside the file: a flatbuffer metadata entry; fixed batch (litert-torch lowers no symbolic batch)
    Format("tflite", ".tflite", ("fp32", "int8"), NORMALIZED, "litert", "tflite",
           "LiteRT flatbuffer, batch 1, NCHW; same I/O as onnx (int8: int8 in and out)"),
    # metadata inside the file: the IR's rt_info; two files, the .bin a part of the .xml's manifest entry
    Format("openvino", ".xml", ("fp32", "int8"), NORMALIZED, "openvino", "openvino",
           "OpenVINO IR (.xml graph + .bin weights), same I/O as onnx", companions=(".bin",)),
)}
ONNX_FORMATS = tuple(name for name, f in FORMATS.items() if f.suffix.endswith(".onnx"))


def format_of_file(name: str) -> str | None:
    """The format whose files end like `name` (the longest suffix wins: .app.onnx before .onnx), or None."""
    fits = [f for f in FORMATS.values() if name.endswith(f.suffix)]
    return max(fits, key=lambda f: len(f.suffix)).name if fits else None


def judged_precision(file_precision: str, mode: str = DEFAULT_MODE) -> str:
    """The precision a run is judged at: the lower of the file's and the runtime's compute mode's."""
    return max(file_precision, MODE_PRECISION.get(mode, "fp32"), key=PRECISION_ORDER.index)


def kind_of(fmt: str) -> str:
    """The input kind of a format's files (NORMALIZED or APP)."""
    return FORMATS[fmt].kind


def check_selection(formats: tuple[str, ...], precisions: tuple[str, ...], extra_formats: tuple[str, ...] = ()) -> None:
    """ConfigError for a --format or --precision that names nothing export writes (rather than an empty
    selection reported later as "no artifact matches")."""
    for what, values, allowed in (("format", formats, (*FORMATS, *extra_formats)),
                                  ("precision", precisions, PRECISIONS)):
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ConfigError(f"unknown {what} {str(unknown[0])[:40]!r}; choose from: {', '.join(allowed)}")
