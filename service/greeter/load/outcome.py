"""What a run measured, before it becomes a report, and :func:`combine`, the exact merge
of several such (the worker processes of a ``--procs`` run, and ``greeter load merge``'s
reports, greeter.load.merge): histograms, counts and timelines add up; timelines are
shifted by each run's start relative to the earliest, in whole intervals; the rate is the
calls over the union of the runs' time windows (a gap between runs does not count)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from greeter.load.recorder import Recorder


@dataclass
class Outcome:
    """What a run measured (or several runs, merged), before it becomes a report."""

    recorder: Recorder
    started: float  # wall clock (Unix seconds) when the load phase began
    duration: float  # seconds measured; merged: the length of the union of the windows
    interrupted: bool
    span: float | None = None  # from ``started`` to the last window's end (None: duration)
    start_lag: float | None = None  # --start-at: how late the load phase began (the worst)
    merged_from: int = 1  # the runs in it

    @property
    def ended(self) -> float:
        return self.started + (self.duration if self.span is None else self.span)


def union_length(windows: Iterable[tuple[float, float]]) -> float:
    """The length of the union of the ``(start, end)`` windows."""
    total = 0.0
    reach = -math.inf
    for start, end in sorted(windows):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def _offset(part: Outcome, first: float) -> int:
    """Whole timeline intervals between the earliest start and ``part``'s."""
    timeline = part.recorder.timeline
    if timeline is None:
        return 0
    return max(0, round((part.started - first) / timeline.interval))


def combine(parts: Sequence[Outcome]) -> Outcome:
    """The exact merge of ``parts``: the one function both ``--procs`` and
    ``greeter load merge`` use."""
    if not parts:
        raise ValueError("nothing to merge")
    first = min(part.started for part in parts)
    merged = Recorder()
    for part in parts:
        merged.merge(part.recorder, _offset(part, first))
    lags = [part.start_lag for part in parts if part.start_lag is not None]
    return Outcome(
        recorder=merged,
        started=first,
        duration=max(union_length((p.started, p.ended) for p in parts), 1e-9),
        interrupted=any(part.interrupted for part in parts),
        span=max(part.ended for part in parts) - first,
        start_lag=max(lags) if lags else None,
        merged_from=sum(part.merged_from for part in parts),
    )
