"""The openvino format: OpenVINO IR (model.xml graph + model.bin weights), what an OpenVINO deployment loads.

fp32 is the onnx format's fp32 graph read by OpenVINO's ONNX frontend and saved as IR without fp16 weight
compression; int8 is NNCF post-training quantization of that graph with each MaxPool -> Relu turned into
Relu -> MaxPool (int8_graph.relu_before_pool: the same outputs; the ReLU fuses into the int8 convolution, whose
output, and the pool, then stay u8 instead of going through fp32), calibrated on the same inputs as the ONNX int8
file (int8.calibration_set: training images, or the own inputs of a model of another input shape). The metadata
every artifact carries is stored in the IR's rt_info under "toolkit", one entry per key.
"""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from toolkit import fileio, sysinfo
from toolkit.errors import ConfigError
from toolkit.exporters import BuildOptions, Built, ExportContext, int8, int8_graph, quiet, scratch_path
from toolkit.exporters import onnx as onnx_graph
from toolkit.formats import FORMATS, NORMALIZED, OUTPUTS

RT_INFO_KEY = "toolkit"  # rt_info section holding the metadata dict
PRESET = "performance"  # NNCF's symmetric int8 weights and activations: what the OpenVINO CPU plugin runs fastest


def build(module: nn.Module, precision: str, options: BuildOptions, ctx: ExportContext, tmp: Path,
          metadata: dict[str, str]) -> Built:
    """Write the IR of `module` at `precision`: the graph to `tmp`, its weights to the one part."""
    _check_installed("openvino", *(("nncf",) if precision == "int8" else ()))
    import openvino as ov

    if ctx.fp32_onnx is None:
        outputs = list(OUTPUTS[NORMALIZED])
        ctx.fp32_onnx = onnx_graph.to_onnx(module, ctx.example(), onnx_graph.INPUT_NAME, outputs, options)
    graph, moved = ctx.fp32_onnx, []
    if precision == "int8":
        graph, moved = int8_graph.relu_before_pool(graph)
    model = ov.Core().read_model(io.BytesIO(graph.SerializeToString()))
    settings: dict[str, Any] = {"converted_from": f"the fp32 ONNX graph (opset {options.opset})",
                                "weights": "fp32" if precision == "fp32" else "int8"}
    if precision == "int8":
        model = _quantize(model, options, ctx)
        settings.update(quantizer="nncf", preset=PRESET, **int8.calibration_settings(ctx),
                        graph_rewrites=[f"Relu before MaxPool {p}" for p in moved])
    for key, value in metadata.items():
        model.set_rt_info(value, [RT_INFO_KEY, key])
    weights = scratch_path(tmp, FORMATS["openvino"].companions[0])
    _save(model, tmp, weights)
    return Built(settings=settings, parts=[weights])


def _check_installed(*modules: str) -> None:
    missing = [m for m in modules if not sysinfo.installed(m)]
    if missing:
        raise ConfigError(f"exporting OpenVINO IR needs {' and '.join(missing)}: pip install 'toolkit[openvino]' "
                          "(or leave out --format openvino)")


def _quantize(model: Any, options: BuildOptions, ctx: ExportContext) -> Any:
    """NNCF post-training quantization of the IR, one calibration image per statistics sample."""
    import nncf

    calib = int8.calibration_set(options, ctx)
    nncf.set_log_level(logging.ERROR)
    with quiet():
        return nncf.quantize(model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                             preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calib))


def _save(model: Any, xml_path: Path, bin_path: Path) -> None:
    """ov.save_model names the .bin after the .xml in one folder: save into a scratch folder beside the
    output, then move both files to the paths the export stage renames into place."""
    import openvino as ov

    scratch = fileio.scratch_folder(xml_path.parent, fileio.OPENVINO_SCRATCH)
    try:
        ov.save_model(model, str(scratch / "model.xml"), compress_to_fp16=False)
        shutil.move(scratch / "model.bin", bin_path)
        shutil.move(scratch / "model.xml", xml_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
