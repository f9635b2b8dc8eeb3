"""int8 calibration of a model of another input shape (--input-shape), and the reference inputs that judge it.

Such a model has no MNIST training images: its int8 files are calibrated on its own inputs. With
--calibration-inputs FILE.npy, on a seeded pick of --calibration-size rows of that file, and judged on every
reference input (export counts the reference inputs that are also calibration rows and records the count).
Without it, the reference inputs are split: a row whose values' SHA-256 starts with an even byte may calibrate,
every other row is held out, and verify and bench judge the int8 files on the held-out rows only, so never on a
row that calibrated them. The split is keyed on each row's values, not its position, so a row is on the same side
wherever it appears: a duplicate is never on both sides, and bench's sample of every k-th row keeps the split.

Without labels there is no accuracy: an int8 file is judged by the top-1 agreement of its outputs with PyTorch
fp32's on those rows, against verify's int8 min_agreement (DEFAULT_TOLERANCES), its max |diff| reported.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import fileio, refinputs
from toolkit.artifacts import read_manifest_field
from toolkit.errors import ArtifactError, ConfigError

# calibration_split of an int8 file's manifest entry: where its calibration rows came from
FROM_REFERENCE_INPUTS = "reference inputs"  # the calibration side of --inputs; judged on the other side
FROM_CALIBRATION_INPUTS = "calibration inputs"  # --calibration-inputs; judged on every reference input
JUDGED_BY = ("top-1 agreement with PyTorch fp32 (the golden outputs) >= verify's int8 min_agreement; max |diff| "
             "reported, not judged; no labels, so no accuracy")


@dataclass(frozen=True)
class Calibration:
    """The rows an export's int8 files are calibrated on, and what their manifest entries say about them."""

    inputs: np.ndarray  # float32 [N, *input_shape]
    settings: dict[str, Any]


def calibration_side(rows: np.ndarray) -> np.ndarray:
    """Which rows may calibrate (True) rather than judge: the first byte of the SHA-256 of each row's float32 bytes
    is even."""
    return np.fromiter((hashlib.sha256(np.ascontiguousarray(row, np.float32).tobytes()).digest()[0] % 2 == 0
                        for row in rows), dtype=bool, count=len(rows))


def plan(reference: np.ndarray, calibration_inputs: np.ndarray | None, size: int, seed: int,
         source: dict[str, Any] | None = None) -> Calibration:
    """The calibration rows: a seeded pick of `size` rows of `calibration_inputs` (the file `source` describes),
    or, without them, of the calibration side of the `reference` inputs (ConfigError when either side of those is
    empty)."""
    rng = np.random.default_rng(seed)
    # what the int8 files depend on besides the weights: an export with other --inputs does not keep them
    judged = {"reference_inputs_sha256": fileio.digest(refinputs.npy_bytes(reference))}
    if calibration_inputs is None:
        pool = np.flatnonzero(calibration_side(reference))
        held_out = len(reference) - len(pool)
        if not len(pool) or not held_out:
            raise ConfigError(f"int8 calibrates on about half of the reference inputs and is judged on the others; "
                              f"the {len(reference)} in --inputs give {len(pool)} to calibrate and {held_out} to "
                              "judge: give more, or --calibration-inputs FILE.npy")
        pick = np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False))
        return Calibration(reference[pick], {
            "calibration_split": FROM_REFERENCE_INPUTS,
            "judged_on": f"the {held_out} of the {len(reference)} reference inputs held out from calibration (the "
                         "SHA-256 of the row's float32 bytes starts with an odd byte)",
            "judged_by": JUDGED_BY, **judged})
    pick = np.sort(rng.choice(len(calibration_inputs), size=min(size, len(calibration_inputs)), replace=False))
    chosen = calibration_inputs[pick]
    seen = {np.ascontiguousarray(row).tobytes() for row in chosen}
    overlap = sum(np.ascontiguousarray(row).tobytes() in seen for row in reference)
    return Calibration(chosen, {
        "calibration_split": FROM_CALIBRATION_INPUTS,
        "calibration_inputs": {**(source or {}), "rows": len(calibration_inputs)},
        "reference_inputs_in_calibration": int(overlap),
        "judged_on": f"all {len(reference)} reference inputs"
                     + (f", {overlap} of them also calibration rows" if overlap else ""),
        "judged_by": JUDGED_BY, **judged})


def _judged_on_inputs(artifact: Any, ref: Any) -> bool:
    """Whether `artifact` is an int8 file judged on reference inputs (an --input-shape export's)."""
    return ref.labels is None and getattr(artifact, "precision", "") == "int8"


def check_entry(artifact: Any, ref: Any) -> None:
    """ArtifactError (a malformed manifest) when the entry of an int8 file judged on reference inputs does not say
    where its calibration rows came from, in full, or was made for other reference inputs than the folder's: the
    rows that judge it cannot be known then, and judging it on its own calibration rows would pass it unearned."""
    if not _judged_on_inputs(artifact, ref):
        return
    settings = getattr(artifact, "settings", None)
    settings = settings if isinstance(settings, dict) else {}
    split, source = settings.get("calibration_split"), settings.get("calibration_inputs")
    overlap = settings.get("reference_inputs_in_calibration")
    folder = Path(getattr(artifact, "path", "") or ".").parent
    where = f"{folder / 'manifest.json'}: {getattr(artifact, 'file', 'the int8 file')}"
    if not _complete(split, source, overlap):
        raise ArtifactError(f"{where} does not say which rows calibrated it (settings.calibration_split "
                            f"{json.dumps(split)[:40]}, or its record of the calibration inputs, is malformed); "
                            "export it again")
    golden = read_manifest_field(folder, "golden")
    data = golden.get("data") if isinstance(golden, dict) else None
    if settings.get("reference_inputs_sha256") != (data.get("sha256") if isinstance(data, dict) else None):
        raise ArtifactError(f"{where} was calibrated and judged for other reference inputs than "
                            f"{refinputs.INPUTS_NAME} beside it; export it again")
    if split == FROM_CALIBRATION_INPUTS:
        _check_overlap(where, overlap, source["rows"], golden.get("shape") if isinstance(golden, dict) else None)


def _complete(split: Any, source: Any, overlap: Any) -> bool:
    """Whether an int8 entry's record of its calibration rows is whole: its split, and for --calibration-inputs
    their SHA-256, their rows (1 to MAX_INPUT_ROWS) and how many reference inputs were among them."""
    return split == FROM_REFERENCE_INPUTS or (
        split == FROM_CALIBRATION_INPUTS and isinstance(source, dict) and isinstance(source.get("sha256"), str)
        and type(source.get("rows")) is int and 1 <= source["rows"] <= refinputs.MAX_INPUT_ROWS
        and type(overlap) is int and overlap >= 0)


def _check_overlap(where: str, overlap: int, rows: int, golden_shape: Any) -> None:
    """ArtifactError when more reference inputs are recorded as calibration rows than there are calibration inputs
    (`rows`) or reference inputs (the golden outputs' rows): a record that cannot be true says nothing."""
    total = golden_shape[0] if isinstance(golden_shape, list) and golden_shape and type(golden_shape[0]) is int \
        else None
    if overlap > rows or (total is not None and overlap > total):
        shown = f"{overlap:,}" if overlap <= 10**9 else "over a billion"
        of_reference = "" if total is None else f" or the {total:,} reference inputs"
        raise ArtifactError(f"{where} records {shown} reference inputs among its calibration rows, more than its "
                            f"{rows:,} calibration inputs{of_reference}; export it again")


def also_calibrating(artifact: Any, ref: Any) -> int:
    """How many of the reference inputs `ref` (all of an export's) also calibrated `artifact`: the overlap of
    --calibration-inputs with --inputs its manifest entry records; 0 for any other file."""
    settings = getattr(artifact, "settings", None) or {}
    if not _judged_on_inputs(artifact, ref) or settings.get("calibration_split") != FROM_CALIBRATION_INPUTS:
        return 0
    return int(settings.get("reference_inputs_in_calibration") or 0)


def also_calibrating_among(artifact: Any, ref: Any, judged: int, total: int) -> tuple[int, int]:
    """Of `judged` rows of an export's `total` reference inputs (`ref`: them, or a sample of them), how many also
    calibrated `artifact`, as (at least, at most): its manifest entry records how many of all of them did, not
    which, so the count in a sample is known only where that record settles it (all rows judged, none or every one
    calibrating, or more calibrating than a sample could miss)."""
    overlap = also_calibrating(artifact, ref)
    return max(0, judged - (total - overlap)), min(judged, overlap)


class NothingHeldOut(ArtifactError):
    """None of the reference inputs checked may judge an int8 file: each of them calibrated it."""


MORE_INPUTS = "export again with more reference inputs (--inputs), or calibrate on --calibration-inputs FILE.npy"


class JudgedRows:
    """The rows of `ref` (a reference.Reference) that may judge each file, for a run that judges files again and
    again (verify: a file in each runtime and mode): each manifest entry checked once (check_entry), and the
    rows split into calibration and held-out rows once, however many times a file is judged. `more` says how to
    get held-out rows where none is."""

    def __init__(self, ref: Any, more: str = MORE_INPUTS) -> None:
        self.ref, self.more = ref, more
        self._checked: dict[int, Any] = {}  # id -> the entry checked, kept so that its id is not reused
        self._held_out: Any = None  # `ref` cut to its held-out rows, once asked for

    def check(self, artifact: Any) -> None:
        """check_entry, the first time this entry is asked about."""
        if id(artifact) not in self._checked:
            check_entry(artifact, self.ref)
            self._checked[id(artifact)] = artifact

    def of(self, artifact: Any) -> Any:
        """`ref` cut to the rows that may judge `artifact`: for an int8 file calibrated on the calibration side of
        its reference inputs, the held-out rows; every row otherwise. ArtifactError when its manifest entry is
        malformed (check_entry); NothingHeldOut, saying `more`, when none of the rows is held out."""
        self.check(artifact)
        ref = self.ref
        if not _judged_on_inputs(artifact, ref) or artifact.settings.get("calibration_split") != FROM_REFERENCE_INPUTS:
            return ref
        if self._held_out is None:
            keep = ~calibration_side(ref.pixels)
            self._held_out = dataclasses.replace(ref, pixels=ref.pixels[keep], log_probs=ref.log_probs[keep])
        if not len(self._held_out.pixels):
            raise NothingHeldOut(f"none of the {len(ref.pixels)} reference inputs checked is held out from the int8 "
                                 f"calibration (each may calibrate it); {self.more}")
        return self._held_out


def judged_rows(artifact: Any, ref: Any, more: str = MORE_INPUTS) -> Any:
    """`ref` (a reference.Reference) cut to the rows that may judge `artifact` (JudgedRows.of, for one file)."""
    return JudgedRows(ref, more).of(artifact)
