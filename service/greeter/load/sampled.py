"""The sampled calls of a ``--trace-sample`` run (greeter.load.tracing): how many, and the
:data:`SLOWEST` slowest with their trace ids, kept in a bounded heap that merges exactly
(``--procs``, ``greeter load merge``) and goes into the report's ``traces`` section."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

SLOWEST = 10  # sampled calls a report lists
NO_SERVER_TIME = -1  # the reply carried no server-timing (as greeter.load.recorder)


@dataclass(order=True, frozen=True)
class SampledCall:
    """One sampled call, as the report lists it."""

    latency_us: int
    trace_id: str = field(compare=False)
    code: str = field(compare=False)
    cluster: str = field(compare=False)
    pod: str = field(compare=False)
    server_us: int = field(compare=False)  # -1: the reply carried no server-timing

    def to_report(self) -> dict[str, Any]:
        timed = self.server_us >= 0
        return {
            "trace_id": self.trace_id,
            "latency_ms": round(self.latency_us / 1000, 3),
            "code": self.code,
            "cluster": self.cluster,
            "pod": self.pod,
            "server_ms": round(self.server_us / 1000, 3) if timed else None,
            "outside_ms": round(max(self.latency_us - self.server_us, 0) / 1000, 3)
            if timed
            else None,
        }

    @classmethod
    def from_report(cls, row: dict[str, Any]) -> SampledCall:
        latency = round(float(row["latency_ms"]) * 1000)
        server = row["server_ms"]
        return cls(
            latency,
            str(row["trace_id"]),
            str(row["code"]),
            str(row["cluster"]),
            str(row["pod"]),
            NO_SERVER_TIME if server is None else round(float(server) * 1000),
        )


class Sampled:
    """How many calls were sampled, and the slowest of them (a bounded heap); merges."""

    def __init__(self) -> None:
        self.count = 0
        self._heap: list[SampledCall] = []

    def add(self, call: SampledCall) -> None:
        self.count += 1
        if len(self._heap) < SLOWEST:
            heapq.heappush(self._heap, call)
        elif call > self._heap[0]:
            heapq.heapreplace(self._heap, call)

    def merge(self, other: Sampled) -> None:
        count = self.count + other.count
        for call in other._heap:
            self.add(call)
        self.count = count

    def slowest(self) -> list[SampledCall]:
        return sorted(self._heap, reverse=True)

    def to_report(self) -> dict[str, Any]:
        return {"calls": self.count, "slowest": [c.to_report() for c in self.slowest()]}

    @classmethod
    def from_report(cls, data: dict[str, Any] | None) -> Sampled:
        out = cls()
        if data:
            for row in data["slowest"]:
                out.add(SampledCall.from_report(row))
            out.count = int(data["calls"])
        return out
