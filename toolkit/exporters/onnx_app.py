"""The onnx-app format: raw uint8 pixels in, probabilities and the digit out, normalization inside the graph."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from toolkit.exporters import BuildOptions, Built, ExportContext
from toolkit.exporters.onnx import save_onnx, to_onnx
from toolkit.formats import APP, OUTPUTS
from toolkit.preprocess import MEAN, STD

INPUT_NAME = "pixels"


def build(module: nn.Module, precision: str, options: BuildOptions, ctx: ExportContext, tmp: Path,
          metadata: dict[str, str]) -> Built:
    """Export `module` wrapped so that an app feeds it the pixels it has (fp32 only)."""
    example = torch.zeros(2, 28, 28, dtype=torch.uint8)
    model = to_onnx(_AppModel(module), example, INPUT_NAME, list(OUTPUTS[APP]), options)
    return save_onnx(model, tmp, metadata, options)


class _AppModel(nn.Module):
    """Raw uint8 pixels in; probabilities and the predicted digit out. Normalization is inside the graph.

    The channel axis is added by a Reshape to [-1, 1, 28, 28], not an Unsqueeze: OpenCV's classic ONNX
    importer (its default in 4.x) mis-sizes an Unsqueeze at any batch above 1, and every engine reads Reshape.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.float().reshape(-1, 1, 28, 28) / 255.0 - MEAN) / STD
        probabilities = self.model(x).exp()
        return probabilities, probabilities.argmax(dim=1)
