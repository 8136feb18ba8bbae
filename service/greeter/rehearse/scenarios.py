"""Disruptions under steady traffic through the gateway: a rolling drain and a cluster outage.

Both return a :class:`ScenarioResult` whose ``summary()`` has ``count``, ``failed``,
``status_codes``, ``by_cluster``, ``by_pod`` and a timeline of what was done when.
docs/rehearsal.md explains why the drain loses nothing and what bounds the outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from greeter.rehearse.fleet import Rehearsal
from greeter.rehearse.traffic import LoadRun, Traffic, load_summary

logger = logging.getLogger(__name__)

# A cluster outage (SIGKILL: connections reset, ports refused) may fail only the calls that were
# already sent to a killed backend: nginx cannot replay a gRPC request it has started to send.
# At the scenario's rate that is a handful; every other call is retried on the other cluster.
OUTAGE_MAX_FAILED = 10
# ...and all of them within this many seconds of the kill (later calls never go to a dead one).
OUTAGE_MAX_WINDOW_S = 1.0


@dataclass
class ScenarioResult:
    name: str
    traffic: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return int(self.traffic["failed"])

    def summary(self) -> dict[str, Any]:
        return {"scenario": self.name, **self.traffic, "events": self.events}


class _Timeline:
    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.events: list[dict[str, Any]] = []

    def mark(self, what: str, **extra: Any) -> None:
        at = round(time.perf_counter() - self.began, 3)
        self.events.append({"at_s": at, "event": what, **extra})
        logger.info("%7.3fs %s %s", at, what, extra or "")


def rolling_drain_duration(rehearsal: Rehearsal, settle: float) -> float:
    """How long the traffic must last to cover every restart, with room to spare."""
    c = rehearsal.config
    per_backend = c.drain_delay + 5.0 + settle + c.fail_timeout  # restart: ~1-3 s
    return settle + len(rehearsal.backends) * per_backend + settle


async def rolling_drain(
    rehearsal: Rehearsal,
    rps: float = 250.0,
    settle: float = 1.0,
    concurrency: int = 16,
) -> ScenarioResult:
    """SIGTERM each fleet backend in turn while ``greeter load`` runs through the gateway.

    Each backend drains (NOT_SERVING, drain delay, stop with grace) and is started again on
    its port; the next one goes once it is SERVING and nginx's fail_timeout has passed, so a
    backend nginx marked failed while it was down is back in rotation first.
    """
    # The load runs until every backend is back and has settled, then is interrupted (it
    # prints its report); the estimate only sets a ceiling, so a slow machine cannot make
    # the traffic end before the last restart.
    duration = 4 * rolling_drain_duration(rehearsal, settle)
    load = LoadRun(rehearsal.target(), rps, duration, concurrency=concurrency)
    timeline = _Timeline()
    await load.start()
    timeline.mark("greeter load started", rps=rps, duration_s=round(duration, 1))
    pause = settle + rehearsal.config.fail_timeout
    await asyncio.sleep(settle)
    for backend in rehearsal.backends:
        timeline.mark("sigterm", pod=backend.pod)
        code = await rehearsal.restart(backend)
        timeline.mark("serving again", pod=backend.pod, exit_code=code)
        await asyncio.sleep(pause)
    timeline.mark("all restarted")
    load.interrupt()
    report = await load.result()
    timeline.mark("greeter load done")
    traffic = load_summary(report)
    back = [e["at_s"] for e in timeline.events if e["event"] == "serving again"]
    # The load ran from about t=0 for its duration: did it outlast the last restart?
    ran = float(traffic["duration_s"] or 0.0)
    traffic["covered_all_restarts"] = bool(back) and ran >= back[-1]
    return ScenarioResult("rolling-drain", traffic, timeline.events)


async def cluster_outage(
    rehearsal: Rehearsal,
    cluster: str | None = None,
    rps: float = 250.0,
    before: float = 2.0,
    after: float = 5.0,
    concurrency: int = 16,
) -> ScenarioResult:
    """SIGKILL every backend of one cluster under traffic, keep going, then bring them back.

    The traffic is the rehearsal's own probe, which keeps one record per call, so the report
    says when the failures happened, not only how many there were.
    """
    name = cluster or rehearsal.config.clusters[-1]
    victims = rehearsal.cluster(name)
    if not victims:
        raise ValueError(f"no backends in cluster {name!r}")
    traffic = Traffic(rehearsal.target(), rps, concurrency=concurrency)
    timeline = _Timeline()
    runner = asyncio.create_task(traffic.run())
    try:
        await asyncio.sleep(before)
        kill_at = time.perf_counter()
        timeline.mark("sigkill", cluster=name, pods=[b.pod for b in victims])
        await rehearsal.kill(victims)
        await asyncio.sleep(after)
    finally:
        traffic.stop()
        report = await runner
    await rehearsal.revive(victims)
    timeline.mark("revived", cluster=name)
    summary = report.summary()
    failed = report.failures
    summary["kill_at_s"] = round(kill_at - traffic.started, 3)
    summary["last_failure_after_kill_s"] = (
        round(failed[-1].at - summary["kill_at_s"], 3) if failed else None
    )
    return ScenarioResult("cluster-outage", summary, timeline.events)
