"""Checkpoints: weights plus everything needed to rebuild the model and trust where it came from.

A checkpoint is a plain dict of tensors and primitives, so `torch.load(weights_only=True)` reads it and no
pickle from a file can run code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import fileio, usermodel
from toolkit.bounds import is_number_within
from toolkit.errors import CheckpointError, ConfigError
from toolkit.usermodel import ModelSource

FORMAT = "toolkit-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
RUN_FILES = (CHECKPOINT_NAME, "history.json", "errors.png")  # what a training run writes into its folder
MAX_CHECKPOINT_BYTES = 256 << 20  # a ConvNet checkpoint is about 5 MiB
DEFAULT_RUNS_DIR = Path("runs")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write a checkpoint dict (the format tag is added here)."""
    import torch

    from toolkit.errors import OutputError

    with fileio.atomic_path(path) as tmp:
        try:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, tmp)
        except RuntimeError as e:  # torch's writer reports a full disk as RuntimeError("... file write failed")
            raise OutputError(f"cannot write checkpoint {path}: {str(e).splitlines()[0][:200]}") from None


def read_checkpoint(path: str | os.PathLike, source: ModelSource | None = None,
                    state_dict_ok: bool = True) -> tuple[dict[str, Any], str]:
    """Read and validate a toolkit checkpoint, or (`state_dict_ok`) a plain state_dict (see toolkit.usermodel: its
    model found from its shapes or as `source` says); returns the checkpoint dict with the SHA-256 of exactly the
    bytes loaded.

    The file is read once, hashed, and unpickled from those bytes by torch's weights-only loader (tensors and
    primitives only), so the hash that artifacts record is the hash of what was loaded.
    """
    import io
    import warnings

    import torch

    path = Path(path)
    source = source or ModelSource()
    data = _read_bytes(path, source, state_dict_ok)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses anyway
            warnings.simplefilter("ignore")
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable checkpoint ({_load_failure(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        if not state_dict_ok:
            raise CheckpointError(f"{path} is not a toolkit checkpoint (no '{FORMAT}' tag); train one with "
                                  "`toolkit train`")
        state_dict = usermodel.find_state_dict(ckpt)
        if state_dict is None:
            raise CheckpointError(f"{path} is neither a toolkit checkpoint (no '{FORMAT}' tag) nor a state_dict; "
                                  "train one with `toolkit train`, or save your model's `model.state_dict()`")
        check_finite_weights(state_dict, path)
        return usermodel.checkpoint_from_state_dict(state_dict, source, path), fileio.digest(data)
    if source.given:
        raise ConfigError(f"{path} is a toolkit checkpoint, which names its own model: --model, --model-code and "
                          "--model-args are for a plain state_dict")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {str(ckpt.get('format_version'))[:20]}, "
                              f"this toolkit reads version {FORMAT_VERSION}")
    for key, kind in (("model", dict), ("state_dict", dict), ("config", dict), ("history", list)):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"{path} lacks a valid '{key}'; it is damaged or was not written by toolkit")
    in_process = [k for k in ckpt if isinstance(k, str) and k.startswith("_")]
    if in_process:  # the toolkit's own keys for a model from code, set in memory when the user names the code
        raise CheckpointError(f"{path} holds the key {in_process[0][:40]!r}, which no checkpoint file has; it is "
                              "damaged or was not written by toolkit")
    _check_model(ckpt["model"], path)
    _check_metrics(ckpt, path)
    return ckpt, fileio.digest(data)


def _read_bytes(path: Path, source: ModelSource, state_dict_ok: bool) -> bytes:
    """The bytes of a checkpoint file, or CheckpointError for a file that is missing, too large, or not one torch.save
    writes (told from its first bytes; nothing is unpickled)."""
    if not path.is_file():  # a model named by --model or --model-code is not one `toolkit train` makes
        saved = f'save your model\'s weights with torch.save(model.state_dict(), "{path}")'
        hint = saved if source.given else f"train one with `toolkit train`{', or ' + saved if state_dict_ok else ''}"
        raise CheckpointError(f"checkpoint {path} {fileio.absent(path, hint)}")
    try:
        size = path.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path} is {size / 2**20:.0f} MiB, larger than any toolkit checkpoint "
                                  f"(limit {MAX_CHECKPOINT_BYTES >> 20} MiB)")
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    # torch.save writes a zip (torch 1.6 and later), a pickle of protocol 2 or later (its legacy format) or a tar
    # (older still); anything else, a text file or an .onnx, torch's unpickler would call a refused pickle
    if not (data[:4] == b"PK\x03\x04" or data[:1] == b"\x80" or data[257:262] == b"ustar"):
        raise CheckpointError(f"{path} is {'empty, ' if not data else ''}not a PyTorch checkpoint (a torch.save file)")
    return data


def check_finite_weights(state_dict: dict[str, Any], path: str | os.PathLike) -> None:
    """CheckpointError naming the first floating-point tensor that holds NaN or infinity: such a model outputs NaN,
    and every file exported from it, with the golden outputs it is verified against, would be NaN too."""
    import torch

    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: weight {str(name)[:80]} holds NaN or infinite values; the model is "
                                  "broken (did its training diverge?) and cannot be used")


def _check_model(spec: dict[str, Any], path: Path) -> None:
    """A toolkit checkpoint's model is a built-in one, as `toolkit train` records it: its name one of theirs, its
    arguments ones it takes, and nothing only a model from the user's code records (its code, its input shape, an
    output other than the log-probabilities the built-in models return), which export would copy into its manifest."""
    from toolkit.model import MODELS, check_args

    damaged = "it is damaged or was not written by toolkit"
    name, args = spec.get("name"), spec.get("args") or {}
    if not isinstance(name, str) or name not in MODELS:
        raise CheckpointError(f"{path} names the model {str(name)[:40]!r}, not a built-in one "
                              f"({', '.join(MODELS)}); {damaged}")
    try:
        if not isinstance(args, dict):
            raise ConfigError("they are not a mapping")
        check_args(name, args)
    except ConfigError as e:
        raise CheckpointError(f"{path} records invalid arguments for model {name} ({e}); {damaged}") from None
    foreign = [k for k in ("code", "code_sha256", "input_shape") if k in spec]
    if spec.get("output", "log_probs") != "log_probs":
        foreign.append("output")
    if foreign:
        raise CheckpointError(f"{path} records {foreign[0]} {str(spec[foreign[0]])[:40]!r} for the built-in model "
                              f"{name}, which has no code of yours and returns log_probs; {damaged}")


def _check_metrics(ckpt: dict[str, Any], path: Path) -> None:
    """The weights and metrics a checkpoint records: every weight finite (`training_state_dict` too: the raw weights
    a run with averaging resumes from), and a test accuracy, copied into what is exported, a percentage."""
    for key in ("state_dict", "training_state_dict"):
        if isinstance(ckpt.get(key), dict):
            check_finite_weights(ckpt[key], path)
    metrics = ckpt.get("metrics", {})
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path} has metrics that are not a mapping; it is damaged or was not written by toolkit")
    if "test_accuracy" in metrics and not is_number_within(metrics["test_accuracy"], 0.0, 100.0):
        raise CheckpointError(f"{path} records a test accuracy of {str(metrics['test_accuracy'])[:20]}, not a "
                              "percentage from 0 to 100; it is damaged or was not written by toolkit")


def _load_failure(e: Exception) -> str:
    """Why torch refused a file, in a few words. A weights-only refusal names the unpickler's reason and says
    plainly that loading it fully would run code from the file (torch's own text suggests doing just that)."""
    text = str(e).strip()
    if "Weights only load failed" in text:
        reason = text.partition("WeightsUnpickler error:")[2].strip().split("\n\n")[0].strip()
        return (f"it holds objects a weights-only load refuses{': ' + ' '.join(reason.split())[:120] if reason else ''}"
                "; loading it fully would run code from the file, which the toolkit never does")
    return " ".join(text.splitlines()[0].split())[:200] if text else type(e).__name__


@dataclass(frozen=True)
class RecordedCheckpoint:
    """The checkpoint a manifest records as its artifacts' source, read once (read_recorded) from bytes of the
    SHA-256 it records and held: every model built from it (`model()`) comes from those very bytes, never from
    the file read again."""

    path: str
    sha256: str
    ckpt: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        return self.path

    def model(self) -> Any:
        """A fresh model of the checkpoint, in eval mode (its weights copied: the held checkpoint is never changed)."""
        return model_from_checkpoint(self.ckpt)


def read_recorded(path: str | os.PathLike, sha256: str) -> RecordedCheckpoint:
    """The checkpoint at `path` (read_checkpoint: read once, loaded from the bytes it hashed), or CheckpointError when
    those bytes are not the ones whose SHA-256 the manifest records (`sha256`): another checkpoint named."""
    ckpt, digest = read_checkpoint(path)
    if digest != sha256:
        raise CheckpointError(f"checkpoint {path} is not the one these artifacts were exported from (SHA-256 differs "
                              "from the manifest); pass that one with --checkpoint")
    return RecordedCheckpoint(str(path), sha256, ckpt)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a toolkit checkpoint (a training run's, with its settings and history), or raise
    CheckpointError saying what is wrong."""
    return read_checkpoint(path, state_dict_ok=False)[0]


def load_model(path: str | os.PathLike) -> Any:
    """The model of a toolkit checkpoint or of a built-in model's plain state_dict, in eval mode."""
    return model_from_checkpoint(read_checkpoint(path)[0])


def model_from_checkpoint(ckpt: dict[str, Any]):
    """Rebuild the model a checkpoint describes, load its weights, and put it in eval mode."""
    from toolkit.model import build_model

    if "_class" in ckpt:  # a class from the user's code, imported as they asked (read_checkpoint refuses a file's)
        return usermodel.model_from_code(ckpt)
    spec = ckpt["model"]
    try:
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            raise TypeError("model args are not a mapping")
        model = build_model(spec.get("name"), **args)
        model.load_state_dict(ckpt["state_dict"])
    except (ConfigError, RuntimeError, TypeError, KeyError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint weights do not fit model {spec.get('name')!r}: {first[:200]}") from None
    return model.eval()


def latest_checkpoint(runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR) -> Path:
    """The most recently written `<runs_dir>/*/checkpoint.pt`."""
    candidates = sorted(Path(runs_dir).glob(f"*/{CHECKPOINT_NAME}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"no run with a checkpoint under {runs_dir}/; train one with `toolkit train`, "
                              "or name one (--checkpoint for export, --out for train --resume)")
    return candidates[-1]
