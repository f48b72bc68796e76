"""The membership benchmark's own statistics: the interval it puts round the median ratio and
the verdict it draws from it, checked on made-up ratios (no processes)."""

import importlib.util
import math
from pathlib import Path

_spec = importlib.util.spec_from_file_location("membership", Path(__file__).parents[1] / "bench" / "membership.py")
membership = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(membership)


def test_the_interval_is_the_order_statistics_that_cover_the_median_at_95_percent():
    # 9 rounds: the 2nd and 8th values cover the median with probability 1 - 2 * 10 / 512
    low, high, coverage = membership.median_interval([9, 1, 8, 2, 7, 3, 6, 4, 5])
    assert (low, high) == (2, 8) and math.isclose(coverage, 1 - 20 / 512)
    # 5 rounds reach only 15 / 16 even with the whole range: it is given with what it covers
    assert membership.median_interval([3, 1, 2, 5, 4]) == (1, 5, 15 / 16)


def test_the_verdict_is_drawn_only_where_the_whole_interval_agrees():
    assert membership.verdict(0.96, 1.2, 0.95) == "met"
    assert membership.verdict(0.7, 0.94, 0.95) == "not met"
    assert membership.verdict(0.8, 1.1, 0.95) == "undetermined"
