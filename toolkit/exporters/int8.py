"""int8 quantization of the onnx format's fp32 graph: ONNX Runtime static quantization, calibrated on
training images only (never the test set that verify judges it on). `calibration_set` is the one choice of
those images, shared with the other int8 exporters (OpenVINO IR via NNCF)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from toolkit import data as mnist
from toolkit.exporters import BuildOptions, ExportContext, quiet
from toolkit.preprocess import MEAN, STD, normalize


def calibration_set(options: BuildOptions, ctx: ExportContext):
    """The normalized training images that calibrate every int8 file (the same `seed` picks the same images,
    whichever format is quantized); records their number in `ctx`."""
    import numpy as np

    images, _ = mnist.load_split(options.data_dir, "train")
    rng = np.random.default_rng(options.seed)
    pick = rng.choice(len(images), size=min(options.calibration_size, len(images)), replace=False)
    calib = normalize(images[np.sort(pick)], MEAN, STD)
    ctx.calibration_images = len(calib)
    return calib


def quantize(fp32_model, options: BuildOptions, ctx: ExportContext, workdir: Path):
    """The int8 ModelProto of `fp32_model`; its scratch files go in `workdir` and are removed."""
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

    calib = calibration_set(options, ctx)
    input_name = fp32_model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calib, max(1, len(calib) // 100)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    stamp = f"{time.time_ns()}"
    raw, pre, out = (workdir / f".int8-{stamp}-{n}.onnx" for n in ("raw", "pre", "out"))
    try:
        onnx.save(fp32_model, str(raw))
        with quiet():
            quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(out), Reader(),
                quant_format=QuantFormat.QDQ if options.quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=options.per_channel,
                activation_type=QuantType.QUInt8 if options.quant_activation == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        return onnx.load(str(out))
    finally:
        for p in (raw, pre, out):
            p.unlink(missing_ok=True)
        for p in workdir.glob(f".int8-{stamp}-*"):  # calibration side files
            p.unlink(missing_ok=True)


def settings(options: BuildOptions, ctx: ExportContext) -> dict[str, Any]:
    """How an int8 file was quantized, for its manifest entry (after `quantize` ran)."""
    return dict(quant_format=options.quant_format, activations=options.quant_activation, weights="s8",
                per_channel=options.per_channel, calibration_images=ctx.calibration_images,
                calibration_split="train")
