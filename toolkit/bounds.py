"""The one test every numeric setting passes: a real, finite number within its bounds.

Options, recipes, tolerances, time limits and the numbers read back from files all go through it, so a NaN (which
compares false with everything, and so would slip past `low <= x <= high` written the other way round), an
infinity, or a bool (an int to Python, never meant as a number here) is refused the same way everywhere.
"""

from __future__ import annotations

import math
from typing import Any


def is_number_within(value: Any, low: float, high: float) -> bool:
    """Whether `value` is a finite int or float (a bool is not a number here) from `low` to `high` inclusive. An int
    is finite however large (math.isfinite would raise OverflowError on one past float's range)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (isinstance(value, int) or math.isfinite(value)) and low <= value <= high)
