"""The tflite format: a LiteRT flatbuffer converted from PyTorch by litert-torch, fp32 or int8 (PT2E).

The file takes the normalized image [BATCH, 1, 28, 28], or exported with --input-shape the model's own input
[BATCH, *shape], in the PyTorch model's layout (NCHW: the converter keeps it), and returns log-probabilities.
Its batch is fixed: litert-torch 0.10 cannot lower this ConvNet with a symbolic batch (its flatten is traced
with concrete shapes), and the interpreter cannot resize a fixed-shape graph (XNNPACK's reshape fails), so the
runner feeds larger batches BATCH images at a time. The toolkit metadata travels inside the file, as a
flatbuffer metadata entry named artifacts.META_KEY (JSON), beside the manifest's record.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from toolkit import native_logs
from toolkit.artifacts import META_KEY
from toolkit.errors import ArtifactError
from toolkit.exporters import BuildOptions, Built, ExportContext, fixed_io, int8, quiet

BATCH = 1  # what phones run: one image per call
CALIBRATION_BATCH = 100


def build(module: nn.Module, precision: str, options: BuildOptions, ctx: ExportContext, tmp: Path,
          metadata: dict[str, str]) -> Built:
    """Convert `module` (quantized first for int8) and write it with `metadata` in the flatbuffer."""
    litert_torch = _litert_torch()
    example = (ctx.example(BATCH),)  # the model's own input shape; NCHW stays the file's layout
    settings = {"batch": BATCH, "layout": "NCHW", "metadata": f"flatbuffer metadata {META_KEY}"}
    with quiet(), native_logs.filtered():  # the converter's C++ logs a line as it writes the flatbuffer
        if precision == "int8":
            quantized, quant_config = _quantized(module, options, ctx)
            model = litert_torch.convert(quantized, example, quant_config=quant_config)
            settings.update(quantizer="pt2e litert symmetric", activations="s8", weights="s8",
                            per_channel=options.per_channel, calibration_images=ctx.calibration_images,
                            calibration_split="train")
        else:
            model = litert_torch.convert(module.eval(), example)
        content = bytes(model.model_content())  # written out only now
    tmp.write_bytes(with_metadata(content, json.dumps(metadata)))
    return Built(settings=settings, io=fixed_io("tflite", BATCH, "int8" if precision == "int8" else "float32",
                                                ctx.input_shape))


def _litert_torch():
    """litert-torch, imported without its start-up logs and set to print no progress of its own."""
    try:
        with native_logs.filtered():  # TensorFlow's start-up notices, torchao's deprecation warning
            import litert_torch
    except ImportError:
        raise ArtifactError("exporting tflite needs litert-torch: pip install 'toolkit[litert]'") from None
    litert_torch.config.show_progress = False  # its "[START] Write Model to Bytes" lines, on stdout
    # It loads JAX, which warns at every later fork of the process; the forks that follow are OpenVINO's
    # telemetry sender (a child that never runs JAX), so the warning only alarms.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    return litert_torch


def _quantized(module: nn.Module, options: BuildOptions, ctx: ExportContext):
    """PT2E static int8, calibrated on the onnx int8's training images; (converted module, its QuantConfig)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=options.per_channel))
    captured = torch.export.export(module.eval(), (torch.zeros(2, 1, 28, 28),),
                                   dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=CALIBRATION_BATCH)},))
    prepared = prepare_pt2e(captured.module(), quantizer)
    calib = torch.from_numpy(int8.calibration_set(options, ctx))
    with torch.no_grad():
        for start in range(0, len(calib), CALIBRATION_BATCH):
            prepared(calib[start:start + CALIBRATION_BATCH])
    converted = convert_pt2e(prepared, fold_quantize=False)
    # captured from module.eval(), the graph is an inference graph; its GraphModule still says training (and
    # refuses .eval()), which the converter would warn about
    nn.Module.train(converted, False)
    return converted, QuantConfig(pt2e_quantizer=quantizer)


def with_metadata(model: bytes, text: str) -> bytes:
    """The flatbuffer `model` with a metadata entry META_KEY holding `text` (replacing one already there)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    if any(b.offset for b in tree.buffers or []):
        raise ArtifactError("the converted .tflite keeps its weights outside the flatbuffer; cannot add metadata")
    tree.metadata = [m for m in tree.metadata or [] if m.name != META_KEY.encode() and m.name != META_KEY]
    tree.buffers = [*(tree.buffers or []), schema.BufferT(data=list(text.encode()))]
    entry = schema.MetadataT()
    entry.name, entry.buffer = META_KEY, len(tree.buffers) - 1
    tree.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + len(text) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
