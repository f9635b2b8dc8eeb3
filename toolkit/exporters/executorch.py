"""The executorch format: an ExecuTorch program (.pte) with the XNNPACK delegate, fp32 or int8 (PT2E).

The program takes the normalized image [N, 1, 28, 28] (or, exported with --input-shape, the model's own input) for
any N from 1 to its largest batch (MAX_BATCH, fewer for large samples) and returns log-probabilities;
everything but log_softmax runs in XNNPACK. The toolkit metadata travels inside the file as a constant method
(`toolkit_metadata`, a JSON string), since a .pte has no free-form metadata section.

Why lowering runs with `backed_size_oblivious`: ExecuTorch's passes re-run the convolution on fake tensors, and
ATen's convolution-backend choice asks whether the batch is at least 16 (its NNPACK heuristic). Answered for the
example batch, that question narrows the batch's declared range to at most 15, and memory planning then sizes the
input for 15 images, so batches of 16 and more fail in set_inputs. Treating the symbolic batch as size-oblivious
keeps the declared range, and the plan holds MAX_BATCH images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from toolkit import native_logs
from toolkit.artifacts import PTE_METADATA_METHOD as METADATA_METHOD
from toolkit.errors import ArtifactError
from toolkit.exporters import BuildOptions, Built, ExportContext, int8, quiet
from toolkit.refinputs import is_mnist

MAX_BATCH = 1024  # the batch range declared, and planned: the input buffer holds this many images (3.2 MB)
# For a model of another input shape, the batch planned is cut to keep its input buffer at most this size (the
# activations are planned for that batch too); the runner feeds larger batches in parts.
MAX_PLANNED_INPUT_BYTES = 16 << 20
CALIBRATION_BATCH = 100


def build(module: nn.Module, precision: str, options: BuildOptions, ctx: ExportContext, tmp: Path,
          metadata: dict[str, str]) -> Built:
    """Export, quantize (int8), lower to XNNPACK and write the program with `metadata` inside it."""
    try:
        with native_logs.filtered():  # torchao's deprecation warning, logged at import
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise ArtifactError("exporting executorch needs ExecuTorch: pip install 'toolkit[executorch]'") from None
    import torch.fx.experimental._config as fx_config

    example = (ctx.example(),)  # batch 2: a batch of 1 would be specialized to a constant
    max_batch = largest_batch(ctx.input_shape)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    with quiet():
        program = torch.export.export(module.eval(), example, dynamic_shapes=dynamic)
        settings = {"delegate": "xnnpack", "max_batch": max_batch, "metadata": f"constant method {METADATA_METHOD}"}
        if precision == "int8":
            program = _quantized(program, options, ctx, example, dynamic)
            settings.update(_int8_settings(options, ctx))
        with fx_config.patch(backed_size_oblivious=True):
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                               constant_methods={METADATA_METHOD: json.dumps(metadata)})
            buffer = edge.to_executorch().buffer
    tmp.write_bytes(buffer)
    return Built(settings=settings)


def largest_batch(input_shape: tuple[int, ...]) -> int:
    """The batch a program is planned for: MAX_BATCH images, or as many samples of `input_shape` as fit in
    MAX_PLANNED_INPUT_BYTES (at least the example batch of 2)."""
    if is_mnist(input_shape):
        return MAX_BATCH
    sample_bytes = 4 * math.prod(input_shape)
    return max(2, min(MAX_BATCH, MAX_PLANNED_INPUT_BYTES // sample_bytes))


def _quantized(program, options: BuildOptions, ctx: ExportContext, example, dynamic):
    """PT2E static int8 (XNNPACK's symmetric config), calibrated on the onnx int8's training images."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=options.per_channel))
    prepared = prepare_pt2e(program.module(), quantizer)
    calib = torch.from_numpy(int8.calibration_set(options, ctx))
    with torch.no_grad():
        for start in range(0, len(calib), CALIBRATION_BATCH):
            prepared(calib[start:start + CALIBRATION_BATCH])
    converted = convert_pt2e(prepared)
    return torch.export.export(converted, example, dynamic_shapes=dynamic)


def _int8_settings(options: BuildOptions, ctx: ExportContext) -> dict:
    return dict(quantizer="pt2e xnnpack symmetric", activations="s8", weights="s8", per_channel=options.per_channel,
                calibration_images=ctx.calibration_images, calibration_split="train")
