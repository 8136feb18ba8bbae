"""Disruptions under steady traffic through the gateway: a rolling drain, a cluster outage and
an active/standby failover.

Each returns a :class:`ScenarioResult` whose ``summary()`` has ``count``, ``failed``,
``status_codes``, ``by_cluster``, ``by_pod`` and a timeline of what was done when; its
``load`` is the traffic as a ``greeter load`` JSON report (with the per-interval
``timeline``) and ``traffic_started_at_s`` puts the two on one clock.
docs/rehearsal.md explains why the drain loses nothing and what bounds the outage and the
failover.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greeter.rehearse.fleet import Rehearsal
from greeter.rehearse.pods import Backend
from greeter.rehearse.traffic import LoadRun, Traffic, TrafficReport, load_report, load_summary

logger = logging.getLogger(__name__)

# A cluster outage (SIGKILL: connections reset, ports refused) may fail only the calls that were
# already sent to a killed backend: nginx cannot replay a gRPC request it has started to send.
# At the scenario's rate that is a handful; every other call is retried on the other cluster.
OUTAGE_MAX_FAILED = 10
# ...and every one of them was sent before the killed backends were gone, and at most this many
# seconds after the SIGKILL (a call sent later never goes to a dead backend, or is retried).
OUTAGE_MAX_WINDOW_S = 1.0
# Calls the scenarios' probe keeps in flight at most.
PROBE_CONCURRENCY = 16
# The failover kills the active clusters, which take *every* call (the outage's victims take
# half): every call in flight at the SIGKILL may be lost (at most the probe's concurrency),
# plus the outage's allowance for calls that reach the victims while they die. As in the
# outage, a failed call sent after they were gone fails the run (the standby must take it).
FAILOVER_MAX_FAILED = PROBE_CONCURRENCY + OUTAGE_MAX_FAILED
# How long the traffic may take to start (a `greeter load` process: start-up and connect).
TRAFFIC_START_TIMEOUT_S = 60.0


@dataclass
class ScenarioResult:
    name: str
    traffic: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    # The traffic as a ``greeter load`` JSON report; its ``timeline`` buckets and the
    # summary's times count from the traffic's start, which was this many seconds after the
    # events' clock began (their ``at_s``).
    load: dict[str, Any] | None = None
    traffic_started_at_s: float = 0.0

    @property
    def failed(self) -> int:
        return int(self.traffic["failed"])

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            **self.traffic,
            "events": self.events,
            "traffic_started_at_s": round(self.traffic_started_at_s, 3),
        }


def allowed_failures(scenario: str, max_failed: int | None = None) -> int:
    """Failed calls ``scenario`` (drain, outage, failover) may have: ``max_failed`` if given."""
    if max_failed is not None:
        return max_failed
    return {"drain": 0, "outage": OUTAGE_MAX_FAILED, "failover": FAILOVER_MAX_FAILED}[scenario]


def passed(summary: dict[str, Any], allowed: int) -> bool:
    """The verdict: no more failed calls than ``allowed``, and in a failover none sent once
    the active backends were gone (the standby must take those)."""
    if summary["scenario"] == "cluster-failover" and summary["failures_sent_after_dead"]:
        return False
    return int(summary["failed"]) <= allowed


class _Timeline:
    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.events: list[dict[str, Any]] = []

    def mark(self, what: str, **extra: Any) -> float:
        """Record an event; returns its time (seconds since the timeline began, unrounded)."""
        now = time.perf_counter() - self.began
        at = round(now, 3)
        self.events.append({"at_s": at, "event": what, **extra})
        # The live lines count from the scenario's start; the report uses the traffic's clock.
        logger.info("rehearsal clock %7.3f s  %-22s %s", at, what, event_details(extra))
        return now


def event_details(extra: dict[str, Any]) -> str:
    """An event's details for people: ``cluster cluster-b; pods b-0, b-1; survivors none``."""
    parts = []
    for key, value in extra.items():
        if isinstance(value, list | tuple):
            value = ", ".join(map(str, value)) or "none"
        if key.endswith("_s"):
            key, value = key[:-2], f"{value} s"
        parts.append(f"{key.replace('_', ' ')} {value}")
    return "; ".join(parts)


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def _wait_for_load_calls(load: LoadRun, log: Path, since: int, timeout: float) -> None:
    """Until the gateway's access log has a SayHello after byte ``since``: ``greeter load`` has
    started its measured run (it has no warm-up here). Its start-up and connect take 1-3 s, more
    on a busy machine; the disruptions must not begin before the traffic does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _log_size(log) > since:
            with log.open("rb") as f:
                f.seek(since)
                if b"/helloworld.Greeter/SayHello" in f.read():
                    return
        if not load.running:
            await load.result()  # raises with its stderr when there is no report
            raise RuntimeError("greeter load exited before sending a call")
        await asyncio.sleep(0.05)
    load.interrupt()
    raise RuntimeError(f"greeter load sent no call through the gateway within {timeout:g}s")


def rolling_drain_duration(rehearsal: Rehearsal, settle: float) -> float:
    """How long the traffic must last to cover every restart, with room to spare."""
    c = rehearsal.config
    per_backend = c.drain + 5.0 + settle + rehearsal.return_bound  # restart: ~1-3 s
    return settle + len(rehearsal.backends) * per_backend + settle


async def rolling_drain(
    rehearsal: Rehearsal,
    rps: float = 250.0,
    settle: float = 1.0,
    concurrency: int = 16,
) -> ScenarioResult:
    """SIGTERM each fleet backend in turn while ``greeter load`` runs through the gateway.

    Each backend drains (NOT_SERVING, drain delay, stop with grace) and is started again on
    its port; the next one goes once it is SERVING and back in the gateway's rotation (nginx:
    its fail_timeout has passed, so a backend nginx marked failed while it was down is back;
    Envoy: its health checks passed again).
    """
    # The load runs until every backend is back and has settled, then is interrupted (it
    # prints its report); the estimate only sets a ceiling, so a slow machine cannot make
    # the traffic end before the last restart.
    duration = 4 * rolling_drain_duration(rehearsal, settle)
    load = LoadRun(rehearsal.target(), rps, duration, concurrency=concurrency)
    if rehearsal.gateway is None:
        raise RuntimeError("the rehearsal is not running")
    log = rehearsal.gateway.access_log
    since = _log_size(log)
    timeline = _Timeline()
    await load.start()
    launched = timeline.mark("greeter load started", rps=rps, duration_s=round(duration, 1))
    first_sigterm: float | None = None
    try:
        await _wait_for_load_calls(load, log, since, TRAFFIC_START_TIMEOUT_S)
        # The load's own clock (its duration_s) started before this mark: at its first call.
        sending = timeline.mark("greeter load sending")
        await asyncio.sleep(settle)
        for backend in rehearsal.backends:
            at = timeline.mark("sigterm", pod=backend.pod)
            first_sigterm = at if first_sigterm is None else first_sigterm
            code = await rehearsal.restart(backend)
            timeline.mark("serving again", pod=backend.pod, exit_code=code)
            await rehearsal.back_in_rotation(backend)
            await asyncio.sleep(settle)
        timeline.mark("all restarted")
    finally:
        stopping = timeline.mark("greeter load interrupted")
        load.interrupt()
    report = await load.result()
    timeline.mark("greeter load done")
    traffic = load_summary(report)
    started = _load_start(launched, sending, stopping, report)
    # Covered: the load was sending before the first SIGTERM (its calls were in the gateway's
    # log), and it was still running when it was interrupted after the last restart: stopped by
    # that interrupt, not by its own -z limit (which would make its duration the limit).
    ran = float(traffic["duration_s"] or 0.0)
    limit = traffic["limit_s"]
    still_running = traffic["interrupted"] and limit is not None and ran < float(limit)
    traffic["load_sending_at_s"] = round(sending, 3)
    traffic["covered_all_restarts"] = (
        first_sigterm is not None and sending <= first_sigterm and still_running
    )
    return ScenarioResult("rolling-drain", traffic, timeline.events, report, started)


def _load_start(began: float, sending: float, stopping: float, report: dict[str, Any]) -> float:
    """When ``greeter load``'s clock (its timeline's 0) began, on the scenario's: its run
    ends at the Ctrl-C, ``duration_s`` after it began (a run its -z limit ended began
    ``duration_s`` before it ended, which is not known: then its first call stands in). It
    began after the process started (``began``) and before its first call was in the
    gateway's log (``sending``)."""
    ran = float(report.get("duration_s") or 0.0)
    limit = (report.get("options") or {}).get("duration_s")
    stopped_by_us = bool(report.get("interrupted")) and (limit is None or ran < float(limit))
    estimate = stopping - ran if stopped_by_us else sending
    return min(max(estimate, began), sending)


async def _start_probe(traffic: Traffic, runner: asyncio.Task[TrafficReport]) -> None:
    """Until the probe sends its first call (bounded); raises what stopped it, if anything."""
    # The scenario's clock counts from the first call, not from the (slower on a busy
    # machine) connect.
    running = asyncio.create_task(traffic.running.wait())
    await asyncio.wait(
        {runner, running}, timeout=TRAFFIC_START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
    )
    running.cancel()
    if runner.done():
        runner.result()  # raises what stopped it
    if not traffic.running.is_set():
        raise RuntimeError(f"the traffic did not start within {TRAFFIC_START_TIMEOUT_S:g}s")


async def _abandon_probe(traffic: Traffic, runner: asyncio.Task[TrafficReport]) -> None:
    traffic.stop()
    if not traffic.running.is_set():
        runner.cancel()  # still connecting, where stop() does not reach it
    await asyncio.gather(runner, return_exceptions=True)


async def _kill(
    rehearsal: Rehearsal, victims: list[Backend], timeline: _Timeline, **what: Any
) -> tuple[float, float, list[str]]:
    """SIGKILL ``victims``: (when the signal went out, when they had exited, survivors)."""
    kill_at = time.perf_counter()
    timeline.mark("sigkill", **what, pods=[b.pod for b in victims])
    await rehearsal.kill(victims)
    dead_at = time.perf_counter()
    survivors = [b.pod for b in victims if b.alive]
    timeline.mark("killed", **what, survivors=survivors)
    return kill_at, dead_at, survivors


async def cluster_outage(
    rehearsal: Rehearsal,
    cluster: str | None = None,
    rps: float = 250.0,
    before: float = 2.0,
    after: float = 5.0,
    back: float | None = None,
    concurrency: int = 16,
) -> ScenarioResult:
    """SIGKILL every backend of one cluster under traffic, keep going for ``after`` seconds,
    then bring them back and keep going for ``back`` (default: the rehearsal's
    ``return_bound`` + 1), so
    the traffic is seen to return to them.

    The traffic is the rehearsal's own probe, which keeps one record per call (when it was
    sent, when it ended), so the report says which calls the outage hurt, not only how many.
    Times in the summary count from the probe's start.
    """
    name = cluster or rehearsal.config.clusters[-1]
    victims = rehearsal.cluster(name)
    if not victims:
        raise ValueError(f"no backends in cluster {name!r}")
    back = rehearsal.return_bound + 1.0 if back is None else back
    traffic = Traffic(rehearsal.target(), rps, concurrency=concurrency)
    timeline = _Timeline()
    runner = asyncio.create_task(traffic.run())
    try:
        await _start_probe(traffic, runner)
        timeline.mark("traffic running", rps=rps)
        await asyncio.sleep(before)
        kill_at, dead_at, survivors = await _kill(rehearsal, victims, timeline, cluster=name)
        await asyncio.sleep(after)
        reviving_at, revived_at = await _revive(rehearsal, victims, timeline, cluster=name)
        await asyncio.sleep(back)
    except BaseException:
        await _abandon_probe(traffic, runner)
        raise
    traffic.stop()
    report = await runner
    timeline.mark("traffic stopped")
    t0 = traffic.started
    summary = outage_summary(report, kill_at - t0, dead_at - t0, survivors, rehearsal.dead_grace_s)
    summary["cluster"] = name
    summary.update(return_summary(report, [name], reviving_at - t0, revived_at - t0))
    return _probe_result("cluster-outage", summary, timeline, traffic)


def _probe_result(
    name: str, summary: dict[str, Any], timeline: _Timeline, traffic: Traffic
) -> ScenarioResult:
    started = traffic.started - timeline.began
    return ScenarioResult(name, summary, timeline.events, load_report(traffic), started)


async def _revive(
    rehearsal: Rehearsal, victims: list[Backend], timeline: _Timeline, **what: Any
) -> tuple[float, float]:
    """Start ``victims`` again: (when they were started, when all were SERVING)."""
    reviving_at = time.perf_counter()
    timeline.mark("reviving", **what)
    await rehearsal.revive(victims)
    revived_at = time.perf_counter()
    timeline.mark("revived", **what)
    return reviving_at, revived_at


def return_summary(
    report: TrafficReport, clusters: Collection[str], reviving_s: float, revived_s: float
) -> dict[str, Any]:
    """When the killed ``clusters`` were started again and were SERVING (since the traffic
    started), and when one of them served a call again."""
    back = [
        o.sent
        for o in report.outcomes
        if o.sent > reviving_s and o.code == "OK" and o.cluster in clusters
    ]
    return {
        "reviving_at_s": round(reviving_s, 3),
        "revived_at_s": round(revived_s, 3),
        # The restarted backends take calls as soon as they listen, before the rehearsal
        # has seen them SERVING.
        "returned_at_s": round(min(back), 3) if back else None,
    }


def outage_summary(
    report: TrafficReport,
    kill_s: float,
    dead_s: float,
    survivors: list[str],
    grace_s: float = 0.0,
) -> dict[str, Any]:
    """The probe's summary with what the outage did: ``kill_s`` is when the SIGKILL went out,
    ``dead_s`` when the victims had exited (both since the traffic started). A call sent
    within ``grace_s`` after that is not counted as sent after they were gone (the
    rehearsal's ``dead_grace_s``: a keep-alive gateway learns of the death a moment later)."""
    summary = report.summary()
    failed = report.failures
    summary["kill_at_s"] = round(kill_s, 3)
    summary["dead_at_s"] = round(dead_s, 3)  # the victims had exited (reaped) by then...
    summary["survivors"] = survivors  # ...except these, if SIGKILL did not end them
    # Which calls failed is decided by when they were sent: the ones already sent to a killed
    # backend. When a failed call's answer arrived (``at``) is only the client's pace.
    summary["last_failure_sent_after_kill_s"] = (
        round(max(o.sent for o in failed) - kill_s, 3) if failed else None
    )
    summary["dead_grace_s"] = grace_s
    summary["failures_sent_after_dead"] = len(report.failures_sent_after(dead_s + grace_s))
    summary["ok_sent_after_dead"] = sum(
        1 for o in report.outcomes if o.code == "OK" and o.sent > dead_s
    )
    return summary


async def cluster_failover(
    rehearsal: Rehearsal,
    rps: float = 250.0,
    before: float = 2.0,
    after: float = 5.0,
    back: float | None = None,
    concurrency: int = PROBE_CONCURRENCY,
) -> ScenarioResult:
    """Active/standby: SIGKILL every backend of the active clusters under traffic, so the
    standby's (nginx ``backup`` servers) take the calls; then bring the active ones back and
    keep the traffic on for ``back`` seconds (default: the rehearsal's ``return_bound`` + 3)
    to show it returning to them, since nginx stops using backup servers once a primary is
    available (Envoy: priority 0 takes every call again once a pod there is healthy).

    The summary is the outage's (failed calls, when they were sent) with the traffic's split
    in three phases: the calls that ended before the kill, and by when each call was sent,
    from the moment the active backends had exited until they were started again, and from
    ``return_bound`` after they were SERVING again.
    """
    c = rehearsal.config
    if not c.standby:
        raise ValueError("the failover needs a standby cluster (standby / --standby)")
    active_clusters = [name for name in c.clusters if name not in c.standby]
    victims = [b for b in rehearsal.backends if b.cluster in active_clusters]
    bound = rehearsal.return_bound
    back = bound + 3.0 if back is None else back
    traffic = Traffic(rehearsal.target(), rps, concurrency=concurrency)
    timeline = _Timeline()
    runner = asyncio.create_task(traffic.run())
    try:
        await _start_probe(traffic, runner)
        timeline.mark("traffic running", rps=rps, active=active_clusters, standby=list(c.standby))
        await asyncio.sleep(before)
        kill_at, dead_at, survivors = await _kill(
            rehearsal, victims, timeline, clusters=active_clusters
        )
        await asyncio.sleep(after)
        reviving_at, revived_at = await _revive(
            rehearsal, victims, timeline, clusters=active_clusters
        )
        await asyncio.sleep(back)
    except BaseException:
        await _abandon_probe(traffic, runner)
        raise
    traffic.stop()
    report = await runner
    timeline.mark("traffic stopped")
    t0 = traffic.started
    summary = outage_summary(report, kill_at - t0, dead_at - t0, survivors, rehearsal.dead_grace_s)
    summary.update(
        failover_summary(
            report,
            active_clusters,
            c.standby,
            (kill_at - t0, dead_at - t0, reviving_at - t0, revived_at - t0),
            bound,
        )
    )
    return _probe_result("cluster-failover", summary, timeline, traffic)


def _phase(report: TrafficReport, since: float, until: float, by: str = "sent") -> dict[str, Any]:
    """The calls ``by`` ("sent", or "ended": answered or failed) in ``(since, until]``
    (seconds since the traffic started)."""
    calls = [o for o in report.outcomes if since < (o.sent if by == "sent" else o.at) <= until]
    return {
        "calls": by,
        "from_s": round(max(since, 0.0), 3),
        "to_s": round(min(until, report.duration), 3),
        "count": len(calls),
        "failed": sum(1 for o in calls if o.code != "OK"),
        "by_cluster": dict(Counter(o.cluster for o in calls if o.code == "OK")),
    }


def _share(phase: dict[str, Any], clusters: Collection[str]) -> float | None:
    by_cluster: dict[str, int] = phase["by_cluster"]
    ok = sum(by_cluster.values())
    if not ok:
        return None
    return round(sum(n for name, n in by_cluster.items() if name in clusters) / ok, 4)


def failover_summary(
    report: TrafficReport,
    active: Collection[str],
    standby: Collection[str],
    times: tuple[float, float, float, float],
    bound_s: float,
) -> dict[str, Any]:
    """What the failover did to the split. ``times`` since the traffic started: the SIGKILL,
    the active backends gone, their restart begun, all of them SERVING again."""
    kill_s, dead_s, reviving_s, revived_s = times
    phases = {
        # Ended before the SIGKILL: picked while every active backend was up. (A call sent
        # just before it may reach nginx after it, and rightly go to the standby.)
        "before_kill": _phase(report, float("-inf"), kill_s, by="ended"),
        "active_down": _phase(report, dead_s, reviving_s),
        "returned": _phase(report, revived_s + bound_s, float("inf")),
    }
    return {
        "active": list(active),
        "standby": list(standby),
        **return_summary(report, active, reviving_s, revived_s),
        "return_bound_s": bound_s,
        "phases": phases,
        "standby_share_before_kill": _share(phases["before_kill"], standby),
        "standby_share_after_kill": _share(phases["active_down"], standby),
        "active_share_after_return": _share(phases["returned"], active),
    }
