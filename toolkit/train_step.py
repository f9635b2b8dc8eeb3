"""One optimization step of a training run, and one epoch of them, with what they need built.

Split from train.py, which runs epochs, evaluates, checkpoints and resumes; benchmarks/train_profile.py
times these pieces one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from toolkit.augment import Distortion, distort
from toolkit.errors import ConfigError
from toolkit.model import build_model
from toolkit.preprocess import BACKGROUND
from toolkit.recipes import TrainConfig


def build_training(config: TrainConfig, device: str, steps_per_epoch: int, images=None):
    """The model (on `device`, channels_last if asked), its optimizer, the one-cycle schedule if any, and the
    moving average of its weights if any. With `whitened_first_layer`, the first layer is set from `images` (the
    training images) and frozen before the rest is built on it."""
    import torch
    from torch.optim.swa_utils import AveragedModel

    from toolkit.whiten import whiten_layer

    model = build_model(config.model).to(device)
    if config.whitened_first_layer:
        if images is None:
            raise ConfigError("a whitened first layer is set from the training images; none were given")
        whiten_layer(first_layer(model), images)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.optimizer == "adamw":
        # the fused kernel updates all parameters in one pass (benchmarks/train_profile.py measures the gain)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                      fused=device in ("cpu", "cuda"))
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    nesterov=config.nesterov and config.momentum > 0,
                                    weight_decay=config.weight_decay)
    scheduler = None
    if config.schedule == "onecycle":
        total = config.epochs * steps_per_epoch
        if total < 4:
            raise ConfigError(f"the one-cycle schedule needs at least 4 training steps, this run has {total}; "
                              "train on more images, a smaller batch size or more epochs")
        # a quarter of the run warms up; very short runs (smoke tests) need at least 2 steps for it
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
            pct_start=max(0.25, 2 / total), cycle_momentum=config.optimizer == "sgd")
    average = AveragedModel(model, multi_avg_fn=moving_average(config.ema)) if config.ema else None
    return model, optimizer, scheduler, average


def moving_average(decay: float):
    """An exponential moving average whose decay grows as (1 + n) / (10 + n) up to `decay` after n updates, so
    that a short run is not dominated by its random initial weights."""
    def update(averaged: list, current: list, steps) -> None:
        n = float(steps)
        d = min(decay, (1 + n) / (10 + n))
        for a, c in zip(averaged, current):
            a.lerp_(c, 1 - d)
    return update


def training_loss(log_probs, y, label_smoothing: float = 0.0):
    """Mean negative log-likelihood; with label smoothing e, the target puts 1 - e on the label and e spread
    evenly over all classes."""
    import torch.nn.functional as F

    loss = F.nll_loss(log_probs, y)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * log_probs.mean(1).mean()
    return loss


def first_layer(model):
    """The model's first layer with weights (ConvNet: conv1; MLP: its first hidden layer)."""
    return next(m for m in model.modules() if not any(True for _ in m.children())
                and any(True for _ in m.parameters(recurse=False)))


def frozen_from(config: TrainConfig, steps_per_epoch: int, bf16: bool) -> int | None:
    """The step (counted from 0 over the whole run) from which the first layer stops learning; None: never.
    Only float32 runs freeze it: a bf16 step is fast enough to keep the last bit of accuracy it buys."""
    if bf16 or config.float32_first_layer_steps >= 1.0:
        return None
    return round(config.float32_first_layer_steps * config.epochs * steps_per_epoch)


@dataclass
class Step:
    """One optimization step of a run: augment, forward (bf16 autocast if on), loss, backward, update, average.

    `done` counts the run's steps so far (a resumed run starts at its epochs times the steps per epoch); from
    `frozen_from` on, the first layer is frozen: no gradient is computed for it, the optimizer skips it."""

    config: TrainConfig
    model: Any
    optimizer: Any
    scheduler: Any
    average: Any
    augment_rng: Any
    bf16: bool
    done: int = 0
    frozen_from: int | None = None  # None: never
    distortion: Distortion = field(init=False)

    def __post_init__(self) -> None:
        self.distortion = self.config.distortion  # built once, not at every step
        if self.frozen_from is not None and self.done > self.frozen_from:  # resumed after the freeze
            first_layer(self.model).requires_grad_(False)

    def __call__(self, x, y):
        import torch

        if self.done == self.frozen_from:
            first_layer(self.model).requires_grad_(False)  # its last gradient is dropped by zero_grad below
        self.done += 1
        if self.distortion.active:
            x = distort(x, self.distortion, self.augment_rng, background=BACKGROUND)
            if self.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(x)
        out = out.float()
        loss = training_loss(out, y, self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.average is not None:
            self.average.update_parameters(self.model)
        return out, loss


def train_epoch(step: Step, X, Y, order, batch_size: int,
                on_batch: Callable[[int], None]) -> tuple[float, int, float]:
    """One pass over X in the given order; returns (mean training loss, correct predictions, the highest learning
    rate a step used: with a one-cycle schedule the epoch's own peak, not the rate it started at)."""
    import torch

    step.model.train()
    loss_sum = torch.zeros((), device=X.device)
    correct = torch.zeros((), dtype=torch.long, device=X.device)
    peak_lr = 0.0
    for batch, start in enumerate(range(0, len(X), batch_size), start=1):
        idx = order[start:start + batch_size]
        y = Y[idx]
        peak_lr = max(peak_lr, step.optimizer.param_groups[0]["lr"])  # what this step's update uses
        out, loss = step(X[idx], y)
        # accumulated on the device: a .item() per batch would stall a GPU
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        on_batch(batch)
    return loss_sum.item() / len(X), int(correct.item()), peak_lr
