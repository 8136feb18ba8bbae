"""Admission control: past capacity, shed what cannot be served in time.

A Python gRPC server is CPU-bound: past capacity, calls queue, first in grpc-core (calls no
request has taken yet), then in the event loop (accepted calls whose turn has not come).
Served first in, first out, the calls it answers are the oldest, already late, and goodput
collapses (measured in docs/performance.md, "Overload"). Three things keep it at capacity:

1. **grpc-core drops a call that waited too long for the server to take it**
   (``grpc.server_max_unrequested_time_in_server``, ``admission_core_wait`` seconds): in C,
   before the event loop sees it, the cheapest refusal there is. The client sees CANCELLED.
2. **Calls whose deadline has passed are not run** (the client has given up on them).
3. **While the event loop has a standing queue of calls, new calls that cannot wait it out
   are shed** with RESOURCE_EXHAUSTED (``overloaded: ...``) before the handler runs: calls
   without a deadline, and calls with less time left than ``SERVE_TURNS`` times the queue.

The queue is measured, not configured: a probe on the event loop asks to run every
``PROBE_EVERY`` and notes how late it ran (the loop's queueing delay). As in CoDel, the
*smallest* delay over a window is the standing queue (a burst that drains within the window
does not count, nor does a CPU-quota throttle, which delays only some probes of a window).
The loop is overloaded while that exceeds the target and calls are waiting (those the extra
requests of ``accept_depth`` took; with ``accept_depth`` 1 this signal is off): a late loop
with no call waiting is starved by others on a busy machine, not overloaded by its calls.
The target adapts: ``TARGET_FLOOR`` or ``TARGET_FACTOR`` times the loop's own delay without a
queue (the smallest window seen recently), whichever is larger, capped at ``TARGET_CEILING``;
``admission_queue_target`` fixes it instead. A fixed cap on calls in flight
(``admission_limit``) can be set as well, for handlers that wait rather than compute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

PREFIX = "overloaded: "
PROBE_EVERY = 0.005  # seconds between probes of the event loop's delay
WINDOW = 0.2  # seconds: two CFS periods (100 ms), so a throttled period alone is no queue
TARGET_FLOOR = 0.02  # the smallest adaptive target, seconds
TARGET_FACTOR = 4.0  # times the queue-free delay
TARGET_CEILING = 0.25  # the largest adaptive target, seconds (a long overload cannot raise it)
BASELINE_WINDOWS = 50  # windows (10 s) over which the queue-free delay is the smallest seen
# Calls accepted and not yet finished for a delay to be a queue of calls: a loop that is late
# with fewer is starved of CPU by others (a busy machine), not overloaded by its own calls.
MIN_QUEUED = 2
SERVE_TURNS = 2

# Why a call was shed: the metric label, then how the refusal message says it.
DEADLINE = "deadline"
QUEUE = "queue"
LIMIT = "limit"
REASONS = (DEADLINE, QUEUE, LIMIT)


@dataclass(frozen=True)
class AdmissionState:
    """What the controller sees now (for metrics and logs)."""

    delay: float  # the standing queue of the event loop, seconds (smallest of the last window)
    target: float  # the delay above which new calls are shed, seconds
    shedding: bool
    in_flight: int
    limit: int  # the fixed cap on calls in flight (0: none)


class Admission:
    """Decides, for each call as it starts, whether it is run or shed."""

    def __init__(
        self,
        target: float = 0.0,
        limit: int = 0,
        clock: Callable[[], float] = time.monotonic,
        on_window: Callable[[AdmissionState], None] | None = None,
    ) -> None:
        """``target``: seconds of standing queue above which calls are shed (0: adaptive);
        ``limit``: calls in flight beyond which calls are shed (0: no fixed cap)."""
        self.fixed_target = target
        self.limit = limit
        self._clock = clock
        self._on_window = on_window  # told the state at the end of every window (metrics)
        self.in_flight = 0
        self.accepted = 0  # calls accept.py took and that have not finished (the queue)
        self.delay = 0.0
        self.target = target or TARGET_FLOOR
        self.shedding = False
        self._window_min = float("inf")
        self._window_end = 0.0
        self._recent: list[float] = []  # the last windows' smallest delays
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the probe ---------------------------------------------------------------
    def start(self) -> None:
        """Start probing the running loop."""
        self._loop = asyncio.get_running_loop()
        self._window_end = self._clock() + WINDOW
        self._schedule()
        if self._on_window is not None:
            self._on_window(self.state())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
        self.shedding = False

    def _schedule(self) -> None:
        assert self._loop is not None
        due = self._clock() + PROBE_EVERY
        self._timer = self._loop.call_at(self._loop.time() + PROBE_EVERY, self._probe, due)

    def _probe(self, due: float) -> None:
        now = self._clock()
        self.observe(max(0.0, now - due), now)
        if self._loop is not None:
            self._schedule()

    def observe(self, delay: float, now: float) -> None:
        """One probe ran ``delay`` seconds late at ``now``; a window that ends decides."""
        if delay < self._window_min:
            self._window_min = delay
        if now < self._window_end:
            return
        self.delay = self._window_min
        self._window_min = float("inf")
        self._window_end = now + WINDOW
        recent = self._recent
        recent.append(self.delay)
        if len(recent) > BASELINE_WINDOWS:
            del recent[0]
        if not self.fixed_target:
            self.target = min(TARGET_CEILING, max(TARGET_FLOOR, TARGET_FACTOR * min(recent)))
        self.shedding = self.delay > self.target and self.accepted >= MIN_QUEUED
        if self._on_window is not None:
            self._on_window(self.state())

    # -- per call ----------------------------------------------------------------
    def call_done(self, _: object = None) -> None:
        """A call accept.py took has finished (a task's done callback)."""
        self.accepted -= 1

    def refuse(self, time_remaining: float | None) -> str | None:
        """Why a call that is about to start (counted in ``in_flight`` already) must be
        shed, or None to run it."""
        if time_remaining is not None and time_remaining <= 0:
            return DEADLINE
        # A call with time enough to wait out the queue is run: what is left of it is about
        # SERVE_TURNS more waits (its handler's turn, then its reply's).
        if self.shedding and (time_remaining is None or time_remaining < SERVE_TURNS * self.delay):
            return QUEUE
        if self.limit and self.in_flight > self.limit:  # in_flight counts this call
            return LIMIT
        return None

    def message(self, reason: str) -> str:
        """The refusal's status message: ``overloaded: `` and why."""
        if reason == DEADLINE:
            return PREFIX + "the call's deadline passed before the server could start it"
        if reason == LIMIT:
            return PREFIX + f"{self.limit} calls in flight already, the limit (admission_limit)"
        return PREFIX + (
            f"calls wait {self.delay * 1000:.0f} ms to be served,"
            f" above the {self.target * 1000:.0f} ms target"
        )

    def state(self) -> AdmissionState:
        return AdmissionState(self.delay, self.target, self.shedding, self.in_flight, self.limit)
