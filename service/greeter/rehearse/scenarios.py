"""Disruptions under steady traffic through the gateway: a rolling drain and a cluster outage."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from greeter.rehearse.fleet import Rehearsal
from greeter.rehearse.traffic import Traffic, TrafficReport

logger = logging.getLogger(__name__)

# A cluster outage on 127.0.0.1 (connections reset, ports refused) may fail at most this many
# calls: nginx retries them on the surviving cluster (docs/rehearsal.md).
OUTAGE_MAX_FAILED = 0


@dataclass
class ScenarioResult:
    name: str
    traffic: TrafficReport
    events: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"scenario": self.name, **self.traffic.summary(), "events": self.events}


class _Timeline:
    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.events: list[dict[str, Any]] = []

    def mark(self, what: str, **extra: Any) -> None:
        at = round(time.perf_counter() - self.began, 3)
        self.events.append({"at_s": at, "event": what, **extra})
        logger.info("%.3fs %s %s", at, what, extra or "")


async def rolling_drain(
    rehearsal: Rehearsal,
    rps: float = 250.0,
    settle: float = 1.0,
    concurrency: int = 16,
) -> ScenarioResult:
    """SIGTERM each fleet backend in turn under traffic; restart it and wait for SERVING.

    Between two backends the scenario waits ``settle`` plus the gateway's fail_timeout, so a
    backend nginx marked failed while it was down is back in rotation before the next goes.
    """
    traffic = Traffic(rehearsal.target(), rps, concurrency=concurrency)
    timeline = _Timeline()
    runner = asyncio.create_task(traffic.run())
    pause = settle + rehearsal.config.fail_timeout
    try:
        await asyncio.sleep(settle)
        for backend in rehearsal.backends:
            timeline.mark("sigterm", pod=backend.pod)
            code = await rehearsal.restart(backend)
            timeline.mark("serving again", pod=backend.pod, exit_code=code)
            await asyncio.sleep(pause)
    finally:
        traffic.stop()
        report = await runner
    return ScenarioResult("rolling-drain", report, timeline.events)


async def cluster_outage(
    rehearsal: Rehearsal,
    cluster: str | None = None,
    rps: float = 250.0,
    before: float = 2.0,
    after: float = 5.0,
    concurrency: int = 16,
) -> ScenarioResult:
    """SIGKILL every backend of one cluster under traffic, keep going, then bring them back."""
    name = cluster or rehearsal.config.clusters[-1]
    victims = rehearsal.cluster(name)
    if not victims:
        raise ValueError(f"no backends in cluster {name!r}")
    traffic = Traffic(rehearsal.target(), rps, concurrency=concurrency)
    timeline = _Timeline()
    runner = asyncio.create_task(traffic.run())
    try:
        await asyncio.sleep(before)
        timeline.mark("sigkill", cluster=name, pods=[b.pod for b in victims])
        await rehearsal.kill(victims)
        await asyncio.sleep(after)
    finally:
        traffic.stop()
        report = await runner
    await rehearsal.revive(victims)
    timeline.mark("revived", cluster=name)
    return ScenarioResult("cluster-outage", report, timeline.events)
