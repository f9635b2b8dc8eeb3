"""What determines a training run: the recipes, TrainConfig, and the checks every setting must pass.

Torch-free, so that the CLI can name the defaults without importing torch; the model registry is read only
when a config is validated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from toolkit.augment import Distortion
from toolkit.bounds import is_number_within
from toolkit.errors import CheckpointError, ConfigError

# `seed` is the 2019 notebook; `fast` passes 99.0% in one epoch; `best` is the most accurate in a few minutes.
# Each setting of `fast` and `best` was chosen on a validation split held out of the training set, never on the
# test set: benchmarks/recipes.py measures what each one adds.
# `fast` sets its first layer from the training images' 5x5 patches and never trains it (whitened_first_layer,
# toolkit/whiten.py): on the validation split that scored as well as learning it (the means within a few
# hundredths of a point, in bf16 and in float32: benchmarks/results/family26/recipes_fast.json and
# recipes_float32.json), and it spares every step the first layer's gradients and the gradient into the second
# layer's input. Its other settings hold in float32 (a CPU without native bf16) too: channels_last and oneDNN
# convolutions (contiguous or native ones are slower), fused AdamW, and batch 128 (a larger one fits fewer steps
# into the epoch and costs validation accuracy: "fast with batch 256" in recipes.json).
RECIPES: dict[str, dict[str, Any]] = {
    "seed": dict(epochs=10, batch_size=64, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0,
                 schedule="constant", bf16=False, channels_last=False),
    "fast": dict(epochs=1, batch_size=128, optimizer="adamw", lr=3e-3, momentum=0.9, nesterov=False,
                 weight_decay=1e-2, schedule="onecycle", label_smoothing=0.2, bf16=True, channels_last=True,
                 whitened_first_layer=True),
    "best": dict(epochs=15, batch_size=128, optimizer="adamw", lr=3e-3, momentum=0.9, nesterov=False,
                 weight_decay=1e-2, schedule="onecycle", label_smoothing=0.1, rotate=10.0, scale=0.1, shift=2.0,
                 bf16=True, channels_last=True),
}
DEFAULT_RECIPE = "fast"
DEFAULT_MODEL = "convnet"
MODEL_NAMES = ("convnet", "mlp")  # toolkit.model.MODELS, named here so that options are checked before torch loads
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run. Build it with `make_config`: the fields without a default
    come from a recipe in RECIPES, the one place their values are written down."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float  # SGD only
    nesterov: bool  # SGD only
    weight_decay: float
    schedule: str  # "onecycle" or "constant"
    bf16: bool  # bf16 autocast where the device supports it natively
    channels_last: bool
    optimizer: str = "sgd"  # "sgd" or "adamw"
    label_smoothing: float = 0.0
    rotate: float = 0.0  # augmentation (toolkit.augment): degrees
    scale: float = 0.0  # fraction
    shift: float = 0.0  # pixels
    elastic: float = 0.0  # pixels
    ema: float = 0.0  # decay per step of an exponential moving average of the weights (0: none); it is what is saved
    # in a float32 run (bf16 off, or not native on the device): the fraction of the training steps in which the
    # first layer learns; after them it is frozen, which spares the backward pass the first layer's gradients and
    # the gradient flowing into the second layer's input (benchmarks/train_profile.py --no-bf16 times it)
    float32_first_layer_steps: float = 1.0
    # the first layer, where it is a convolution, set by patch whitening of the training images and never trained
    # (toolkit/whiten.py); a model whose first layer is not one (the MLP) trains it as usual
    whitened_first_layer: bool = False
    holdout: int = 0  # keep the last N training images out of training, as a validation split
    model: str = DEFAULT_MODEL
    recipe: str = DEFAULT_RECIPE
    seed: int = 0
    device: str = "auto"
    train_limit: int | None = None  # use only the first N training images (smoke tests)
    eval_batch_size: int = 500

    @property
    def distortion(self) -> Distortion:
        return Distortion(rotate=self.rotate, scale=self.scale, shift=self.shift, elastic=self.elastic)


def make_config(recipe: str = DEFAULT_RECIPE, **overrides: Any) -> TrainConfig:
    """A recipe's settings with `overrides` (None values ignored), validated."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    values = {**RECIPES[recipe], **{k: v for k, v in overrides.items() if v is not None}}
    config = TrainConfig(recipe=recipe, **values)
    validate(config)
    return config


# Inclusive bounds of every numeric setting: anything outside (or NaN, or infinite) is refused.
LIMITS: dict[str, tuple[float, float]] = {
    "epochs": (1, 1000), "batch_size": (1, 60000), "eval_batch_size": (1, 10000), "lr": (1e-8, 10.0),
    "momentum": (0.0, 0.999), "weight_decay": (0.0, 1.0), "seed": (0, 2**32 - 1), "train_limit": (1, 60000),
    "label_smoothing": (0.0, 0.5), "rotate": (0.0, 45.0), "scale": (0.0, 0.5), "shift": (0.0, 8.0),
    "elastic": (0.0, 4.0), "ema": (0.0, 0.99999), "holdout": (0, 30000), "float32_first_layer_steps": (0.0, 1.0),
}
OPTIMIZERS = ("sgd", "adamw")
_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def config_from_checkpoint(saved: Any, current: TrainConfig) -> TrainConfig:
    """The TrainConfig a checkpoint recorded, checked field by field (a checkpoint is a file, i.e. input)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if not isinstance(saved, dict):
        raise CheckpointError("the checkpoint's settings are not a mapping; it is damaged")
    unknown = [str(k)[:40] for k in saved if k not in fields]
    if unknown:
        raise CheckpointError(f"the checkpoint's settings have unknown key(s) {', '.join(unknown)}; "
                              "it was written by another version or damaged")
    for name, value in saved.items():
        _check_type(name, value, str(fields[name].type))
    # a setting the checkpoint lacks predates it: its default is what that run used
    defaults = {f.name: f.default for f in fields.values() if f.default is not dataclasses.MISSING}
    try:
        config = TrainConfig(**{**dataclasses.asdict(current), **defaults, **saved})
        validate(config)
    except ConfigError as e:
        raise CheckpointError(f"the checkpoint's settings are invalid: {e}") from None
    return config


def _check_type(name: str, value: Any, annotation: str) -> None:
    """A saved setting must have its field's type (a bool is not a number here); None only where allowed."""
    kind = {"int": int, "float": float, "bool": bool, "str": str, "int | None": int}[annotation]
    if value is None and annotation.endswith("None"):
        return
    if not isinstance(value, _TYPES[kind]) or (kind is not bool and isinstance(value, bool)):
        raise CheckpointError(f"the checkpoint's setting {name} is {type(value).__name__}, expected {kind.__name__}")


def _bound(x: int | float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"  # a seed's 4294967295 in full, not 4.29497e+09


def validate(config: TrainConfig) -> None:
    """Every setting of a run: known names, and numbers finite and within LIMITS."""
    if config.model not in MODEL_NAMES:
        raise ConfigError(f"unknown model {config.model!r}; choose one of: {', '.join(MODEL_NAMES)}")
    for name, (low, high) in LIMITS.items():
        value = getattr(config, name)
        if value is None:
            continue
        if not is_number_within(value, low, high):
            raise ConfigError(f"{name.replace('_', '-')} must be a number from {_bound(low)} to {_bound(high)}, "
                              f"got {value}")
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if config.schedule not in ("onecycle", "constant"):
        raise ConfigError(f"unknown schedule {config.schedule!r}; use onecycle or constant")
    if config.device not in DEVICES:
        raise ConfigError(f"unknown device {config.device!r}; choose one of: {', '.join(DEVICES)}")
