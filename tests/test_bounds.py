"""The shared numeric check: what every option, recipe, tolerance and time limit is held to."""

import math

import pytest

from tests.conftest import assert_one_line_error, run_cli
from toolkit.bounds import is_number_within


@pytest.mark.parametrize("value", [0, 1, 0.5, 1.0])
def test_numbers_within_the_bounds_pass_ends_included(value):
    assert is_number_within(value, 0, 1)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, False, "0.5", None, -1e-9, 1.000001])
def test_nan_infinity_bools_text_and_numbers_outside_are_refused(value):
    # NaN compares false with everything; True is 1 and False is 0 to Python: none of them is a setting's number
    assert not is_number_within(value, 0, 1)


def test_an_unbounded_side_still_refuses_infinity():
    assert is_number_within(1e300, 0.0, math.inf)
    assert not is_number_within(math.inf, 0.0, math.inf)


def test_an_int_past_floats_range_is_refused_not_raised():
    # math.isfinite(10**400) raises OverflowError: an int is finite however large, and is compared exactly
    assert not is_number_within(10**400, 0, 1)
    assert is_number_within(10**400, 0.0, math.inf)


def test_an_option_past_floats_range_is_a_one_line_error(tmp_path, mnist_dir):
    line = assert_one_line_error(run_cli("train", "--epochs", "9" * 400, "--out", tmp_path / "run",
                                         "--data-dir", mnist_dir), 2)
    assert "epochs must be a number from 1 to 1000" in line
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_recording_an_accuracy_past_floats_range_is_refused(short_run, tmp_path):
    from toolkit.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(short_run / "checkpoint.pt")
    ckpt["metrics"]["test_accuracy"] = 10**400
    save_checkpoint(tmp_path / "bad.pt", {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    line = assert_one_line_error(run_cli("export", "--checkpoint", tmp_path / "bad.pt", "--format", "onnx",
                                         "--out", tmp_path / "out"), 2)
    assert "not a percentage" in line
    assert not (tmp_path / "out").exists()
