"""Series: a job's step times and losses in bounded memory, the oldest values kept (coarser)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leptonrt.broker.series import Series


def test_a_hundred_thousand_values_fit_in_sixty_points_that_still_start_at_the_beginning():
    series = Series(60)
    for i in range(100_000):
        series.add(float(i))
    points = series.points()
    assert len(points) <= 60 and series.every == 2 ** math.ceil(math.log2(100_000 / 60))
    assert points[0] == pytest.approx((series.every - 1) / 2)       # the mean of the first `every` values
    assert points == tuple(sorted(points))                            # a ramp stays a ramp


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), max_size=600), st.sampled_from([2, 4, 10, 60]))
def test_every_point_is_the_mean_of_every_consecutive_values_and_there_are_never_more_than_capacity(values, capacity):
    series = Series(capacity)
    for v in values:
        series.add(v)
    points, every = series.points(), series.every
    assert len(points) <= capacity
    for i, point in enumerate(points):
        chunk = values[i * every:(i + 1) * every]
        assert point == pytest.approx(sum(chunk) / len(chunk), rel=1e-9, abs=1e-6)
    assert len(points) == -(-len(values) // every)                    # the last, partial point included


def test_a_value_shows_at_once_and_non_finite_values_are_skipped():
    series = Series(4)
    assert series.points() == ()
    series.add(2.0)
    series.add(float("nan"))
    series.add(float("inf"))
    assert series.points() == (2.0,)


def test_a_series_holds_an_even_number_of_points():
    with pytest.raises(ValueError):
        Series(3)
