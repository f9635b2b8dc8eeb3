"""int8 quantization of the onnx format's fp32 graph: ONNX Runtime static quantization, calibrated on
training images only (never the test set that verify judges it on). `calibration_set` is the one choice of
those images, shared with the other int8 exporters (OpenVINO IR via NNCF). A model of another input shape is
calibrated on its own inputs instead (toolkit.calibration), and gets the all-int8 candidate.

The graph handed to the quantizer is first rewritten (int8_graph: ReLU before max-pool, channels-last flatten)
so that ONNX Runtime runs the quantized stack without Transposes or DequantizeLinear between its ops. The
candidates are then quantized: all convolutions in int8; the first one (a single input channel) left fp32; and
that graph with every convolution padded to whole blocks of 16 output channels (int8_graph.pad_convs), so that
ONNX Runtime's blocked fp32 layout covers the first pool too and its int8 convolutions take their faster path;
and, all in int8 and padded, the first convolution and its pool as one convolution over space-to-depth blocks and
a Max of its four output phases (int8_phases), a better int8 GEMM than a single input channel makes.
The one that is fastest here while holding accuracy on a validation slice of training images is kept
(int8_choice); the manifest entry says which and why.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from toolkit import data as mnist
from toolkit import fileio, sysinfo
from toolkit.exporters import BuildOptions, ExportContext, int8_choice, int8_graph, int8_phases, quiet
from toolkit.preprocess import MEAN, STD, normalize

VALIDATION_IMAGES = 2048  # training images (none of them calibration images) that pick the int8 candidate
# The candidates, in order of preference when nothing can be measured.
ALL_INT8 = "int8-all-convs"
FP32_FIRST_CONV = "fp32-first-conv"
FP32_FIRST_CONV_PADDED = "fp32-first-conv-padded"
SPACE_TO_DEPTH = "int8-space-to-depth"
_DESCRIPTIONS = {
    ALL_INT8: "every Conv and Gemm in int8",
    FP32_FIRST_CONV: "the first Conv block (Conv, MaxPool, Relu) in fp32, every later Conv and Gemm in int8",
    FP32_FIRST_CONV_PADDED: "the first Conv block in fp32, every later Conv and Gemm in int8, and each Conv padded "
                            "to whole blocks of 16 output channels (zero filters, sliced off after its ReLU and pool)",
    SPACE_TO_DEPTH: "the first Conv and its 2x2 max-pool as a Conv over the space-to-depth input's four output "
                    "phases and a Max of them, every Conv and Gemm in int8, each Conv padded to whole blocks of 16 "
                    "output channels",
}


def image_picks(options: BuildOptions, count: int):
    """(calibration indices, validation indices) into the `count` training images: the calibration pick is the
    same for every int8 exporter; the validation slice is drawn from the images left over."""
    import numpy as np

    rng = np.random.default_rng(options.seed)
    pick = np.sort(rng.choice(count, size=min(options.calibration_size, count), replace=False))
    rest = np.setdiff1d(np.arange(count), pick)
    valid = np.sort(rng.choice(rest, size=min(VALIDATION_IMAGES, len(rest)), replace=False))
    return pick, valid


def training_sets(options: BuildOptions, ctx: ExportContext):
    """(calibration images, validation images, validation labels), normalized, from one read of the training set:
    the images that calibrate every int8 file (the same `seed` picks the same images, whichever format is
    quantized), and training images that none is calibrated on; records the calibration count in `ctx`."""
    images, labels = mnist.load_split(options.data_dir, "train")
    pick, valid = image_picks(options, len(images))
    ctx.calibration_images = len(pick)
    return normalize(images[pick], MEAN, STD), normalize(images[valid], MEAN, STD), labels[valid]


def calibration_set(options: BuildOptions, ctx: ExportContext):
    """The inputs that calibrate every int8 file: normalized training images, or for a model of another input shape
    its own (toolkit.calibration); records their number in `ctx`."""
    if ctx.own_calibration is not None:
        ctx.calibration_images = len(ctx.own_calibration.inputs)
        return ctx.own_calibration.inputs
    return training_sets(options, ctx)[0]


def calibration_settings(ctx: ExportContext) -> dict[str, Any]:
    """What an int8 file's manifest entry says about its calibration rows (after `calibration_set` ran)."""
    own = {} if ctx.own_calibration is None else ctx.own_calibration.settings
    return {"calibration_images": ctx.calibration_images, "calibration_split": "train", **own}


def candidates(fp32_model) -> dict[str, tuple[Any, list[str], list[str]]]:
    """{name: (graph to quantize, nodes left fp32, rewrites applied)} for this fp32 graph."""
    head = int8_graph.first_conv_block(fp32_model)
    kept_pools = frozenset(n.name for n in fp32_model.graph.node if n.name in head and n.op_type == "MaxPool")
    out = {}
    for name, fp32_nodes in ((ALL_INT8, []), (FP32_FIRST_CONV, head)):
        if name == FP32_FIRST_CONV and not head:
            continue
        # a pool left fp32 keeps its place: moved before its ReLU, ONNX Runtime would quantize it in NCHW
        graph, rewrites = _rewritten(fp32_model, keep=kept_pools if fp32_nodes else frozenset())
        out[name] = (graph, fp32_nodes, rewrites)
    if FP32_FIRST_CONV in out:
        padded = _padded(*out[FP32_FIRST_CONV])
        if padded:
            out[FP32_FIRST_CONV_PADDED] = padded
    phases = _space_to_depth(fp32_model)
    if phases:
        out[SPACE_TO_DEPTH] = phases
    return out


def _space_to_depth(fp32_model) -> tuple[Any, list[str], list[str]] | None:
    """The all-int8 candidate whose first block is rewritten over space-to-depth phases (int8_phases), padded
    where that pays a block; None where the graph has no such block."""
    phases = int8_phases.space_to_depth_first_conv(fp32_model)
    if phases is None:
        return None
    graph, rewrites = _rewritten(phases[0])
    rewrites = [phases[1], *rewrites]
    return _padded(graph, [], rewrites) or (graph, [], rewrites)


def _rewritten(graph, keep: frozenset[str] = frozenset()) -> tuple[Any, list[str]]:
    """`graph` with every pool but those in `keep` after its ReLU and the channels-last flatten
    (int8_graph), and the rewrites that applied."""
    graph, moved = int8_graph.relu_before_pool(graph, keep=keep)
    graph, flattened = int8_graph.flatten_channels_last(graph)
    return graph, [f"Relu before MaxPool {p}" for p in moved] + (["channels-last flatten"] if flattened else [])


def _padded(graph, fp32_nodes: list[str], rewrites: list[str]) -> tuple[Any, list[str], list[str]] | None:
    """The candidate with every Conv padded to whole channel blocks (int8_graph.pad_convs), or None where none
    needs it. A Slice after the fp32 block stays fp32 with it; the later ones are quantized like their pools."""
    padded, done = int8_graph.pad_convs(graph, [n.name for n in graph.graph.node if n.op_type == "Conv"])
    if not done:
        return None
    sliced = [slice_name for conv, (slice_name, _) in done.items() if conv in fp32_nodes]
    return padded, [*fp32_nodes, *sliced], [*rewrites, *(how for _, how in done.values())]


def quantize_candidate(graph, fp32_nodes: list[str], calib, options: BuildOptions, workdir: Path):
    """The int8 ModelProto of one candidate graph; its scratch files go in `workdir` and are removed."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    input_name = graph.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calib, max(1, len(calib) // 100)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    stem = fileio.int8_scratch_stem(time.time_ns())
    raw, pre, out = (workdir / f"{stem}{part}.onnx" for part in fileio.INT8_PARTS)
    try:
        onnx.save(graph, str(raw))
        with quiet():
            quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(out), Reader(),
                quant_format=QuantFormat.QDQ if options.quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=options.per_channel,
                activation_type=QuantType.QUInt8 if options.quant_activation == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=fp32_nodes,
            )
        return int8_phases.uint8_max(onnx.load(str(out)))
    finally:
        for p in (raw, pre, out):
            p.unlink(missing_ok=True)
        for p in workdir.glob(f"{stem}*"):  # calibration side files
            p.unlink(missing_ok=True)


def quantize(fp32_model, options: BuildOptions, ctx: ExportContext, workdir: Path):
    """The int8 ModelProto of `fp32_model`: every candidate quantized, the one `int8_choice` picks on this CPU
    returned, and the choice recorded in `ctx.int8_variant`; scratch files go in `workdir` and are removed.

    A model of another input shape is calibrated on its own inputs and gets the all-int8 candidate alone: with no
    labelled images to hold the candidates' accuracy to, none is chosen by measuring."""
    if ctx.own_calibration is None:
        calib, images, labels = training_sets(options, ctx)
        graphs = candidates(fp32_model)
    else:
        calib, images, labels = calibration_set(options, ctx), [], []
        graph, rewrites = _rewritten(fp32_model)
        graphs = {ALL_INT8: (graph, [], rewrites)}
    built = {name: (quantize_candidate(graph, fp32_nodes, calib, options, workdir), fp32_nodes, rewrites)
             for name, (graph, fp32_nodes, rewrites) in graphs.items()}
    if len(built) > 1 and len(images):
        measured = int8_choice.measure(fp32_model.SerializeToString(),
                                       {n: m.SerializeToString() for n, (m, _, _) in built.items()}, images, labels)
        best, reason = int8_choice.choose(measured)
        name = best.name
        record = {"chosen_by": "measured", "reason": reason, "measured_on": sysinfo.cpu_model(),
                  "validation_images": len(images), "validation_split": "train",
                  "candidates": [{"variant": m.name, "speedup_vs_fp32": m.speedup_vs_fp32,
                                  "validation_accuracy": m.accuracy, "fp32_validation_accuracy": m.fp32_accuracy,
                                  "holds_accuracy": m.holds_accuracy} for m in measured]}
    else:
        name = next(iter(built))
        reason = ("a model of another input shape: no labelled images to measure candidates on"
                  if ctx.own_calibration is not None else
                  "the only candidate: the graph has no Conv to keep in fp32" if len(built) == 1 else
                  "no training images outside the calibration set to measure on")
        record = {"chosen_by": "structure", "reason": reason}
    model, fp32_nodes, rewrites = built[name]
    ctx.int8_variant = {"variant": name, "description": _DESCRIPTIONS[name], "fp32_nodes": fp32_nodes,
                        "graph_rewrites": rewrites, **record}
    return model


def settings(options: BuildOptions, ctx: ExportContext) -> dict[str, Any]:
    """How an int8 file was quantized, for its manifest entry (after `quantize` ran)."""
    return dict(quant_format=options.quant_format, activations=options.quant_activation, weights="s8",
                per_channel=options.per_channel, **calibration_settings(ctx), **ctx.int8_variant)
