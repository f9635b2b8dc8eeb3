"""What exported files are judged against: PyTorch's outputs on the MNIST test set, computed here with torch from
the checkpoint, or the golden outputs export wrote beside the artifacts (read without torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toolkit import data as mnist
from toolkit import fileio, golden, sysinfo
from toolkit.artifacts import GOLDEN_NAME, Artifact, read_golden_entry
from toolkit.errors import ArtifactError, CheckpointError, ConfigError
from toolkit.source_checkpoint import find_checkpoint, followed
from toolkit.usermodel import ModelCodeNeeded, from_model_code

if TYPE_CHECKING:
    from toolkit.checkpoint import RecordedCheckpoint

# auto: the checkpoint's outputs computed with torch when both are here, else the golden outputs
REFERENCES = ("auto", "checkpoint", "golden")


@dataclass(frozen=True)
class Reference:
    """The test set and PyTorch's answers on it: what every runner is judged against."""

    pixels: np.ndarray  # uint8 MNIST test images, or the model's own float32 inputs (reference inputs)
    labels: np.ndarray | None  # None: reference inputs, which have no labels (no accuracy is known)
    log_probs: np.ndarray
    name: str = ""  # where the answers came from: "checkpoint <path>" or "golden.npy sha256=<12 hex>"
    checkpoint: str = ""  # the checkpoint they are the outputs of (for golden outputs: its recorded path)
    source_sha256: str = ""  # that checkpoint's SHA-256, compared with each artifact's source_sha256
    note: str = ""  # auto only: why the golden outputs were used and not the checkpoint (empty when it was)

    @property
    def accuracy(self) -> float:
        if self.labels is None:
            return float("nan")  # unknown: written as null in JSON
        return 100.0 * float((self.log_probs.argmax(1) == self.labels).mean())


def reference_outputs(checkpoint: str, pixels: np.ndarray) -> np.ndarray:
    """PyTorch fp32 log-probabilities of the checkpoint's model on the CPU, in the batches of its golden outputs."""
    from toolkit.checkpoint import load_model

    return golden.reference_log_probs(load_model(checkpoint), pixels)


def check_reference(choice: str) -> None:
    if choice not in REFERENCES:
        raise ConfigError(f"unknown reference {str(choice)[:40]!r}; use {', '.join(REFERENCES)}")


def load_reference(checkpoint: str, data_dir: str) -> Reference:
    """The checkpoint's PyTorch outputs on the test set, computed here (needs torch). The file is read once: the
    SHA-256 recorded is that of the very bytes the model is loaded from (checkpoint.read_checkpoint), so a file
    replaced while it is read cannot pass its outputs off under another file's hash."""
    from toolkit.checkpoint import model_from_checkpoint, read_checkpoint

    pixels, labels = mnist.load_split(data_dir, "test")
    ckpt, sha = read_checkpoint(checkpoint)
    log_probs = golden.reference_log_probs(model_from_checkpoint(ckpt), pixels)
    return Reference(pixels, labels, log_probs, name=f"checkpoint {checkpoint}", checkpoint=str(checkpoint),
                     source_sha256=sha)


def recorded_reference(checkpoint: RecordedCheckpoint, data_dir: str) -> Reference:
    """The outputs of a checkpoint already read and checked against its manifest (checkpoint.read_recorded): bench
    judges its runners against the very bytes its PyTorch eager baseline is built from."""
    pixels, labels = mnist.load_split(data_dir, "test")
    log_probs = golden.reference_log_probs(checkpoint.model(), pixels)
    return Reference(pixels, labels, log_probs, name=f"checkpoint {checkpoint.path}", checkpoint=checkpoint.path,
                     source_sha256=checkpoint.sha256)


def check_source(ref: Reference, artifacts: list[Artifact]) -> None:
    """CheckpointError unless every one of `artifacts` was exported from the checkpoint whose outputs `ref` holds.
    verify fails each such file; bench refuses the run before timing anything, as it refuses the eager baseline
    of another checkpoint (checkpoint.read_recorded)."""
    other = next((a for a in artifacts if a.source_sha256 != ref.source_sha256), None)
    if other is None:
        return
    if ref.name.startswith("checkpoint "):
        raise CheckpointError(f"checkpoint {ref.checkpoint} is not the one {other.file} was exported from (SHA-256 "
                              "differs from the manifest); pass that one with --checkpoint")
    raise ArtifactError(f"{ref.name} holds the outputs of another checkpoint than {other.file} was exported from; "
                        "export again")


def load_golden_reference(folder: str | Path, data_dir: str) -> Reference:
    """The golden outputs export wrote beside the artifacts, with the test set they answer; torch-free.

    A golden file changed since export is an ArtifactError for the whole run (golden.load_reference).
    """
    log_probs, entry = golden.load_reference(folder)
    if "inputs" in entry.data:  # a model of another input shape: its reference inputs, no labels
        return Reference(golden.reference_inputs(folder, entry, len(log_probs)), None, log_probs,
                         name=f"{entry.file} sha256={entry.sha256[:12]}", checkpoint=entry.source_checkpoint,
                         source_sha256=entry.source_sha256)
    pixels, labels = mnist.load_split(data_dir, "test")
    if entry.data.get("md5") != {name: mnist.MNIST_FILES[name] for name in mnist.SPLITS["test"]}:
        raise ArtifactError(f"{entry.file} was not computed from the official MNIST test files; export again")
    if len(log_probs) != len(pixels):
        raise ArtifactError(f"{entry.file} holds {len(log_probs)} rows for {len(pixels)} test images; export again")
    return Reference(pixels, labels, log_probs, name=f"{entry.file} sha256={entry.sha256[:12]}",
                     checkpoint=entry.source_checkpoint, source_sha256=entry.source_sha256)


def resolve_reference(folder: str | Path, artifacts: list[Artifact], checkpoint: str | None, choice: str,
                      data_dir: str) -> Reference:
    """The reference `choice` names. auto: the checkpoint's outputs when torch is installed and the checkpoint is
    found (given, at its recorded path, or beside the manifest), else the golden outputs; without either, the
    error says what is needed."""
    check_reference(choice)
    if choice == "golden":
        return load_golden_reference(folder, data_dir)
    if choice == "checkpoint":
        if from_model_code(folder):
            raise CheckpointError(f"the artifacts in {folder}/ come from model code (export's --model-code), which "
                                  "verify never imports; compare with --reference golden, the outputs export wrote")
        return load_reference(str(find_checkpoint(folder, artifacts, checkpoint)), data_dir)
    has_golden = read_golden_entry(folder) is not None

    def golden_because(note: str) -> Reference:
        return replace(load_golden_reference(folder, data_dir), note=note)

    if not sysinfo.installed("torch"):
        if has_golden:
            return golden_because("torch is not installed")
        raise ArtifactError(f"{Path(folder) / 'manifest.json'} lists no golden outputs ({GOLDEN_NAME}) and torch "
                            "is not installed to compute the reference from the checkpoint; export again with the "
                            "MNIST test set present, or pip install 'toolkit[train]'")
    if has_golden and from_model_code(folder):
        return golden_because("the model came from your code (export's --model-code), which toolkit never imports")
    try:
        found = find_checkpoint(folder, artifacts, checkpoint)
    except CheckpointError:
        if has_golden:
            return golden_because(_not_found(Path(folder), artifacts))
        raise
    try:
        return load_reference(str(found), data_dir)
    except ModelCodeNeeded:  # a state_dict of a class only export's --model-code named
        if has_golden:
            return golden_because(f"the checkpoint {found} holds the weights of a class of your code, which toolkit "
                                  "never imports")
        raise


def _not_found(folder: Path, artifacts: list[Artifact]) -> str:
    """Why find_checkpoint found no checkpoint for the artifacts in `folder`, in one short sentence."""
    recorded = artifacts[0].source_checkpoint if artifacts else ""
    if not recorded:
        return "the manifest records no checkpoint and none of its SHA-256 is beside it"
    path = fileio.shortest((folder / recorded).parent) / Path(recorded).name  # the file gone, its folder not
    if not os.path.lexists(path):
        return f"the checkpoint {path} is not there"
    if not os.path.isfile(path):
        return f"the checkpoint {path} is not a file"
    if not followed(folder, path):
        return ("the manifest's source_checkpoint is outside the folder above the export and the current folder, "
                "so it was not followed")
    return f"the checkpoint {path} is not the file the artifacts were exported from (its SHA-256 differs)"
