"""The torchscript format: the model traced and frozen, with its metadata in an extra file of the archive."""

from __future__ import annotations

import io
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
        # into memory, then into `tmp`: saved to a file, the archive's root folder is named after that file, and
        # the temporary file's name is random, so two exports of one model would differ
        archive = io.BytesIO()
        torch.jit.save(frozen, archive, _extra_files={META_KEY: json.dumps(metadata, indent=1)})
    tmp.write_bytes(archive.getvalue())
    return Built(settings={"frozen": True, "traced": True})
