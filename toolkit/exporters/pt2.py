"""The pt2 format: a torch.export ExportedProgram with a dynamic batch, its metadata in an extra file.

What torch now ships in TorchScript's place for a serialized graph: `torch.export.load` gives it back, and
`.module()` runs it. The aoti format compiles the same program.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from toolkit.artifacts import META_KEY
from toolkit.exporters import BuildOptions, Built, ExportContext, quiet

# The batch dimension the program accepts: any size from one image up (the example batch has two, so that
# torch.export does not specialize it to 1).
MIN_BATCH = 1


def export_program(module: nn.Module, device: str = "cpu", example: torch.Tensor | None = None
                   ) -> torch.export.ExportedProgram:
    """`module` (normalized images [N,1,28,28], or `example`'s per-sample shape -> log-probabilities) exported
    with a dynamic batch on `device`."""
    example = torch.zeros(2, 1, 28, 28, device=device) if example is None else example.to(device)
    batch = torch.export.Dim("batch", min=MIN_BATCH)
    with quiet():
        return torch.export.export(module.eval().to(device), (example,), dynamic_shapes=({0: batch},), strict=False)


def build(module: nn.Module, precision: str, options: BuildOptions, ctx: ExportContext, tmp: Path,
          metadata: dict[str, str]) -> Built:
    """Export `module` (fp32) and save the program with `metadata` as the archive's extra file."""
    program = export_program(module, example=ctx.example())
    with quiet(), open(tmp, "wb") as f:  # a file object: torch.export.save warns on a name not ending in .pt2
        torch.export.save(program, f, extra_files={META_KEY: json.dumps(metadata, indent=1)})
    return Built(settings={"dynamic_batch": True, "min_batch": MIN_BATCH, "strict": False})
