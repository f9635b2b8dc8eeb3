"""Training: the notebook's recipe, a fast default recipe, a most-accurate recipe, checkpoints every epoch, resume.

The whole dataset is one normalized tensor on the device: no DataLoader, no per-sample transforms. Each
epoch shuffles with a dedicated generator whose state is checkpointed, so a resumed run continues exactly
where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from toolkit import data as mnist
from toolkit import devices, fileio, sysinfo
from toolkit.augment import Distortion, distort
from toolkit.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from toolkit.errors import CheckpointError, ConfigError, ProviderUnavailable
from toolkit.model import MODELS, build_model, count_parameters
from toolkit.preprocess import BACKGROUND

# `seed` is the 2019 notebook; `fast` passes 99.0% in one epoch; `best` is the most accurate in a few minutes.
# Each setting of `fast` and `best` was chosen on a validation split held out of the training set, never on the
# test set: benchmarks/recipes.py measures what each one adds.
RECIPES: dict[str, dict[str, Any]] = {
    "seed": dict(epochs=10, batch_size=64, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0,
                 schedule="constant", bf16=False, channels_last=False),
    "fast": dict(epochs=1, batch_size=128, optimizer="adamw", lr=3e-3, momentum=0.9, nesterov=False,
                 weight_decay=1e-2, schedule="onecycle", label_smoothing=0.2, bf16=True, channels_last=True),
    "best": dict(epochs=15, batch_size=128, optimizer="adamw", lr=3e-3, momentum=0.9, nesterov=False,
                 weight_decay=1e-2, schedule="onecycle", label_smoothing=0.1, rotate=10.0, scale=0.1, shift=2.0,
                 bf16=True, channels_last=True),
}
DEFAULT_RECIPE = "fast"
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
    holdout: int = 0  # keep the last N training images out of training, as a validation split
    model: str = "convnet"
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
    "elastic": (0.0, 4.0), "ema": (0.0, 0.99999), "holdout": (0, 30000),
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
        kind = {"int": int, "float": float, "bool": bool, "str": str, "int | None": int}[str(fields[name].type)]
        if value is None and str(fields[name].type).endswith("None"):
            continue
        if not isinstance(value, _TYPES[kind]) or (kind is not bool and isinstance(value, bool)):
            raise CheckpointError(f"the checkpoint's setting {name} is {type(value).__name__}, expected {kind.__name__}")
    # a setting the checkpoint lacks predates it: its default is what that run used
    defaults = {f.name: f.default for f in fields.values() if f.default is not dataclasses.MISSING}
    try:
        config = TrainConfig(**{**dataclasses.asdict(current), **defaults, **saved})
        validate(config)
    except ConfigError as e:
        raise CheckpointError(f"the checkpoint's settings are invalid: {e}") from None
    return config


def validate(config: TrainConfig) -> None:
    """Every setting of a run: known names, and numbers finite and within LIMITS."""
    if config.model not in MODELS:
        raise ConfigError(f"unknown model {config.model!r}; choose one of: {', '.join(MODELS)}")
    for name, (low, high) in LIMITS.items():
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise ConfigError(f"{name.replace('_', '-')} must be a number from {low:g} to {high:g}, got {value}")
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if config.schedule not in ("onecycle", "constant"):
        raise ConfigError(f"unknown schedule {config.schedule!r}; use onecycle or constant")
    if config.device not in DEVICES:
        raise ConfigError(f"unknown device {config.device!r}; choose one of: {', '.join(DEVICES)}")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; 'cuda' without one is an error."""
    if device == "auto":
        return "cpu" if devices.torch_unavailable("cuda") else "cuda"
    why = devices.torch_unavailable(device)
    if why:
        raise ProviderUnavailable(f"--device {device} asked for, but {why}; use --device cpu or --device auto")
    return device


def bf16_supported(device: str) -> bool:
    """Whether bf16 autocast runs natively here (CUDA bf16, or CPUs with AVX512-BF16/AMX)."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class EpochStats:
    """One row of history.json: what the notebook printed each epoch, plus time and learning rate."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float
    lr: float
    val_loss: float | None = None  # on the held-out part of the training set, when the run keeps one
    val_accuracy: float | None = None

    @property
    def train_error(self) -> float:
        return 100.0 - self.train_accuracy

    @property
    def test_error(self) -> float:
        return 100.0 - self.test_accuracy


@dataclass
class TrainResult:
    run_dir: str
    checkpoint: str
    model: str
    parameters: int
    device: str
    bf16: bool
    config: dict[str, Any]
    history: list[EpochStats] = field(default_factory=list)
    resumed_from_epoch: int = 0

    @property
    def test_accuracy(self) -> float:
        return self.history[-1].test_accuracy if self.history else float("nan")

    @property
    def train_seconds(self) -> float:
        return sum(row.seconds for row in self.history)


def evaluate(model, images, labels, batch_size: int = 2000) -> tuple[float, float]:
    """(mean NLL loss, accuracy in %) of `model` in float32 on already-normalized `images`."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out = model(images[start:start + batch_size])
            y = labels[start:start + batch_size]
            total_loss += F.nll_loss(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
    return total_loss / len(images), 100.0 * correct / len(images)


EpochCallback = Callable[[EpochStats, int], None]  # (stats, total epochs)
BatchCallback = Callable[[int, int, int], None]  # (epoch, batch, batches per epoch)


def train(
    config: TrainConfig,
    data_dir: str | Path,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> TrainResult:
    """Train `config` on MNIST from `data_dir`, writing checkpoint.pt, history.json and errors.png to `run_dir`.

    The checkpoint is rewritten atomically after every epoch, so an interrupted run keeps its last finished
    epoch; `resume=True` continues from it with the checkpoint's own configuration.
    """
    import torch

    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        config = config_from_checkpoint(state["config"], config)
    validate(config)
    device = resolve_device(config.device)
    if not resume and ckpt_path.exists() and not overwrite:
        raise ConfigError(f"{run_dir} already holds a checkpoint; pass --resume to continue it, "
                          "--overwrite to start again, or choose another --out")
    fileio.check_writable_dir(run_dir, "run folder")
    use_bf16 = config.bf16 and bf16_supported(device)

    train_x, train_y = mnist.load_split(data_dir, "train")
    test_x, test_y = mnist.load_split(data_dir, "test")
    if config.train_limit:
        train_x, train_y = train_x[:config.train_limit], train_y[:config.train_limit]
    if config.holdout >= len(train_x):
        raise ConfigError(f"holdout {config.holdout} leaves no training images of {len(train_x)}")
    X = mnist.to_tensor(train_x, device, config.channels_last)
    Y = torch.from_numpy(train_y).to(device)
    X_test = mnist.to_tensor(test_x, device, config.channels_last)
    Y_test = torch.from_numpy(test_y).to(device)
    validation = None
    if config.holdout:
        validation = X[-config.holdout:], Y[-config.holdout:]
        X, Y = X[:-config.holdout], Y[:-config.holdout]

    torch.manual_seed(config.seed)
    rngs = Generators(shuffle=torch.Generator().manual_seed(config.seed),
                      augment=torch.Generator().manual_seed(config.seed + 1))
    steps_per_epoch = math.ceil(len(X) / config.batch_size)
    model, optimizer, scheduler, average = _build(config, device, steps_per_epoch)
    history: list[EpochStats] = []
    if state is not None:
        history = _restore(state, ckpt_path, model, optimizer, scheduler, average, rngs)
    start_epoch = len(history)
    step = _Step(config, model, optimizer, scheduler, average, rngs.augment, use_bf16)
    evaluated = average.module if average is not None else model

    result = TrainResult(run_dir=str(run_dir), checkpoint=str(ckpt_path), model=config.model,
                         parameters=count_parameters(model), device=device, bf16=use_bf16,
                         config=dataclasses.asdict(config), history=history, resumed_from_epoch=start_epoch)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True

    for epoch in range(start_epoch + 1, config.epochs + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        order = torch.randperm(len(X), generator=rngs.shuffle).to(device)
        train_loss, train_correct = _train_epoch(
            step, X, Y, order, config.batch_size,
            lambda batch: on_batch(epoch, batch, steps_per_epoch) if on_batch else None)
        val_loss = val_acc = None
        if validation is not None:
            val_loss, val_acc = evaluate(evaluated, *validation, config.eval_batch_size)
        test_loss, test_acc = evaluate(evaluated, X_test, Y_test, config.eval_batch_size)
        if device == "cuda":
            torch.cuda.synchronize()
        stats = EpochStats(epoch=epoch, train_loss=train_loss, train_accuracy=100.0 * train_correct / len(X),
                           test_loss=test_loss, test_accuracy=test_acc, seconds=time.perf_counter() - t0, lr=lr,
                           val_loss=val_loss, val_accuracy=val_acc)
        history.append(stats)
        _save_run(run_dir, model, optimizer, scheduler, average, rngs, config, result)
        if on_epoch:
            on_epoch(stats, config.epochs)

    from toolkit.plots import plot_errors

    plot_errors(history, run_dir / "errors.png", title=f"{config.model}, recipe {config.recipe}")
    return result


@dataclass
class Generators:
    """The random streams of a run that a resumed run must continue: batch order and augmentation."""

    shuffle: Any
    augment: Any


def _build(config: TrainConfig, device: str, steps_per_epoch: int):
    """The model (on `device`, channels_last if asked), its optimizer, the one-cycle schedule if any, and the
    moving average of its weights if any."""
    import torch
    from torch.optim.swa_utils import AveragedModel

    model = build_model(config.model).to(device)
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
    average = AveragedModel(model, multi_avg_fn=_moving_average(config.ema)) if config.ema else None
    return model, optimizer, scheduler, average


def _moving_average(decay: float):
    """An exponential moving average whose decay grows as (1 + n) / (10 + n) up to `decay` after n updates, so
    that a short run is not dominated by its random initial weights."""
    def update(averaged: list, current: list, steps) -> None:
        n = float(steps)
        d = min(decay, (1 + n) / (10 + n))
        for a, c in zip(averaged, current):
            a.lerp_(c, 1 - d)
    return update


def _restore(state: dict[str, Any], path: Path, model, optimizer, scheduler, average, rngs: Generators,
             ) -> list[EpochStats]:
    """Load a checkpoint's training state in place; returns its history."""
    import torch

    try:
        if average is not None:
            # `state_dict` holds the averaged weights (what is evaluated and exported), the raw ones are apart
            model.load_state_dict(state["training_state_dict"])
            average.module.load_state_dict(state["state_dict"])
            average.n_averaged.fill_(int(state["averaged_steps"]))
        else:
            model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        rngs.shuffle.set_state(state["shuffle_rng"])
        if "augment_rng" in state:
            rngs.augment.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        return [EpochStats(**row) for row in state["history"]]
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot resume from {path}: {str(e).splitlines()[0][:200]}") from None


def training_loss(log_probs, y, label_smoothing: float = 0.0):
    """Mean negative log-likelihood; with label smoothing e, the target puts 1 - e on the label and e spread
    evenly over all classes."""
    import torch.nn.functional as F

    loss = F.nll_loss(log_probs, y)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * log_probs.mean(1).mean()
    return loss


@dataclass
class _Step:
    """One optimization step of a run: augment, forward (bf16 autocast if on), loss, backward, update, average."""

    config: TrainConfig
    model: Any
    optimizer: Any
    scheduler: Any
    average: Any
    augment_rng: Any
    bf16: bool
    distortion: Distortion = field(init=False)

    def __post_init__(self) -> None:
        self.distortion = self.config.distortion  # built once, not at every step

    def __call__(self, x, y):
        import torch

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


def _train_epoch(step: _Step, X, Y, order, batch_size: int, on_batch: Callable[[int], None]) -> tuple[float, int]:
    """One pass over X in the given order; returns (mean training loss, correct predictions)."""
    import torch

    step.model.train()
    loss_sum = torch.zeros((), device=X.device)
    correct = torch.zeros((), dtype=torch.long, device=X.device)
    for batch, start in enumerate(range(0, len(X), batch_size), start=1):
        idx = order[start:start + batch_size]
        y = Y[idx]
        out, loss = step(X[idx], y)
        # accumulated on the device: a .item() per batch would stall a GPU
        loss_sum += loss.detach() * len(y)
        correct += (out.argmax(1) == y).sum()
        on_batch(batch)
    return loss_sum.item() / len(X), int(correct.item())


def _save_run(run_dir: Path, model, optimizer, scheduler, average, rngs: Generators, config: TrainConfig,
              result: TrainResult) -> None:
    import torch

    def portable(module) -> dict[str, Any]:
        # saved contiguous and on the CPU so export and verify can load it anywhere
        return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}

    history = [dataclasses.asdict(row) for row in result.history]
    last = result.history[-1]
    averaged = {} if average is None else {"training_state_dict": portable(model),
                                           "averaged_steps": int(average.n_averaged.item())}
    save_checkpoint(run_dir / CHECKPOINT_NAME, {
        "model": {"name": config.model, "args": {}, "parameters": result.parameters},  # models take no args yet
        # the weights evaluated and exported: the moving average when the run keeps one
        "state_dict": portable(average.module if average is not None else model),
        **averaged,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "shuffle_rng": rngs.shuffle.get_state(),
        "augment_rng": rngs.augment.get_state(),
        "torch_rng": torch.get_rng_state(),
        "config": dataclasses.asdict(config),
        "epoch": last.epoch,
        "history": history,
        "metrics": {"test_accuracy": last.test_accuracy, "test_loss": last.test_loss,
                    "train_accuracy": last.train_accuracy, "train_seconds": result.train_seconds},
        "device": result.device,
        "bf16": result.bf16,
        "data_md5": mnist.md5_manifest(),
        "versions": sysinfo.versions("torch", "torchvision", "numpy"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    fileio.write_json(run_dir / "history.json", {"model": config.model, "recipe": config.recipe,
                                                  "config": dataclasses.asdict(config), "epochs": history})
