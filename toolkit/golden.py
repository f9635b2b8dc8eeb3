"""Golden outputs: the source checkpoint's PyTorch outputs for the 10,000 MNIST test images, kept beside the
exported artifacts so that they can be verified on a machine that has neither torch nor the checkpoint.

Export computes them (torch); everything else here is torch-free. The file is a plain .npy of float32
log-probabilities [N, 10], listed in manifest.json with its SHA-256; it is read only after the hash matched,
and parsed without pickle.
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path

import numpy as np

from toolkit import data as mnist
from toolkit import fileio, refinputs, sysinfo
from toolkit.artifacts import GOLDEN_NAME, GoldenEntry, read_golden_entry, read_verified_golden
from toolkit.errors import ArtifactError, CheckpointError, ConfigError
from toolkit.preprocess import MEAN, STD, normalize
from toolkit.usermodel import first_line

WHAT = ("PyTorch float32 log-probabilities (log_softmax) of the source checkpoint's model on the CPU, "
        "one row per MNIST test image in file order")
WHAT_ON_INPUTS = ("PyTorch float32 log-probabilities (log_softmax) of the source checkpoint's model on the CPU, "
                  "one row per reference input (inputs.npy) in file order; no labels, so no accuracy")
# The batch verify's reference uses too: the same batches give the same float32 sums. oneDNN runs the built-in
# models' convolutions much faster with channels_last weights at 500 images a call than in NCHW at 2,000.
BATCH = 500


def reference_log_probs(model, pixels: np.ndarray) -> np.ndarray:
    """PyTorch fp32 log-probabilities of `model` (in eval mode) on the CPU for uint8 images [N, 28, 28]."""
    return outputs_on_inputs(model, normalize(pixels, MEAN, STD), "MNIST test images")


def outputs_on_inputs(model, inputs: np.ndarray, what: str = "reference inputs") -> np.ndarray:
    """PyTorch fp32 log-probabilities of `model` (in eval mode) on the CPU for the model's own float32 inputs;
    CheckpointError when any is NaN or infinite: no file could be verified against them."""
    import torch

    from toolkit.model import MODELS

    x = torch.from_numpy(inputs)
    builtin = type(model) in MODELS.values()
    if builtin:
        # channels_last weights make every feature map channels_last (the one-channel input is both layouts at
        # once). On a copy: the caller's model, which export goes on to convert, keeps its weights' layout. Only
        # the built-in models: a user's model may view() a feature map, which a channels_last tensor refuses
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            log_probs = torch.cat([model(x[i:i + BATCH]) for i in range(0, len(x), BATCH)]).numpy()
    except (Exception, SystemExit) as e:  # a user's forward may raise anything, or call sys.exit
        if builtin:
            raise
        raise ConfigError(f"the model failed on the {what} (batches of up to {BATCH}): {type(e).__name__}: "
                          f"{first_line(e)}") from None
    if log_probs.shape != (len(x), 10):
        raise ConfigError(f"the model returns {list(log_probs.shape)} for the {len(x):,} {what}, not "
                          f"[{len(x)}, 10]")
    bad = int((~np.isfinite(log_probs)).any(axis=1).sum())
    if bad:
        raise CheckpointError(f"the checkpoint's model gives NaN or infinite log-probabilities on {bad:,} of the "
                              f"{len(log_probs):,} {what}; only a model with finite outputs can be exported and "
                              "verified")
    return log_probs


def has_test_set(data_dir: str | os.PathLike) -> bool:
    """Whether both MNIST test files are there (plain or .gz); whether they are intact is load_split's check."""
    raw = mnist.raw_dir(data_dir)
    return all((raw / name).exists() or (raw / f"{name}.gz").exists() for name in mnist.SPLITS["test"])


def npy_bytes(log_probs: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(log_probs, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def write_golden(folder: str | os.PathLike, log_probs: np.ndarray, labels: np.ndarray | None, *,
                 source_checkpoint: str, source_sha256: str, inputs: dict | None = None,
                 to: Path | None = None) -> GoldenEntry:
    """Atomically write `<folder>/golden.npy` (or the scratch file `to` that becomes it) and return its manifest
    entry. `inputs`: what refinputs.write_inputs recorded, for outputs on reference inputs (no labels, so no accuracy)
    rather than the MNIST test set."""
    data = npy_bytes(log_probs)
    fileio.write_bytes(Path(folder) / GOLDEN_NAME, data, to)
    if inputs is None:
        source = {"split": "test", "md5": {name: mnist.MNIST_FILES[name] for name in mnist.SPLITS["test"]}}
        what, accuracy = WHAT, 100.0 * float((log_probs.argmax(1) == labels).mean())
    else:
        source, accuracy = dict(inputs), None
        what = WHAT_ON_INPUTS
    return GoldenEntry(
        file=GOLDEN_NAME, what=what, shape=list(log_probs.shape), dtype="float32", size_bytes=len(data),
        sha256=fileio.digest(data), data=source,
        source_checkpoint=source_checkpoint, source_sha256=source_sha256,
        reference_accuracy=accuracy, device="cpu",
        versions=sysinfo.versions("torch", "numpy"), path=str((Path(folder) / GOLDEN_NAME).absolute()))


def parse_golden(data: bytes, golden: GoldenEntry) -> np.ndarray:
    """The array in hash-checked .npy bytes, refused unless it is the finite float32 [N, 10] the entry says."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ArtifactError(f"{golden.file} is not a readable .npy file ({str(e)[:200]}); export again") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or list(array.shape) != golden.shape:
        raise ArtifactError(f"{golden.file} holds {getattr(array, 'dtype', '?')} {getattr(array, 'shape', '?')}, "
                            f"the manifest says float32 {tuple(golden.shape)}; export again")
    if not np.isfinite(array).all():
        raise ArtifactError(f"{golden.file} contains NaN or infinity; export again")
    return array


def load_reference(folder: str | os.PathLike) -> tuple[np.ndarray, GoldenEntry]:
    """The golden log-probabilities of the export in `folder` and their description, torch-free.

    ArtifactError when the manifest lists none, the file is missing, or its bytes are not the ones whose
    SHA-256 the manifest holds (checked before anything parses them).
    """
    golden = read_golden_entry(folder)
    if golden is None:
        raise ArtifactError(f"{Path(folder) / 'manifest.json'} lists no golden outputs; export again with the "
                            "MNIST test set present (toolkit data, then toolkit export --data-dir ...)")
    return parse_golden(read_verified_golden(golden), golden), golden


def reference_inputs(folder: str | os.PathLike, golden: GoldenEntry, rows: int) -> np.ndarray:
    """The reference inputs the golden outputs of a model of another input shape answer, hash-checked."""
    inputs = refinputs.read_inputs(folder, golden.data)
    if len(inputs) != rows:
        raise ArtifactError(f"{golden.file} holds {rows} rows for {len(inputs)} reference inputs; export again")
    return inputs

