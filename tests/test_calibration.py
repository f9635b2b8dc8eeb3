"""Which of a model's own inputs calibrate its int8 files and which judge them (toolkit.calibration); torch-free.
The files built and verified this way, end to end, are in test_input_shape.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from toolkit.calibration import (
    FROM_CALIBRATION_INPUTS,
    FROM_REFERENCE_INPUTS,
    NothingHeldOut,
    also_calibrating,
    also_calibrating_among,
    calibration_side,
    judged_rows,
    plan,
)
from toolkit.errors import ArtifactError, ConfigError
from toolkit.reference import Reference

ROWS = np.random.default_rng(0).standard_normal((400, 2, 3)).astype(np.float32)


def _reference(rows: np.ndarray, labels=None) -> Reference:
    return Reference(rows, labels, np.arange(len(rows) * 10, dtype=np.float32).reshape(-1, 10))


def _int8(split, precision: str = "int8", folder: Path | None = None, **settings) -> SimpleNamespace:
    """The manifest entry of an int8 file calibrated as `split` says, in `folder` (beside a manifest whose golden
    outputs' reference inputs have the SHA-256 'ab')."""
    if folder is not None:
        golden = {"data": {"sha256": "ab"}, "shape": [len(ROWS), 10]}  # the outputs on ROWS
        (folder / "manifest.json").write_text(json.dumps({"golden": golden}))
    return SimpleNamespace(file="model.int8.onnx", precision=precision, path=str((folder or Path(".")) / "m.onnx"),
                           settings={"reference_inputs_sha256": "ab", **settings, "calibration_split": split})


def test_a_row_is_on_one_side_wherever_it_is():
    side = calibration_side(ROWS)
    assert 150 < side.sum() < 250  # about half
    order = np.random.default_rng(1).permutation(len(ROWS))
    assert (calibration_side(ROWS[order]) == side[order]).all()  # keyed on values, not positions
    doubled = np.concatenate([ROWS, ROWS[:10]])
    assert (calibration_side(doubled)[-10:] == side[:10]).all()  # a duplicate is never on both sides
    assert (calibration_side(ROWS[::7]) == side[::7]).all()  # bench's sample of every k-th row keeps the split


def test_the_calibration_side_of_the_reference_inputs_calibrates():
    found = plan(ROWS, None, size=50, seed=0)
    side_rows = {r.tobytes() for r in ROWS[calibration_side(ROWS)]}
    assert len(found.inputs) == 50 and all(r.tobytes() in side_rows for r in found.inputs)
    assert found.settings["calibration_split"] == FROM_REFERENCE_INPUTS
    held = int((~calibration_side(ROWS)).sum())
    assert found.settings["judged_on"].startswith(f"the {held} of the 400 reference inputs held out")
    assert (plan(ROWS, None, size=50, seed=0).inputs == found.inputs).all()  # the same pick every time
    assert len(plan(ROWS, None, size=10_000, seed=0).inputs) == 400 - held  # all of that side, at most


def test_too_few_reference_inputs_to_split_are_refused():
    one_side = ROWS[calibration_side(ROWS)][:5]
    for rows in (ROWS[:1], one_side):
        with pytest.raises(ConfigError, match="--calibration-inputs"):
            plan(rows, None, size=500, seed=0)
    assert len(plan(one_side, ROWS, size=500, seed=0).inputs) == 400  # a file of its own needs no split


def test_calibration_inputs_that_are_also_reference_inputs_are_counted():
    calib = np.concatenate([ROWS[:3], ROWS[200:] + 1])
    found = plan(ROWS[:100], calib, size=500, seed=0, source={"file": "c.npy", "sha256": "ab"})
    assert found.settings["calibration_split"] == FROM_CALIBRATION_INPUTS
    assert found.settings["calibration_inputs"] == {"file": "c.npy", "sha256": "ab", "rows": 203}
    assert found.settings["reference_inputs_in_calibration"] == 3
    assert found.settings["judged_on"] == "all 100 reference inputs, 3 of them also calibration rows"
    assert len(plan(ROWS[:100], calib, size=20, seed=0).inputs) == 20


def test_only_an_int8_file_calibrated_on_reference_inputs_is_judged_on_the_others(tmp_path: Path):
    ref = _reference(ROWS)
    held = ~calibration_side(ROWS)
    cut = judged_rows(_int8(FROM_REFERENCE_INPUTS, folder=tmp_path), ref)
    assert (cut.pixels == ROWS[held]).all() and (cut.log_probs == ref.log_probs[held]).all()
    calibrated = _int8(FROM_CALIBRATION_INPUTS, folder=tmp_path, calibration_inputs={"sha256": "cd", "rows": 9},
                       reference_inputs_in_calibration=3)
    for artifact in (calibrated, _int8(FROM_REFERENCE_INPUTS, "fp32"), None, "runs/x/checkpoint.pt"):
        assert judged_rows(artifact, ref) is ref
    assert also_calibrating(calibrated, ref) == 3 and also_calibrating(_int8(FROM_REFERENCE_INPUTS), ref) == 0
    # of a sample of the 400, how many also calibrated it: the record says 3 of all 400, not which
    assert also_calibrating_among(calibrated, ref, 400, 400) == (3, 3)
    assert also_calibrating_among(calibrated, ref, 50, 400) == (0, 3)
    assert also_calibrating_among(calibrated, ref, 399, 400) == (2, 3)
    assert also_calibrating_among(_int8(FROM_REFERENCE_INPUTS), ref, 50, 400) == (0, 0)
    labelled = _reference(ROWS, labels=np.zeros(len(ROWS), np.int64))  # MNIST: the test set never calibrates
    assert judged_rows(_int8(FROM_REFERENCE_INPUTS), labelled) is labelled
    with pytest.raises(NothingHeldOut, match="none of the 3 reference inputs checked is held out.*--inputs"):
        judged_rows(_int8(FROM_REFERENCE_INPUTS, folder=tmp_path), _reference(ROWS[calibration_side(ROWS)][:3]))


@pytest.mark.parametrize("settings", [
    {"calibration_split": "train"}, {"calibration_split": None}, {"calibration_split": 5},
    {"calibration_split": FROM_CALIBRATION_INPUTS},  # without what that calibration recorded
    {"calibration_split": FROM_CALIBRATION_INPUTS, "calibration_inputs": {"sha256": "cd", "rows": 9},
     "reference_inputs_in_calibration": "3"},
    *({"calibration_split": FROM_CALIBRATION_INPUTS, "calibration_inputs": {"sha256": "cd", "rows": rows},
       "reference_inputs_in_calibration": 0} for rows in (0, -1, 10**30, True, 2.0)),
])
def test_an_int8_entry_that_does_not_say_what_calibrated_it_is_malformed(tmp_path: Path, settings):
    with pytest.raises(ArtifactError, match="does not say which rows calibrated it"):
        judged_rows(_int8(settings.pop("calibration_split"), folder=tmp_path, **settings), _reference(ROWS))
    with pytest.raises(ArtifactError, match="for other reference inputs"):
        judged_rows(_int8(FROM_REFERENCE_INPUTS, folder=tmp_path, reference_inputs_sha256="ef"), _reference(ROWS))


@pytest.mark.parametrize(("rows", "overlap", "refused"), [
    (9, 10, True), (1, 10**30, True), (len(ROWS) + 1, len(ROWS) + 1, True), (len(ROWS), -1, True),
    (9, 9, False), (len(ROWS) + 1, len(ROWS), False), (1, 0, False),
])
def test_more_reference_inputs_in_calibration_than_there_are_is_malformed(tmp_path: Path, rows, overlap, refused):
    # the overlap cannot exceed the calibration inputs' rows nor the reference inputs': such a record is no record
    artifact = _int8(FROM_CALIBRATION_INPUTS, folder=tmp_path, calibration_inputs={"sha256": "cd", "rows": rows},
                     reference_inputs_in_calibration=overlap)
    if not refused:
        assert judged_rows(artifact, _reference(ROWS)).pixels is ROWS
        return
    with pytest.raises(ArtifactError, match=r"model.int8.onnx (records .* reference inputs among its calibration "
                                            r"rows, more than|does not say which rows).*export it again$"):
        judged_rows(artifact, _reference(ROWS))
