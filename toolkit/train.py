"""Training: runs a recipe (toolkit.recipes) epoch by epoch, checkpoints every epoch, and resumes.

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
from toolkit import devices, fileio, heap, sysinfo
from toolkit.bounds import is_number_within
from toolkit.checkpoint import CHECKPOINT_NAME, RUN_FILES, load_checkpoint, save_checkpoint
from toolkit.errors import CheckpointError, ConfigError, OutputError, ProviderUnavailable
from toolkit.model import count_parameters
from toolkit.recipes import TrainConfig, config_from_checkpoint, validate
from toolkit.train_step import Step, build_training, first_layer, frozen_from, train_epoch


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; 'cuda' without one is an error."""
    if device == "auto":
        return "cpu" if devices.torch_unavailable("cuda") else "cuda"
    why = devices.torch_unavailable(device)
    if why:
        raise ProviderUnavailable(f"--device {device} asked for, but {why}; use --device cpu or --device auto")
    return device


def bf16_supported(device: str) -> bool:
    """Whether bf16 autocast runs natively here (CUDA bf16, or CPUs with AVX512-BF16/AMX).

    oneDNN also reports bf16 support on an AVX-512 CPU without those (Ice Lake, Cascade Lake), where it emulates
    it: the `fast` recipe's step then takes 2.3 times as long as in float32 (benchmarks/bf16_emulation.py), so
    only the CPU's own flags count."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    if not sysinfo.native_bf16():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# The upper bound of each number of an EpochStats row (accuracies are percentages; none is below 0), and the
# fields that may be None (a run without a validation split; histories written before peak_lr)
HISTORY_LIMITS = {"train_loss": math.inf, "train_accuracy": 100.0, "test_loss": math.inf, "test_accuracy": 100.0,
                  "seconds": math.inf, "lr": math.inf, "val_loss": math.inf, "val_accuracy": 100.0,
                  "peak_lr": math.inf}
HISTORY_OPTIONAL = ("val_loss", "val_accuracy", "peak_lr")


@dataclass
class EpochStats:
    """One row of history.json: what the notebook printed each epoch, plus time and learning rate."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float
    lr: float  # at the epoch's start
    val_loss: float | None = None  # on the held-out part of the training set, when the run keeps one
    val_accuracy: float | None = None
    peak_lr: float | None = None  # the highest any step of the epoch used (None in histories written before it)

    def check(self, epoch: int) -> None:
        """ValueError unless this is a plausible row for `epoch` (a history read from a checkpoint is input)."""
        if not isinstance(self.epoch, int) or isinstance(self.epoch, bool) or self.epoch != epoch:
            raise ValueError(f"history row {epoch} is for epoch {str(self.epoch)[:20]}, not {epoch}")
        for name, high in HISTORY_LIMITS.items():
            value = getattr(self, name)
            if value is None and name in HISTORY_OPTIONAL:
                continue
            if not is_number_within(value, 0.0, high):
                within = "from 0 to 100" if high == 100.0 else "finite and >= 0"
                raise ValueError(f"history of epoch {epoch} has {name} {str(value)[:20]}, not a number {within}")

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
    whitened_first_layer: bool = False  # asked for and applicable: set from the images, never trained

    @property
    def compute(self) -> str:
        """The training step's compute mode: bfloat16 (autocast) or float32."""
        return "bfloat16" if self.bf16 else "float32"

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
    resume_from: dict[str, Any] | None = None,
    overwrite: bool = False,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> TrainResult:
    """Train `config` on MNIST from `data_dir`, writing checkpoint.pt, history.json and errors.png to `run_dir`.

    The checkpoint is rewritten atomically after every epoch, so an interrupted run keeps its last finished
    epoch; `resume=True` continues from it with the checkpoint's own configuration. With it, `resume_from`
    is that checkpoint as `load_checkpoint` read it, where the caller already has (the CLI shows its settings first):
    the run then continues exactly what was read and shown, and the file is not read a second time.
    """
    import torch

    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if resume and overwrite:
        raise ConfigError("--resume continues the run in its folder and --overwrite starts it again; give one")
    state = None
    if resume:
        state = resume_from if resume_from is not None else load_checkpoint(ckpt_path)
        config = config_from_checkpoint(state["config"], config)
        if (why := finished(run_dir, state, config)):
            raise ConfigError(why)
    validate(config)
    device = resolve_device(config.device)
    _check_run_files(run_dir, keep=not (resume or overwrite))
    use_bf16 = config.bf16 and bf16_supported(device)
    if device == "cpu":
        heap.keep_freed_memory()  # each step reuses the last step's memory instead of page-faulting on new

    data = _load_tensors(config, data_dir, device)
    fileio.check_writable_dir(run_dir, "run folder")  # once the data is there: a failed start leaves no folder
    torch.manual_seed(config.seed)
    rngs = Generators(shuffle=torch.Generator().manual_seed(config.seed),
                      augment=torch.Generator().manual_seed(config.seed + 1))
    steps_per_epoch = math.ceil(len(data.x) / config.batch_size)
    model, optimizer, scheduler, average = build_training(config, device, steps_per_epoch, data.x)
    config = _as_applied(config, model)
    history: list[EpochStats] = []
    if state is not None:
        history = _restore(state, ckpt_path, model, optimizer, scheduler, average, rngs)
    start_epoch = len(history)
    step = Step(config, model, optimizer, scheduler, average, rngs.augment, use_bf16,
                done=start_epoch * steps_per_epoch, frozen_from=frozen_from(config, steps_per_epoch, use_bf16))
    evaluated = average.module if average is not None else model

    result = TrainResult(run_dir=str(run_dir), checkpoint=str(ckpt_path), model=config.model,
                         parameters=count_parameters(model), device=device, bf16=use_bf16,
                         config=dataclasses.asdict(config), history=history, resumed_from_epoch=start_epoch,
                         whitened_first_layer=config.whitened_first_layer)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True

    for epoch in range(start_epoch + 1, config.epochs + 1):
        def batch_done(batch: int, epoch: int = epoch) -> None:
            if on_batch:
                on_batch(epoch, batch, steps_per_epoch)

        stats = _run_epoch(epoch, step, data, rngs.shuffle, evaluated, batch_done)
        history.append(stats)
        _save_run(run_dir, model, optimizer, scheduler, average, rngs, config, result)
        if on_epoch:
            on_epoch(stats, config.epochs)

    from toolkit.plots import plot_errors

    plot_errors(history, run_dir / "errors.png", title=f"{config.model}, recipe {config.recipe}")
    return result


def _as_applied(config: TrainConfig, model) -> TrainConfig:
    """`config` as the run applies it, which is what it saves: a whitened first layer asked for where the model's
    first layer is not a convolution (the MLP) is turned off. Whitening is the one thing that freezes a layer before
    training starts, so a first layer built trainable is one `whiten_layer` left as it was."""
    if config.whitened_first_layer and first_layer(model).weight.requires_grad:
        return dataclasses.replace(config, whitened_first_layer=False)
    return config


def finished(run_dir: str | Path, state: dict[str, Any], config: TrainConfig) -> str | None:
    """Why resuming the run of checkpoint `state` would train nothing (its history holds all its epochs), or None;
    None too for a history that does not hold together, which resuming then refuses, saying what is wrong.
    CheckpointError, as resuming words it, when the run has finished but its weights do not fit its model: there is
    nothing to train, but the checkpoint is damaged, which is what matters."""
    try:
        done = len(_history(state["history"]))
    except (KeyError, TypeError, ValueError):
        return None
    if done != config.epochs or state.get("epoch") != done:
        return None
    _check_weights(state, config, Path(run_dir) / CHECKPOINT_NAME)
    return (f"{run_dir} has finished its {config.epochs} epoch{'s' * (config.epochs != 1)}; nothing to resume "
            "(to train longer: a new run with --epochs N, in another --out or here with --overwrite)")


def _check_weights(state: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """CheckpointError when the weights of checkpoint `state` (those exported, and the raw ones a run with averaging
    keeps apart) do not load into the model of its settings: a tensor missing, extra or of another shape."""
    from toolkit.model import build_model

    model = build_model(config.model)
    try:
        for key in ("state_dict", "training_state_dict"):
            if key in state:
                model.load_state_dict(state[key])
    except (RuntimeError, TypeError, ValueError, KeyError) as e:
        raise CheckpointError(_cannot_resume(path, e)) from None


def _cannot_resume(path: Path, e: Exception) -> str:
    """Why a checkpoint cannot be resumed, on one line: torch puts the missing or misshapen tensors on the lines
    after its first."""
    return f"cannot resume from {path}: {' '.join(str(e).split())[:300]}"


def _check_run_files(run_dir: Path, keep: bool) -> None:
    """Before any data is read: refuse a folder (or a link, FIFO, ...) where a run file goes, and, with `keep`
    (a new run without --overwrite), any run file already there, so nothing of a user's is replaced unasked."""
    if not run_dir.is_dir():
        return  # nothing in it yet; whether it can be made is checked once the data is there
    for name in RUN_FILES:
        path = run_dir / name
        try:
            fileio.check_target(path)
        except IsADirectoryError:
            problem = (f"{path} is a folder, not a checkpoint" if name == CHECKPOINT_NAME
                       else f"cannot write {path}: a folder is in the way")
            raise OutputError(f"{problem}; move it away or choose another --out") from None
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not keep or not existing:
        return
    if CHECKPOINT_NAME in existing:
        raise ConfigError(f"{run_dir} already holds a checkpoint; pass --resume to continue it, "
                          "--overwrite to start again, or choose another --out")
    raise ConfigError(f"{run_dir} already holds {' and '.join(existing)}; pass --overwrite to replace "
                      f"{'them' if len(existing) > 1 else 'it'}, or choose another --out")


@dataclass
class _Tensors:
    """A run's images (normalized) and labels on its device: training, the held-out validation split if the
    run keeps one, and test."""

    x: Any
    y: Any
    test_x: Any
    test_y: Any
    validation: tuple[Any, Any] | None = None


def _load_tensors(config: TrainConfig, data_dir: str | Path, device: str) -> _Tensors:
    import torch

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
    if not config.holdout:
        return _Tensors(X, Y, X_test, Y_test)
    validation = X[-config.holdout:], Y[-config.holdout:]
    return _Tensors(X[:-config.holdout], Y[:-config.holdout], X_test, Y_test, validation)


def _run_epoch(epoch: int, step: Step, data: _Tensors, shuffle: Any, evaluated: Any,
               on_batch: Callable[[int], None]) -> EpochStats:
    """Train one epoch in a fresh order drawn from `shuffle`, then evaluate `evaluated` (the moving average
    when the run keeps one) on the validation split, if any, and on the test set."""
    import torch

    config, device = step.config, data.x.device
    t0 = time.perf_counter()
    lr = step.optimizer.param_groups[0]["lr"]
    order = torch.randperm(len(data.x), generator=shuffle).to(device)
    train_loss, train_correct, peak_lr = train_epoch(step, data.x, data.y, order, config.batch_size, on_batch)
    val_loss = val_acc = None
    if data.validation is not None:
        val_loss, val_acc = evaluate(evaluated, *data.validation, config.eval_batch_size)
    test_loss, test_acc = evaluate(evaluated, data.test_x, data.test_y, config.eval_batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return EpochStats(epoch=epoch, train_loss=train_loss, train_accuracy=100.0 * train_correct / len(data.x),
                      test_loss=test_loss, test_accuracy=test_acc, seconds=time.perf_counter() - t0, lr=lr,
                      val_loss=val_loss, val_accuracy=val_acc, peak_lr=peak_lr)


@dataclass
class Generators:
    """The random streams of a run that a resumed run must continue: batch order and augmentation."""

    shuffle: Any
    augment: Any


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
            steps = scheduler.total_steps  # what the run's settings give
            scheduler.load_state_dict(state["scheduler"])
            if scheduler.total_steps != steps:
                raise ValueError(f"its schedule has {scheduler.total_steps} steps, its settings give {steps}")
        rngs.shuffle.set_state(state["shuffle_rng"])
        if "augment_rng" in state:
            rngs.augment.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        history = _history(state["history"])
        if not history or history[-1].epoch != state["epoch"]:
            raise ValueError(f"its history has {len(history)} epochs, but it says it ended epoch "
                             f"{str(state['epoch'])[:20]}")
        return history
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(_cannot_resume(path, e)) from None


def _history(rows: list[Any]) -> list[EpochStats]:
    """The history a checkpoint recorded, row by row checked to be the epochs 1, 2, ... with plausible numbers;
    ValueError or TypeError (a row that is not a mapping of EpochStats' fields) otherwise."""
    history = []
    for epoch, row in enumerate(rows, 1):
        stats = EpochStats(**row)
        stats.check(epoch)
        history.append(stats)
    return history


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
        "compute": result.compute,
        "data_md5": mnist.md5_manifest(),
        "versions": sysinfo.versions("torch", "torchvision", "numpy"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    fileio.write_json(run_dir / "history.json", {"model": config.model, "recipe": config.recipe,
                                                  "compute": result.compute, "config": dataclasses.asdict(config),
                                                  "epochs": history})
