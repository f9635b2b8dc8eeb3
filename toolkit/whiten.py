"""A first convolution set from the training images instead of learned: patch whitening, frozen.

Each filter is a principal direction of the images' patches (the eigenvectors of their second-moment matrix),
scaled by 1/sqrt(eigenvalue + eps) so that its output has about unit variance, and paired with its negation so
that the ReLU after the pool keeps both signs. The layer then never learns: no gradient is computed for it, nor
the one flowing into the next layer's input, which is what makes a step cheaper. On the validation split this
first layer scores as well as a learned one, in bf16 and in float32 (benchmarks/results/family26/recipes_fast.json,
recipes_float32.json).
"""

from __future__ import annotations

from typing import Any

# the images the patch statistics are drawn from (more change the filters little), and the eigenvalue floor
WHITENING_IMAGES = 1000
EPS = 1e-2


def whitening_filters(images: Any, out_channels: int, kernel_size: int):
    """[out_channels, C, k, k] filters: the top out_channels/2 patch directions of `images` ([N, C, H, W], already
    normalized), whitened, then the same negated. float32, on the images' device."""
    import torch
    import torch.nn.functional as F

    x = images[:WHITENING_IMAGES].float().contiguous()
    patches = F.unfold(x, kernel_size)  # [N, C*k*k, positions]
    moments = (patches @ patches.transpose(1, 2)).double().sum(0) / (patches.shape[0] * patches.shape[2])
    eigenvalues, eigenvectors = torch.linalg.eigh(moments)  # ascending
    half = out_channels // 2
    top = eigenvectors[:, -half:].flip(1).T / (eigenvalues[-half:].flip(0)[:, None] + EPS).sqrt()
    filters = torch.cat([top, -top]).float()
    return filters.reshape(out_channels, x.shape[1], kernel_size, kernel_size)


def whiten_layer(conv: Any, images: Any) -> None:
    """Set a model's first layer `conv` to whitening filters of `images`, bias zero, and freeze it; a layer that is
    not a square convolution with an even number of filters, at most twice its patch size (the MLP's first layer
    is a linear one), is left untouched and trainable. Whether it was done is whether the layer is frozen."""
    import torch
    from torch import nn

    if (not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.stride != (1, 1) or conv.padding != (0, 0)
            or conv.dilation != (1, 1)):
        return
    k = conv.kernel_size[0]
    patch = conv.in_channels * k * k
    if conv.kernel_size != (k, k) or conv.out_channels % 2 or conv.out_channels > 2 * patch:
        return
    with torch.no_grad():
        conv.weight.copy_(whitening_filters(images, conv.out_channels, k))
        if conv.bias is not None:
            conv.bias.zero_()
    conv.requires_grad_(False)
