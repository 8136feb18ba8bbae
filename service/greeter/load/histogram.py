"""A high-dynamic-range latency histogram that merges exactly.

Values are whole microseconds. Below ``2**SUB_BITS`` every value has its own
bucket; above, each power of two is split into ``2**(SUB_BITS-1)`` equal
buckets, so a bucket is never wider than 1/512 of its values (about 0.2%), from
1 µs up to about an hour. Counts live in one preallocated list: recording is an
index computation and an increment. Merging adds the lists, so histograms from
several workers or processes combine without losing anything, and min, max and
the sum are kept exactly beside the buckets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

SUB_BITS = 10
_SUB = 1 << SUB_BITS  # 1024 exact buckets at the bottom
_HALF = _SUB >> 1  # buckets per power of two above them
MAX_VALUE_US = (1 << 32) - 1  # about 71 minutes; larger values are clamped
BUCKETS = _SUB + (32 - SUB_BITS) * _HALF


def bucket_of(value: int) -> int:
    """The bucket index of ``value`` microseconds (clamped to 0..MAX_VALUE_US)."""
    if value < _SUB:
        return value if value > 0 else 0
    if value > MAX_VALUE_US:
        value = MAX_VALUE_US
    shift = value.bit_length() - SUB_BITS
    return _SUB + (shift - 1) * _HALF + (value >> shift) - _HALF


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value (inclusive) that land in bucket ``index``."""
    if index < _SUB:
        return index, index
    shift = (index - _SUB) // _HALF + 1
    top = (index - _SUB) % _HALF + _HALF
    return top << shift, ((top + 1) << shift) - 1


def percentile_of(
    buckets: Iterable[tuple[int, int]], count: int, percent: float, low: int, high: int
) -> int:
    """The value at ``percent`` (0-100) of ``count`` values held in ``buckets`` ((index,
    count) pairs, lowest first; empty ones may be among them): the highest value of the
    bucket holding that rank, clamped to ``low`` and ``high`` (the exact min and max when
    known). 0 when there are none."""
    if not count:
        return 0
    rank = max(1, -(-count * percent // 100))  # ceil, at least the first value
    seen = 0
    for index, n in buckets:
        seen += n
        if seen >= rank:
            return max(low, min(high, bucket_bounds(index)[1]))
    return high


class Histogram:
    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0
        self.total = 0  # sum of recorded values, µs
        self.min = 0
        self.max = 0

    def record(self, value: int) -> None:
        if value < 0:
            value = 0
        elif value > MAX_VALUE_US:
            value = MAX_VALUE_US
        if value < _SUB:
            self.counts[value] += 1
        else:
            shift = value.bit_length() - SUB_BITS
            self.counts[_SUB + (shift - 1) * _HALF + (value >> shift) - _HALF] += 1
        if not self.count or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        if not other.count:
            return
        mine = self.counts
        for index, n in enumerate(other.counts):
            if n:
                mine[index] += n
        self.min = other.min if not self.count else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, percent: float) -> int:
        """The value at ``percent`` (0-100): the highest value of the bucket holding
        that rank, clamped to the exact min and max."""
        return percentile_of(enumerate(self.counts), self.count, percent, self.min, self.max)

    def buckets(self) -> Iterator[tuple[int, int]]:
        """(bucket index, count) for the non-empty buckets, lowest first."""
        for index, n in enumerate(self.counts):
            if n:
                yield index, n

    def to_dict(self) -> dict[str, Any]:
        """A compact, exact form (sparse buckets) for pipes and the JSON report."""
        return {
            "unit": "us",
            "sub_bucket_bits": SUB_BITS,
            "count": self.count,
            "sum": self.total,
            "min": self.min,
            "max": self.max,
            "buckets": [[index, n] for index, n in self.buckets()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        if data.get("sub_bucket_bits", SUB_BITS) != SUB_BITS:
            raise ValueError("histogram was recorded with a different bucket layout")
        hist = cls()
        for index, n in data["buckets"]:
            hist.counts[int(index)] += int(n)
        hist.count = int(data["count"])
        hist.total = int(data["sum"])
        hist.min = int(data["min"])
        hist.max = int(data["max"])
        return hist
