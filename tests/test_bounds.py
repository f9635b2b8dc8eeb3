"""The shared numeric check: what every option, recipe, tolerance and time limit is held to."""

import math

import pytest

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
