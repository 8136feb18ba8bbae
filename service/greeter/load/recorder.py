"""What one process measured: histograms and counters that merge exactly, and
:func:`record`, the one place every engine records a finished call.

Each call's latency is split three ways when its reply carried a ``server-timing``
trailer (greeter.timing): the total (what the client saw), the server's own time (the
trailer) and the rest, outside the server's handler (total minus server: the network,
gateways, the client, and queueing inside the server before its handler ran). A call
without the trailer counts in the total only; the split reports how many had one, and
"n/a" when none did, never a zero.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from greeter.load.histogram import Histogram
from greeter.load.sampled import Sampled
from greeter.load.timeline import Timeline

UNKNOWN = "(none)"  # no identity metadata came back (a gateway error, no connection...)
MAX_ERROR_MESSAGES = 50  # distinct error messages kept; the rest are counted under "other"
_OTHER = "(other messages)"
NO_SERVER_TIME = -1  # record(server=...): the reply carried no server-timing
_perf = time.perf_counter


@dataclass
class Backend:
    """What one serving (cluster, pod) did."""

    hist: Histogram = field(default_factory=Histogram)
    errors: int = 0
    server: Histogram = field(default_factory=Histogram)  # calls with the trailer only
    outside: Histogram = field(default_factory=Histogram)  # their total minus server

    def merge(self, other: Backend) -> None:
        self.hist.merge(other.hist)
        self.errors += other.errors
        self.server.merge(other.server)
        self.outside.merge(other.outside)


class Recorder:
    """Counters and histograms for one process; merges exactly with others."""

    def __init__(self) -> None:
        self.hist = Histogram()
        self.server = Histogram()  # the server's own time, of calls whose reply said it
        self.outside = Histogram()  # those calls' latency minus their server time
        self.ok = Histogram()  # the latency of the calls that ended OK...
        self.failed = Histogram()  # ... and of the others, apart
        self.status: dict[str, int] = {}
        self.messages: dict[str, int] = {}
        self.backends: dict[tuple[str, str], Backend] = {}
        self.replies = 0  # response messages received (streams count each one)
        self.sampled = Sampled()  # --trace-sample: the calls that carried a traceparent
        self.first_us = 0  # stream calls: time to the first reply
        self.timeline: Timeline | None = None
        self.timeline_edge = math.inf  # when the timeline's current bucket ends

    def track(self, start: float, interval: float) -> None:
        """Keep a timeline: buckets of ``interval`` seconds from ``start`` (perf_counter)."""
        self.timeline = Timeline(start, interval)
        self.timeline_edge = self.timeline.next_edge()

    def roll_timeline(self, now: float) -> None:
        """A call finished at ``now``, at or past ``timeline_edge``: close the bucket."""
        if self.timeline is not None:
            self.timeline_edge = self.timeline.roll(self, now)

    def close_timeline(self) -> None:
        """No call finishes any more: close the timeline's last bucket."""
        if self.timeline is not None:
            self.timeline.close(self)
        self.timeline_edge = math.inf

    @property
    def count(self) -> int:
        return self.hist.count

    @property
    def errors(self) -> int:
        return self.hist.count - self.status.get("OK", 0)

    def backend(self, cluster: str, pod: str) -> Backend:
        key = (cluster, pod)
        found = self.backends.get(key)
        if found is None:
            found = self.backends[key] = Backend()
        return found

    def error(self, code: str, details: str) -> None:
        message = f"{code}: {details}" if details else code
        if message not in self.messages and len(self.messages) >= MAX_ERROR_MESSAGES:
            message = _OTHER
        self.messages[message] = self.messages.get(message, 0) + 1

    def merge(self, other: Recorder, timeline_offset: int = 0) -> None:
        """Add ``other``'s counts to these, exactly; its timeline's first bucket goes to
        index ``timeline_offset`` of this one's."""
        self.hist.merge(other.hist)
        self.server.merge(other.server)
        self.outside.merge(other.outside)
        self.ok.merge(other.ok)
        self.failed.merge(other.failed)
        for code, n in other.status.items():
            self.status[code] = self.status.get(code, 0) + n
        for message, n in other.messages.items():
            self.messages[message] = self.messages.get(message, 0) + n
        for (cluster, pod), b in other.backends.items():
            self.backend(cluster, pod).merge(b)
        self.replies += other.replies
        self.sampled.merge(other.sampled)
        self._merge_timeline(other, timeline_offset)

    def _merge_timeline(self, other: Recorder, offset: int) -> None:
        if other.timeline is None:
            return
        if self.timeline is None:
            self.timeline = Timeline(other.timeline.start, other.timeline.interval)
        self.timeline.merge(other.timeline, offset)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hist": self.hist.to_dict(),
            "server": self.server.to_dict(),
            "outside": self.outside.to_dict(),
            "ok": self.ok.to_dict(),
            "failed": self.failed.to_dict(),
            "status": dict(self.status),
            "messages": dict(self.messages),
            "replies": self.replies,
            "backends": [
                [cluster, pod, b.hist.to_dict(), b.errors, b.server.to_dict(), b.outside.to_dict()]
                for (cluster, pod), b in self.backends.items()
            ],
            "timeline": None if self.timeline is None else self.timeline.to_dict(),
            "sampled": self.sampled.to_report(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recorder:
        rec = cls()
        rec.hist = Histogram.from_dict(data["hist"])
        rec.server = Histogram.from_dict(data["server"])
        rec.outside = Histogram.from_dict(data["outside"])
        rec.ok = Histogram.from_dict(data["ok"])
        rec.failed = Histogram.from_dict(data["failed"])
        rec.status = {str(k): int(v) for k, v in data["status"].items()}
        rec.messages = {str(k): int(v) for k, v in data["messages"].items()}
        rec.replies = int(data["replies"])
        for cluster, pod, hist, errors, server, outside in data["backends"]:
            rec.backends[(cluster, pod)] = Backend(
                Histogram.from_dict(hist),
                int(errors),
                Histogram.from_dict(server),
                Histogram.from_dict(outside),
            )
        if data.get("timeline") is not None:
            rec.timeline = Timeline.from_dict(data["timeline"])
        rec.sampled = Sampled.from_report(data.get("sampled"))
        return rec


def record(
    rec: Recorder,
    began: float,
    code: str,
    cluster: str,
    pod: str,
    details: str,
    now: float | None = None,
    server: int = NO_SERVER_TIME,
) -> None:
    """One finished call: latency since ``began``, status, serving identity, error, and
    the server's own time in µs (``server``, from its reply's server-timing; -1: none); it
    ended ``now`` (default: this moment; a replay of recorded calls passes their end)."""
    if now is None:
        now = _perf()
    if now >= rec.timeline_edge:  # the only per-call cost of the timeline
        rec.roll_timeline(now)
    us = int((now - began) * 1e6)
    rec.hist.record(us)
    rec.status[code] = rec.status.get(code, 0) + 1
    backend = rec.backend(cluster, pod)
    backend.hist.record(us)
    if server >= 0:
        outside = us - server if us > server else 0
        rec.server.record(server)
        rec.outside.record(outside)
        backend.server.record(server)
        backend.outside.record(outside)
    if code == "OK":
        rec.ok.record(us)
    else:
        rec.failed.record(us)
        backend.errors += 1
        rec.error(code, details)
