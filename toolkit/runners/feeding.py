"""How a foreign model file is fed MNIST pixels, as the command line says: the layout, mean and std of its
input (`Preprocessing`), the dynamic dimensions of a foreign .onnx's inputs (`parse_shapes`), and the refusal of
such an option when no file given takes it. It loads no runtime: the CLI checks these options first.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from toolkit.bounds import is_number_within
from toolkit.errors import ConfigError
from toolkit.metadata import MAX_ABS_MEAN, MAX_STD, MIN_STD
from toolkit.preprocess import MEAN, STD

LAYOUTS = ("auto", "nchw", "nhwc", "nhw", "flat")
SHAPES = {"nchw": (1, 28, 28), "nhwc": (28, 28, 1), "nhw": (28, 28), "flat": (784,)}  # one image, per layout
FEEDING = ("layout", "mean", "std")  # the options that say how pixels become a foreign file's input
FILE_OPTIONS = ("shape", *FEEDING)  # ... and with --shape, every option of how a foreign file is fed


@dataclass(frozen=True)
class Preprocessing:
    """How MNIST pixels become a foreign model's input: (pixel / 255 - mean) / std, in `layout`.
    uint8 inputs get the raw pixels."""

    mean: float = MEAN
    std: float = STD
    layout: str = "auto"  # auto: from the declared input shape

    def __post_init__(self) -> None:
        _check_range("mean", self.mean, -MAX_ABS_MEAN, MAX_ABS_MEAN)
        _check_range("std", self.std, MIN_STD, MAX_STD)
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {self.layout!r}; use {', '.join(LAYOUTS)}")


def _check_range(name: str, value: Any, low: float, high: float) -> None:
    """ConfigError unless `value` is a number in [low, high]: the range a toolkit file's metadata may declare, in
    which (pixel/255 - mean) / std stays finite in float32 for every pixel."""
    if not is_number_within(value, low, high):
        raise ConfigError(f"--{name} must be a number in [{low:g}, {high:g}], so that (pixel/255 - mean) / std fits "
                          f"float32; not {value!r}")


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """'NAME=3x224x224' (the dims after the batch) -> {NAME: (3, 224, 224)}."""
    shapes = {}
    for item in items:
        name, _, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not name or not shape or any(not 1 <= d <= 65_536 for d in shape):
            raise ConfigError(f"bad --shape {item!r}; use INPUT=DxDx... (the dimensions after the batch)")
        if name in shapes:
            raise ConfigError(f"--shape names input {name!r} twice; give each input once")
        shapes[name] = shape
    return shapes


def options_set(given: Iterable[str], shapes: Mapping[str, Any] | None) -> set[str]:
    """The options of how a foreign file is fed that the command line set: those `given`, and --shape where
    `shapes` names any input."""
    return {*given, *(["shape"] if shapes else [])}


def refuse_unused(given: Collection[str], taken: Iterable[frozenset[str]], why: str = "") -> None:
    """ConfigError naming the options of `given` that no file takes (`taken`: what each file takes, as the command
    opens it; `why`: why none does): such an option would do nothing, and the user would not know."""
    used = frozenset().union(*taken)
    for names, whom in ((("shape",), "a foreign .onnx (the dynamic dimensions of its inputs)"),
                        (("layout",), "a foreign file fed images (how pixels become its input)"),
                        (("mean", "std"), "a foreign file fed float images (how its pixels are normalized)")):
        unused = " and ".join(f"--{n}" for n in names if n in given and n not in used)
        if unused:
            raise ConfigError(f"{unused} {'are' if ' and ' in unused else 'is'} for {whom}, and "
                              f"{why or 'none of these files is one'}; drop {unused}")
