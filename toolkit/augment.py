"""Training-time augmentation: random affine and elastic distortions of a whole batch in one call, on its device.

Each image gets its own rotation, scale, shift and (optionally) smooth elastic displacement field, built as one
sampling grid for `grid_sample`; the random numbers come from a CPU generator that the checkpoint keeps, so a
resumed run draws the same distortions. Nothing here is used at test time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ELASTIC_CELL = 7  # pixels: the elastic field is random on a grid this coarse, smoothly upsampled


@dataclass(frozen=True)
class Distortion:
    rotate: float = 0.0  # degrees, drawn uniformly from [-rotate, rotate]
    scale: float = 0.0  # fraction, drawn from [1 - scale, 1 + scale]
    shift: float = 0.0  # pixels, each axis drawn from [-shift, shift]
    elastic: float = 0.0  # pixels: the largest displacement of the smoothed random field (its alpha)

    @property
    def active(self) -> bool:
        return any((self.rotate, self.scale, self.shift, self.elastic))


def distort(x: Any, d: Distortion, generator: Any, background: float) -> Any:
    """A randomly distorted copy of a batch `x` [N, 1, H, W] (float32 tensor); pixels from outside are
    `background`. `generator` is a CPU `torch.Generator`."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape

    def uniform(*shape: int, bound: float) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator) * 2 - 1) * bound

    angle = uniform(n, bound=math.radians(d.rotate))
    scale = 1 + uniform(n, bound=d.scale)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # grid_sample's coordinates run from -1 to 1 across the image: a pixel is 2 / size of them
    tx, ty = uniform(n, bound=d.shift) * 2 / w, uniform(n, bound=d.shift) * 2 / h
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if d.elastic:
        # a smooth random displacement field (as in Simard et al., 2003, which blur per-pixel noise with a
        # Gaussian): uniform noise on a coarse grid, upsampled bicubically; at most `elastic` pixels
        coarse = uniform(n, 2, -(-h // ELASTIC_CELL), -(-w // ELASTIC_CELL), bound=d.elastic)
        field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(-d.elastic, d.elastic)
        grid = grid + field.permute(0, 2, 3, 1) * torch.tensor([2 / w, 2 / h])
    grid = grid.to(x.device)
    out = F.grid_sample(x.float() - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + background
