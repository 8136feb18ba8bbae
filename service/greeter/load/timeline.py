"""The run over time: per-interval buckets of calls, status codes, latency and backends.

Recording stays off the per-call path. A :class:`Timeline` keeps a copy of the recorder's
cumulative counters (status codes, calls per backend, the counts of the latency histogram
and of the latency outside the server) as
they were at the last interval edge; ``recorder.record`` only compares the call's finishing
time with the next edge, and the first call to finish past it makes the timeline close the
bucket: the difference between the counters now and the copy is everything that finished
in that interval, exactly (latency as sparse histogram buckets, so per-bucket percentiles
come from the same HDR layout and rule as the totals). Intervals in which no call finished
are empty buckets, so bucket ``i`` always starts ``i * interval`` seconds into the run.

Every process of a ``--procs`` run buckets from the same common start, so timelines merge
bucket by bucket, as the histograms and per-backend counts do. Reports from several
machines (``greeter load merge``) merge the same way, each shifted by its start relative
to the earliest, in whole intervals (greeter.load.merge); each JSON row carries its raw
bucket (``hdr`` and ``backends``) for that.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from itertools import compress
from typing import Any, Protocol, TypeVar

from greeter.load.histogram import BUCKETS, Histogram, bucket_bounds, bucket_of, percentile_of

DEFAULT_INTERVAL = 1.0  # seconds
MIN_INTERVAL = 0.01  # closing a bucket costs up to a few hundred µs: at most 100 a second
# A run's span past a whole number of intervals by less than this share of one (float rounding;
# the few µs between the starts of --procs N processes) folds into the last bucket, instead of
# making a sliver of a bucket of its own.
_EDGE_SLACK = 0.01
K = TypeVar("K")


class Counters(Protocol):
    """What a timeline reads of a recorder (greeter.load.recorder.Recorder): its cumulative
    counters, which only ever grow."""

    hist: Histogram
    outside: Histogram
    ok: Histogram
    status: dict[str, int]

    @property
    def backends(self) -> dict[tuple[str, str], Any]: ...


def _add(mine: dict[K, int], theirs: dict[K, int]) -> None:
    for key, n in theirs.items():
        mine[key] = mine.get(key, 0) + n


@dataclass
class Bucket:
    """What finished in one interval."""

    latency: dict[int, int] = field(default_factory=dict)  # histogram bucket index -> calls
    status: dict[str, int] = field(default_factory=dict)
    backends: dict[tuple[str, str], int] = field(default_factory=dict)  # (cluster, pod) -> calls
    # Latency outside the server (total minus server-timing) of the calls that had one.
    outside: dict[int, int] = field(default_factory=dict)
    ok: dict[int, int] = field(default_factory=dict)  # latency of the calls that ended OK

    @property
    def count(self) -> int:
        return sum(self.status.values())

    def add(self, other: Bucket) -> None:
        _add(self.latency, other.latency)
        _add(self.status, other.status)
        _add(self.backends, other.backends)
        _add(self.outside, other.outside)
        _add(self.ok, other.ok)

    def percentiles_us(self, *percents: float) -> list[int]:
        """The latency at each of ``percents`` of this bucket's calls, by the totals'
        histogram rule; the bucket's exact min and max are not kept, so its lowest and
        highest histogram buckets' bounds stand in for them (exact below 1024 µs, within
        0.2 % above). Zeros when the bucket is empty."""
        return _percentiles(self.latency, percents)

    def ok_percentiles_us(self, *percents: float) -> list[int] | None:
        """The same for the calls that ended OK; None when none did."""
        return _percentiles(self.ok, percents) if self.ok else None

    def outside_percentiles_us(self, *percents: float) -> list[int] | None:
        """The same for the latency outside the server; None when no call had a
        server-timing."""
        return _percentiles(self.outside, percents) if self.outside else None

    def to_list(self) -> list[Any]:
        return [
            _sparse(self.latency),
            dict(self.status),
            [[cluster, pod, n] for (cluster, pod), n in sorted(self.backends.items())],
            _sparse(self.outside),
            _sparse(self.ok),
        ]

    @classmethod
    def from_list(cls, data: list[Any]) -> Bucket:
        latency, status, backends = data[:3]
        outside = data[3] if len(data) > 3 else []  # reports from before the split have none
        ok = data[4] if len(data) > 4 else []  # nor, from before that, the OK calls apart
        return cls(
            _dense(latency),
            {str(k): int(v) for k, v in status.items()},
            {(str(c), str(p)): int(n) for c, p, n in backends},
            _dense(outside),
            _dense(ok),
        )


def _sparse(counts: dict[int, int]) -> list[list[int]]:
    return [[i, n] for i, n in sorted(counts.items())]


def _dense(pairs: list[Any]) -> dict[int, int]:
    return {int(i): int(n) for i, n in pairs}


def _percentiles(counts: dict[int, int], percents: tuple[float, ...]) -> list[int]:
    pairs = sorted(counts.items())
    if not pairs:
        return [0 for _ in percents]
    low, high = bucket_bounds(pairs[0][0])[0], bucket_bounds(pairs[-1][0])[1]
    count = sum(counts.values())
    return [percentile_of(pairs, count, p, low, high) for p in percents]


class _Copy:
    """A histogram's counts as they were at the last edge."""

    __slots__ = ("count", "counts")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0

    def take(self, hist: Histogram) -> dict[int, int]:
        """What ``hist`` recorded since the last take (sparse: bucket index -> calls)."""
        if hist.count == self.count:
            return {}
        self.count = hist.count
        lo, hi = bucket_of(hist.min), bucket_of(hist.max) + 1
        now_counts = hist.counts[lo:hi]
        diff = list(map(operator.sub, now_counts, self.counts[lo:hi]))  # all in C: no loop
        self.counts[lo:hi] = now_counts
        return dict(zip(compress(range(lo, hi), diff), filter(None, diff), strict=True))


class Timeline:
    """Closed buckets of one recorder (or of several, merged), from ``start`` (a
    ``time.perf_counter()`` value) in steps of ``interval`` seconds."""

    def __init__(self, start: float, interval: float) -> None:
        self.start = start
        self.interval = interval
        self.buckets: list[Bucket] = []
        # The recorder's cumulative counters at the last edge.
        self._hist = _Copy()
        self._outside = _Copy()
        self._ok = _Copy()
        self._status: dict[str, int] = {}
        self._backends: dict[tuple[str, str], int] = {}

    def next_edge(self) -> float:
        """When the bucket being filled ends."""
        return self.start + (len(self.buckets) + 1) * self.interval

    def roll(self, rec: Counters, now: float) -> float:
        """A call finishes at ``now``, past the edge: close the bucket being filled, add
        empty ones for intervals without a finished call, return the next edge."""
        self.buckets.append(self._take(rec))
        edge = self.next_edge()
        while now >= edge:
            self.buckets.append(Bucket())
            edge = self.next_edge()
        return edge

    def close(self, rec: Counters) -> None:
        """The run is over: close the bucket being filled."""
        self.buckets.append(self._take(rec))

    def _take(self, rec: Counters) -> Bucket:
        """What ``rec`` recorded since the last edge, as a bucket; the copy moves up."""
        bucket = Bucket()
        if rec.hist.count == self._hist.count:
            return bucket
        bucket.latency = self._hist.take(rec.hist)
        bucket.outside = self._outside.take(rec.outside)
        bucket.ok = self._ok.take(rec.ok)
        seen = self._status
        for code, n in rec.status.items():
            if n != seen.get(code, 0):
                bucket.status[code] = n - seen.get(code, 0)
                seen[code] = n
        backends = self._backends
        for key, backend in rec.backends.items():
            n = backend.hist.count
            if n != backends.get(key, 0):
                bucket.backends[key] = n - backends.get(key, 0)
                backends[key] = n
        return bucket

    def merge(self, other: Timeline, offset: int = 0) -> None:
        """Add ``other``'s buckets to these, bucket by bucket (same interval), ``other``'s
        first bucket at index ``offset`` of this one's (it started that many intervals
        later)."""
        if not math.isclose(other.interval, self.interval):
            raise ValueError("timelines with different intervals do not merge")
        missing = offset + len(other.buckets) - len(self.buckets)
        self.buckets.extend(Bucket() for _ in range(missing))
        for index, bucket in enumerate(other.buckets, offset):
            self.buckets[index].add(bucket)

    def to_dict(self) -> dict[str, Any]:
        return {"interval": self.interval, "buckets": [b.to_list() for b in self.buckets]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timeline:
        timeline = cls(0.0, float(data["interval"]))
        timeline.buckets = [Bucket.from_list(b) for b in data["buckets"]]
        return timeline

    @classmethod
    def from_report(cls, rows: list[dict[str, Any]], interval: float) -> Timeline:
        """The timeline of a JSON report (its rows' raw ``hdr``, ``status_codes`` and
        ``backends``), exactly as it was recorded, for merging."""
        timeline = cls(0.0, interval)
        timeline.buckets = [
            Bucket.from_list(
                [
                    row["hdr"],
                    row["status_codes"],
                    row["backends"],
                    row.get("outside_hdr", []),
                    row.get("ok_hdr", []),
                ]
            )
            for row in rows
        ]
        return timeline


def _ms(us: int) -> float:
    return round(us / 1000, 3)


def buckets_for(duration: float, interval: float) -> int:
    """How many buckets a run of ``duration`` seconds covers (at least one)."""
    return max(1, math.ceil(duration / interval - _EDGE_SLACK))


def report(timeline: Timeline | None, duration: float, interval: float) -> list[dict[str, Any]]:
    """The ``timeline`` of the JSON report: one entry per interval of the run's
    ``duration``. Calls still in flight at the end, which finish in the drain after it, are
    counted in the last bucket (as they are in the totals)."""
    n = buckets_for(duration, interval)
    found = timeline.buckets if timeline is not None else []
    buckets = found[: n - 1] + [Bucket() for _ in range(n - 1 - len(found))]
    last = Bucket()
    for bucket in found[n - 1 :]:
        last.add(bucket)
    buckets.append(last)
    rows = []
    for index, bucket in enumerate(buckets):
        start = index * interval
        count = bucket.count
        raw = bucket.to_list()
        p50, p99 = bucket.percentiles_us(50, 99)
        outside = bucket.outside_percentiles_us(50, 99)
        by_cluster: dict[str, int] = {}
        by_pod: dict[str, int] = {}
        for (cluster, pod), calls in bucket.backends.items():
            by_cluster[cluster] = by_cluster.get(cluster, 0) + calls
            by_pod[pod] = by_pod.get(pod, 0) + calls
        rows.append(
            {
                "t": round(start, 6),
                "duration_s": round(min(interval, max(duration - start, 0.0)), 6)
                if index == n - 1
                else round(interval, 6),
                "count": count,
                "errors": count - bucket.status.get("OK", 0),
                "status_codes": dict(sorted(bucket.status.items(), key=lambda kv: -kv[1])),
                "latency_ms": {
                    "p50": _ms(p50) if count else None,
                    "p99": _ms(p99) if count else None,
                },
                "outside_ms": {
                    "p50": None if outside is None else _ms(outside[0]),
                    "p99": None if outside is None else _ms(outside[1]),
                },
                "by_cluster": dict(sorted(by_cluster.items())),
                "by_pod": dict(sorted(by_pod.items())),
                "hdr": raw[0],
                "backends": raw[2],
                "outside_hdr": raw[3],
                "ok_hdr": raw[4],
            }
        )
    return rows
