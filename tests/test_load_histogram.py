"""The HDR-style histogram: bounded relative error, exact merges, round trips."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from greeter.load.histogram import MAX_VALUE_US, Histogram, bucket_bounds, bucket_of

values = st.lists(st.integers(min_value=0, max_value=MAX_VALUE_US), min_size=1, max_size=300)


@given(st.integers(min_value=0, max_value=MAX_VALUE_US))
def test_every_value_lands_in_a_tight_bucket(value: int) -> None:
    low, high = bucket_bounds(bucket_of(value))
    assert low <= value <= high
    assert high - low <= max(0, value) / 512


@given(values, values)
def test_merge_is_exact(a: list[int], b: list[int]) -> None:
    left, right, both = Histogram(), Histogram(), Histogram()
    for v in a:
        left.record(v)
        both.record(v)
    for v in b:
        right.record(v)
        both.record(v)
    left.merge(right)
    assert left.counts == both.counts
    assert (left.count, left.total, left.min, left.max) == (
        both.count,
        both.total,
        both.min,
        both.max,
    )
    assert Histogram.from_dict(left.to_dict()).counts == both.counts


@given(values, st.floats(min_value=0.1, max_value=100))
def test_percentiles_are_within_a_bucket_of_the_truth(data: list[int], percent: float) -> None:
    hist = Histogram()
    for v in data:
        hist.record(v)
    ordered = sorted(data)
    rank = max(1, -(-len(data) * percent // 100))
    truth = ordered[int(rank) - 1]
    got = hist.percentile(percent)
    assert truth <= got <= truth + truth / 512 + 1


def test_large_sample() -> None:
    rng = random.Random(7)
    data = [int(rng.lognormvariate(8, 1)) for _ in range(20_000)]
    hist = Histogram()
    for v in data:
        hist.record(v)
    ordered = sorted(data)
    for p in (50, 90, 99, 99.9):
        truth = ordered[int(len(ordered) * p / 100) - 1]
        assert abs(hist.percentile(p) - truth) <= truth / 256 + 1
    assert hist.percentile(100) == max(data)
    assert hist.mean == sum(data) / len(data)
