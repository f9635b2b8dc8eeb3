"""The notebook's LeNet-style ConvNet and its MLP baseline, and the registry that names them."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.errors import ConfigError


class ConvNet(nn.Module):
    """The notebook's ConvNet: conv 1->20 5x5, pool, conv 20->50 5x5, pool, fc 800->500, fc 500->10.

    Input: normalized images [N, 1, 28, 28]; output: log-probabilities [N, 10]. 431,080 parameters.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc_layer1 = nn.Linear(4 * 4 * 50, 500)
        self.fc_layer2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pooling before ReLU gives exactly the notebook's relu-then-pool values and gradients (ReLU is monotonic),
        # with ReLU on a quarter of the elements (benchmarks/train_profile.py measures the step-time gain)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc_layer1(x))
        return F.log_softmax(self.fc_layer2(x), dim=1)


class MLP(nn.Module):
    """The notebook's comparison baseline: a fully connected net of similar size, Glorot-initialized.

    The default single hidden layer of 540 units gives 429,310 parameters, within 0.5% of the ConvNet.
    """

    def __init__(self, hidden_sizes: tuple[int, ...] | list[int] = (540,), num_classes: int = 10) -> None:
        super().__init__()
        sizes = [28 * 28, *hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.out = nn.Linear(sizes[-1], num_classes)
        for layer in [*self.hidden, self.out]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return F.log_softmax(self.out(x), dim=1)


MODELS: dict[str, type[nn.Module]] = {"convnet": ConvNet, "mlp": MLP}


MAX_HIDDEN_LAYERS, MAX_HIDDEN_UNITS = 8, 8192  # bounds for constructor arguments read from files


def check_args(name: str, kwargs: dict[str, Any]) -> None:
    """Constructor arguments (from a checkpoint, i.e. a file) are bounded before any layer is allocated."""
    allowed = {"convnet": {"num_classes"}, "mlp": {"hidden_sizes", "num_classes"}}[name]
    unknown = set(kwargs) - allowed
    if unknown:
        raise ConfigError(f"model {name} takes no argument {', '.join(sorted(map(str, unknown)))}")
    if kwargs.get("num_classes", 10) != 10 or type(kwargs.get("num_classes", 10)) is not int:
        raise ConfigError("num_classes must be 10 for MNIST")
    if "hidden_sizes" in kwargs:
        sizes = kwargs["hidden_sizes"]
        if (not isinstance(sizes, (list, tuple)) or not 1 <= len(sizes) <= MAX_HIDDEN_LAYERS
                or not all(type(h) is int and 1 <= h <= MAX_HIDDEN_UNITS for h in sizes)):
            raise ConfigError(f"hidden_sizes must be 1 to {MAX_HIDDEN_LAYERS} layers of 1 to {MAX_HIDDEN_UNITS} units")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name with its (bounded) constructor arguments."""
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"unknown model {str(name)[:40]!r}; choose one of: {', '.join(MODELS)}")
    check_args(name, kwargs)
    return MODELS[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_flops(model: nn.Module) -> dict[str, int]:
    """FLOPs of one image's forward pass per convolution and linear layer, by module name, counting a
    multiply-add as 2."""
    flops: dict[str, int] = {}

    def hook(name: str, module: nn.Module, _inputs, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            k = module.in_features
        flops[name] = flops.get(name, 0) + 2 * output[0].numel() * k

    hooks = [m.register_forward_hook(functools.partial(hook, name)) for name, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, 28, 28))
    finally:
        for h in hooks:
            h.remove()
    return flops


def forward_flops(model: nn.Module) -> int:
    """FLOPs of one image's forward pass, counting a multiply-add as 2 (convolutions and linear layers)."""
    return sum(layer_flops(model).values())
