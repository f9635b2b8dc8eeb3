"""The torchscript format: the model traced and frozen, with its metadata in an extra file of the archive."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from toolkit.artifacts import META_KEY
from toolkit.exporters import BuildOptions, Built, ExportContext, quiet


def build(module: nn.Module, precision: str, options: BuildOptions, ctx: ExportContext, tmp: Path,
          metadata: dict[str, str]) -> Built:
    """Trace `module` on a batch of its input, freeze it and save it with `metadata` (fp32 only)."""
    with quiet():
        traced = torch.jit.trace(module, ctx.example())
        frozen = torch.jit.freeze(traced)
        torch.jit.save(frozen, str(tmp), _extra_files={META_KEY: json.dumps(metadata, indent=1)})
    return Built(settings={"frozen": True, "traced": True})
