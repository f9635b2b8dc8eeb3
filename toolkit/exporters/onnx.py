"""The onnx format: the normalized-image graph in fp32, fp16 or int8, via torch.onnx (dynamo) export."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from toolkit.errors import ArtifactError
from toolkit.exporters import BuildOptions, Built, ExportContext, int8, quiet
from toolkit.formats import NORMALIZED, OUTPUTS

INPUT_NAME = "image"


def build(module: nn.Module, precision: str, options: BuildOptions, ctx: ExportContext, tmp: Path,
          metadata: dict[str, str]) -> Built:
    """Export `module` at `precision`; one fp32 export (kept in `ctx`) serves both fp32 and int8."""
    example = ctx.example()
    outputs = list(OUTPUTS[NORMALIZED])
    if precision == "fp16":
        model = to_onnx(_Float16(module), example, INPUT_NAME, outputs, options)
    else:
        if ctx.fp32_onnx is None:
            ctx.fp32_onnx = to_onnx(module, example, INPUT_NAME, outputs, options)
        model = ctx.fp32_onnx if precision == "fp32" else int8.quantize(ctx.fp32_onnx, options, ctx, tmp.parent)
    built = save_onnx(model, tmp, metadata, options)
    if precision == "int8":
        built.settings.update(int8.settings(options, ctx))
    return built


def to_onnx(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
            options: BuildOptions):
    """torch.onnx (dynamo) export with a dynamic batch dimension, optionally slimmed; returns a ModelProto."""
    with quiet():
        program = torch.onnx.export(
            module.eval(), (example,), dynamo=True, input_names=[input_name], output_names=output_names,
            opset_version=options.opset, dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False, verbose=False, optimize=True)
    model = program.model_proto
    if options.simplify:
        import onnxslim

        with quiet():
            model = onnxslim.slim(model)
    return model


def save_onnx(model, tmp: Path, metadata: dict[str, str], options: BuildOptions) -> Built:
    """Store `metadata` in the graph's metadata_props, check the graph and save it to `tmp`."""
    import onnx

    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "toolkit", metadata["toolkit_version"]
    model.doc_string = "MNIST digit classifier exported by toolkit; see metadata_props for the I/O contract"
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ArtifactError(f"exported ONNX graph failed onnx.checker: {str(e).splitlines()[0]}") from None
    onnx.save(model, str(tmp))
    return Built(settings={"simplify": options.simplify}, opset=options.opset)


class _Float16(nn.Module):
    """float16 weights and compute; float32 in and out so callers change nothing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half().eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image.half()).float()
