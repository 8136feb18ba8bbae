"""Disruptions under steady traffic through the gateway: a rolling drain, a cluster outage, an
active/standby failover, a cluster cut off by the network (a partition); and the fleet past
its capacity (an overload).

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from greeter.rehearse import access_log, findings
from greeter.rehearse.findings import (
    PROBE_CONCURRENCY,
    DrainFacts,
    Facts,
    FailoverFacts,
    GatewayCounts,
    OutageFacts,
    OverloadFacts,
    PodLoad,
    ScenarioName,
    facts_json,
)
from greeter.rehearse.fleet import Rehearsal
from greeter.rehearse.gateway import IDEMPOTENT_METHODS
from greeter.rehearse.pods import Backend
from greeter.rehearse.traffic import LoadRun, Traffic, TrafficReport, load_report, load_summary

logger = logging.getLogger(__name__)

# How long the traffic may take to start (a `greeter load` process: start-up and connect).
TRAFFIC_START_TIMEOUT_S = 60.0
# The overload's two `greeter load` runs: the capacity in a closed loop, then an open loop with
# workers enough never to run out while the pods hold calls. A pod held to a CPU quota answers
# in bursts (0.2 core: 20 ms of every 100), so the closed loop needs many calls in flight to
# keep every pod busy through its burst: measured through Envoy with pods at 0.2/0.2/0.05 core,
# -c 100 over 4 connections read 800-830 OK calls/s, -c 300 over 8 read 1,254, -c 1000 1,274
# (and Envoy's circuit breaker refused the excess). Under Envoy's 1,024 in flight.
CAPACITY_CONCURRENCY, CAPACITY_CONNECTIONS = 300, 8
OPEN_CONCURRENCY, OPEN_CONNECTIONS = 20_000, 8
OVERLOAD_FOR_S = 8.0
# Each run's first share (at most WARMUP_MAX_S) is left out of its report: connections, the
# pods' first turns (bench.overload's runs too).
WARMUP_SHARE, WARMUP_MAX_S = 0.2, 2.0


@dataclass
class ScenarioResult:
    name: ScenarioName
    # The traffic's own summary (``count``, ``failed``, ``status_codes``, ``by_cluster``...).
    traffic: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    # The traffic as a ``greeter load`` JSON report; its ``timeline`` buckets and the
    # summary's times count from the traffic's start, which was this many seconds after the
    # events' clock began (their ``at_s``).
    load: dict[str, Any] | None = None
    traffic_started_at_s: float = 0.0
    # What the scenario's steps found (greeter.rehearse.findings).
    facts: Facts | None = None

    @property
    def failed(self) -> int:
        return int(self.traffic["failed"])

    def summary(self) -> dict[str, Any]:
        """The report's JSON: the scenario's name, the traffic's summary, the facts, the
        events."""
        return {
            "scenario": self.name,
            **self.traffic,
            **facts_json(self.facts),
            "events": self.events,
            "traffic_started_at_s": round(self.traffic_started_at_s, 3),
        }


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
    covered = first_sigterm is not None and sending <= first_sigterm and still_running
    facts = DrainFacts(load_sending_at_s=round(sending, 3), covered_all_restarts=covered)
    return ScenarioResult("drain", traffic, timeline.events, report, started, facts)


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


class Fault(Protocol):
    """What a probe scenario does to the fleet under traffic (``inflict``) and undoes
    (``recover``); ``what`` names the victims in the events (``cluster=...``)."""

    what: dict[str, Any]

    async def inflict(self, rehearsal: Rehearsal, timeline: _Timeline) -> Inflicted: ...

    async def recover(self, rehearsal: Rehearsal, timeline: _Timeline) -> tuple[float, float]:
        """When recovery began, and when it was complete (``perf_counter`` times)."""
        ...


@dataclass
class Inflicted:
    """``perf_counter`` times: when the fault began, when it had taken full effect (the
    victims gone); the victims it did not reach."""

    began: float
    effective: float
    survivors: list[str] = field(default_factory=list)


@dataclass
class Kill:
    """SIGKILL ``victims`` (no drain: connections reset, ports refused, as when a cluster
    drops out); recover by starting them again."""

    victims: list[Backend]
    what: dict[str, Any]

    async def inflict(self, rehearsal: Rehearsal, timeline: _Timeline) -> Inflicted:
        began = time.perf_counter()
        timeline.mark("sigkill", **self.what, pods=[b.pod for b in self.victims])
        await rehearsal.kill(self.victims)
        dead = time.perf_counter()
        survivors = [b.pod for b in self.victims if b.alive]
        timeline.mark("killed", **self.what, survivors=survivors)
        return Inflicted(began, dead, survivors)

    async def recover(self, rehearsal: Rehearsal, timeline: _Timeline) -> tuple[float, float]:
        reviving = time.perf_counter()
        timeline.mark("reviving", **self.what)
        await rehearsal.revive(self.victims)
        revived = time.perf_counter()
        timeline.mark("revived", **self.what)
        return reviving, revived


@dataclass
class Cut:
    """Drop every packet between the machine and the ``clusters``' pods, both ways (no reset:
    connections stay "open", calls on them get no answer, new connections no SYN-ACK), as a
    route table, a security group or a region's network does; recover by healing."""

    clusters: list[str]
    what: dict[str, Any]

    async def inflict(self, rehearsal: Rehearsal, timeline: _Timeline) -> Inflicted:
        began = time.perf_counter()
        victims = []
        for name in self.clusters:
            victims += await asyncio.to_thread(rehearsal.cut, name)
        timeline.mark("partition", **self.what, pods=[b.pod for b in victims])
        return Inflicted(began, time.perf_counter())

    async def recover(self, rehearsal: Rehearsal, timeline: _Timeline) -> tuple[float, float]:
        healing = time.perf_counter()
        for name in self.clusters:
            await asyncio.to_thread(rehearsal.heal, name)
        healed = time.perf_counter()
        timeline.mark("heal", **self.what)
        return healing, healed


class PartitionUnavailable(RuntimeError):
    """The machine does not let the rehearsal filter packets (not root, no iptables)."""


def _cutter(rehearsal: Rehearsal) -> None:
    if rehearsal.firewall is None:
        raise PartitionUnavailable(f"partition unavailable: {rehearsal.firewall_problem}")


@dataclass
class ProbeRun:
    """A probe scenario's run: the probe's records and the steps' times, in seconds since
    the traffic started."""

    report: TrafficReport
    traffic: Traffic
    timeline: _Timeline
    fault_s: float
    effective_s: float
    survivors: list[str]
    recovering_s: float
    recovered_s: float

    def result(self, name: ScenarioName, facts: Facts) -> ScenarioResult:
        started = self.traffic.started - self.timeline.began
        return ScenarioResult(
            name, self.report.summary(), self.timeline.events, load_report(self.traffic),
            started, facts,
        )  # fmt: skip


async def probe_fault_recover(
    rehearsal: Rehearsal,
    fault: Fault,
    rps: float,
    concurrency: int,
    before: float,
    after: float,
    back: float,
    **running: Any,
) -> ProbeRun:
    """The probe scenarios' skeleton, step by step: **probe** (the rehearsal's own traffic,
    one record per call, runs ``before`` seconds), **fault** (``fault.inflict``, then
    ``after`` seconds), **recover** (``fault.recover``, then ``back`` seconds), and the
    traffic stops; the **verdict** is the caller's, from the records. ``running``: details
    of the "traffic running" event."""
    traffic = Traffic(rehearsal.target(), rps, concurrency=concurrency)
    timeline = _Timeline()
    runner = asyncio.create_task(traffic.run())
    try:
        await _start_probe(traffic, runner)
        timeline.mark("traffic running", rps=rps, **running)
        await asyncio.sleep(before)
        hit = await fault.inflict(rehearsal, timeline)
        await asyncio.sleep(after)
        recovering, recovered = await fault.recover(rehearsal, timeline)
        await asyncio.sleep(back)
    except BaseException:
        await _abandon_probe(traffic, runner)
        raise
    traffic.stop()
    report = await runner
    timeline.mark("traffic stopped")
    t0 = traffic.started
    return ProbeRun(
        report, traffic, timeline, hit.began - t0, hit.effective - t0, hit.survivors,
        recovering - t0, recovered - t0,
    )  # fmt: skip


async def cluster_outage(
    rehearsal: Rehearsal,
    cluster: str | None = None,
    rps: float = 250.0,
    before: float = 2.0,
    after: float = 5.0,
    back: float | None = None,
    concurrency: int = PROBE_CONCURRENCY,
) -> ScenarioResult:
    """SIGKILL every backend of one cluster under traffic, keep going for ``after`` seconds,
    then bring them back and keep going for ``back`` (default: the rehearsal's
    ``return_bound`` + 1), so the traffic is seen to return to them.

    The traffic is the rehearsal's own probe, which keeps one record per call (when it was
    sent, when it ended), so the report says which calls the outage hurt, not only how many.
    Times in the summary count from the probe's start.
    """
    name = cluster or rehearsal.config.clusters[-1]
    victims = rehearsal.cluster(name)
    if not victims:
        raise ValueError(f"no backends in cluster {name!r}")
    back = rehearsal.return_bound + 1.0 if back is None else back
    kill = Kill(victims, {"cluster": name})
    run = await probe_fault_recover(rehearsal, kill, rps, concurrency, before, after, back)
    report, grace = run.report, rehearsal.dead_grace_s
    facts = OutageFacts(
        killed=findings.killed(report, run.fault_s, run.effective_s, run.survivors, grace),
        cluster=name,
        returned=findings.returned(report, [name], run.recovering_s, run.recovered_s),
    )
    return run.result("outage", facts)


async def cluster_failover(
    rehearsal: Rehearsal,
    rps: float = 250.0,
    before: float = 2.0,
    after: float = 5.0,
    back: float | None = None,
    concurrency: int = PROBE_CONCURRENCY,
    partition: bool = False,
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

    ``partition``: the active clusters are cut off by the network (:class:`Cut`) rather than
    killed; "exited" and "started again" are then the cut and the heal.
    """
    c = rehearsal.config
    if not c.standby:
        raise ValueError("the failover needs a standby cluster (standby / --standby)")
    active = [name for name in c.clusters if name not in c.standby]
    victims = [b for b in rehearsal.backends if b.cluster in active]
    bound = rehearsal.return_bound
    back = bound + 3.0 if back is None else back
    fault: Fault = Kill(victims, {"clusters": active})
    if partition:
        _cutter(rehearsal)
        fault = Cut(active, {"clusters": active})
    run = await probe_fault_recover(
        rehearsal, fault, rps, concurrency, before, after, back,
        active=active, standby=list(c.standby),
    )  # fmt: skip
    report = run.report
    hit = findings.killed(
        report, run.fault_s, run.effective_s, run.survivors, rehearsal.dead_grace_s
    )
    times = (run.fault_s, run.effective_s, run.recovering_s, run.recovered_s)
    facts: FailoverFacts = findings.failover(report, hit, active, c.standby, times, bound)
    facts.fault = "cut" if partition else "kill"
    return run.result("failover", facts)


async def cluster_partition(
    rehearsal: Rehearsal,
    cluster: str | None = None,
    rps: float = 250.0,
    before: float = 2.0,
    partition_for: float = 20.0,
    back: float | None = None,
    concurrency: int = PROBE_CONCURRENCY,
) -> ScenarioResult:
    """Cut one cluster off (every packet between the machine and its pods dropped, both ways)
    under traffic for ``partition_for`` seconds, then heal, and keep going for ``back``
    (default: the rehearsal's ``return_bound`` + 1) to see the traffic return to it.

    The steps are the outage's, the fault a cut rather than a kill; the verdict also wants no
    call slower than the gateway's bound (``Rehearsal.partition_bound_s``): a call that hung
    on the silent cluster until its deadline is the failure this scenario looks for.
    """
    _cutter(rehearsal)
    if partition_for <= 0:
        raise ValueError("partition_for must be more than 0 seconds")
    name = cluster or rehearsal.config.clusters[-1]
    if not rehearsal.cluster(name):
        raise ValueError(f"no backends in cluster {name!r}")
    if rehearsal.gateway is None:
        raise RuntimeError("the rehearsal is not running")
    log = rehearsal.gateway.access_log
    since = _log_size(log)
    back = rehearsal.return_bound + 1.0 if back is None else back
    cut = Cut([name], {"cluster": name, "for_s": partition_for})
    run = await probe_fault_recover(rehearsal, cut, rps, concurrency, before, partition_for, back)
    counts = await _gateway_counts(rehearsal, log, since, run.report)
    facts = findings.partition(
        run.report, name, (run.fault_s, run.recovered_s), partition_for,
        rehearsal.partition_bound_s, counts, rehearsal.held_s,
    )  # fmt: skip
    return run.result("partition", facts)


async def _gateway_counts(
    rehearsal: Rehearsal, log: Path, since: int, report: TrafficReport
) -> GatewayCounts:
    """The gateway's access log over the probe's calls, once it has them all (bounded: Envoy
    flushes its log every 100 ms)."""
    pods = {b.upstream: b.pod for b in rehearsal.backends + rehearsal.canary}
    logged: list[access_log.LoggedCall] = []
    for _ in range(40):
        logged = access_log.calls(log, since, IDEMPOTENT_METHODS[0])
        if len(logged) >= report.count:
            break
        await asyncio.sleep(0.05)
    by_pod = access_log.served_by_pod(logged, pods)
    return GatewayCounts(
        calls=len(logged),
        retried=sum(1 for c in logged if c.retried),
        by_pod=by_pod,
        agrees=len(logged) == report.count and by_pod == report.by_pod,
    )


async def overload(
    rehearsal: Rehearsal,
    level: float = findings.OVERLOAD_LEVEL,
    deadline: float = findings.OVERLOAD_DEADLINE_S,
    min_goodput: float = findings.OVERLOAD_MIN_GOODPUT,
    duration: float = OVERLOAD_FOR_S,
) -> ScenarioResult:
    """The fleet past its capacity, every pod held to a CPU quota (``pod_cpu``): first its
    capacity through the gateway (``greeter load`` in a closed loop, OK calls per second),
    then an open loop asking ``level`` x that, each call with a ``deadline``, each run
    ``duration`` seconds (its first ``WARMUP_SHARE`` left out); ``greeter load`` runs pinned
    to the core the pods are not pinned to, when there is one. The verdict: goodput (OK
    calls per second) at least ``min_goodput`` x the capacity."""
    loose = [b.pod for b in rehearsal.backends if b.quota is None]
    if loose:
        raise ValueError(
            f"the overload needs every pod held to a CPU quota (--pod-cpu); none for "
            f"{', '.join(loose)}"
        )
    if level <= 0 or deadline <= 0 or duration <= 0 or min_goodput < 0:
        raise ValueError("level, deadline and duration must be positive, min_goodput not negative")
    if rehearsal.gateway is None:
        raise RuntimeError("the rehearsal is not running")
    log = rehearsal.gateway.access_log
    warmup = round(min(WARMUP_MAX_S, duration * WARMUP_SHARE), 3)
    shape = ("-t", f"{deadline:g}s", "--warmup", f"{warmup:g}s")
    core = rehearsal.client_core
    timeline = _Timeline()
    target = rehearsal.target()
    timeline.mark("capacity run", closed_loop=CAPACITY_CONCURRENCY, duration_s=duration)
    first = LoadRun(
        target, 0, duration, CAPACITY_CONCURRENCY, connections=CAPACITY_CONNECTIONS,
        extra=shape, core=core,
    )  # fmt: skip
    await first.start()
    try:
        measured = load_summary(await first.result())
    except BaseException:  # Ctrl-C: the child stops too
        first.interrupt()
        raise
    ok = int(measured["status_codes"].get("OK", 0))
    capacity = ok / float(measured["duration_s"] or 1.0)
    if not ok:
        raise RuntimeError(
            f"the fleet served no call in the capacity run: {list(measured['errors'])[:3]}"
        )
    asked = level * capacity
    since = _log_size(log)
    throttled = {b.pod: b.quota.throttled_s() for b in rehearsal.backends if b.quota}
    timeline.mark("capacity", ok_rps=round(capacity, 1), asking_rps=round(asked, 1))
    run = LoadRun(
        target, asked, duration, OPEN_CONCURRENCY, connections=OPEN_CONNECTIONS, extra=shape,
        core=core,
    )  # fmt: skip
    await run.start()
    try:
        await _wait_for_load_calls(run, log, since, TRAFFIC_START_TIMEOUT_S)
        sending = timeline.mark("overload sending", rps=round(asked, 1), deadline_s=deadline)
        report = await run.result()
    except BaseException:
        run.interrupt()
        raise
    timeline.mark("overload done")
    traffic = load_summary(report)
    asked_for = Asked(level, deadline, min_goodput, capacity, measured)
    facts = await _overload_facts(rehearsal, asked_for, traffic, log, since, throttled)
    # The report's clock starts when its measured run did: after the warm-up.
    return ScenarioResult("overload", traffic, timeline.events, report, sending + warmup, facts)


@dataclass(frozen=True)
class Asked:
    """What the overload asked of the fleet: ``level`` x the ``capacity`` its closed loop
    measured (``measured``: that run's summary), with a ``deadline``, to pass at
    ``min_goodput``."""

    level: float
    deadline: float
    min_goodput: float
    capacity: float
    measured: dict[str, Any]


async def _overload_facts(
    rehearsal: Rehearsal,
    asked: Asked,
    traffic: dict[str, Any],
    log: Path,
    since: int,
    throttled: dict[str, float],
) -> OverloadFacts:
    """What the open loop did, each pod's part from the gateway's access log (read once it
    has every call: Envoy flushes it every 100 ms)."""
    seconds = float(traffic["duration_s"] or 1.0)
    codes = findings.overload_codes(traffic["status_codes"])
    pods = {b.upstream: b.pod for b in rehearsal.backends + rehearsal.canary}
    await asyncio.sleep(0.3)
    logged = access_log.calls(log, since, IDEMPOTENT_METHODS[0])
    by_pod = access_log.codes_by_pod(logged, pods)
    loads = {}
    for b in rehearsal.backends:
        seen = by_pod.get(b.pod, Counter())
        refused = sum(seen[c] for c in findings.REFUSED_CODES)
        held_back = b.quota.throttled_s() - throttled.get(b.pod, 0.0) if b.quota else 0.0
        loads[b.pod] = PodLoad(
            cores=b.cores,
            ok=seen["OK"],
            refused=refused,
            other=sum(seen.values()) - seen["OK"] - refused,
            throttled_s=round(held_back, 2),
        )
    rate = asked.level * asked.capacity
    sent, goodput = traffic["count"] / seconds, codes["OK"] / seconds
    return OverloadFacts(
        level=asked.level,
        deadline_s=asked.deadline,
        capacity=round(asked.capacity, 1),
        # every pod, one that answered nothing in the closed loop too (its calls timed out)
        capacity_by_pod={**{b.pod: 0 for b in rehearsal.backends}, **asked.measured["by_pod"]},
        capacity_codes=asked.measured["status_codes"],
        asked_rps=round(rate, 1),
        sent_rps=round(sent, 1),
        kept_up=sent >= findings.KEPT_UP * rate,
        goodput=round(goodput, 1),
        goodput_x=round(goodput / asked.capacity, 3),
        min_goodput=asked.min_goodput,
        codes=codes,
        refused=sum(codes[c] for c in findings.REFUSED_CODES),
        past_deadline=codes["DEADLINE_EXCEEDED"],
        pods=loads,
        gateway_retried=sum(1 for c in logged if c.retried),
        gateway_answered=dict(Counter(c.flags for c in logged if c.gateway_answered).most_common()),
        client_core=rehearsal.client_core,
        pod_cores=next((b.cpus for b in rehearsal.backends if b.cpus), ""),
    )


# What ``greeter rehearse --scenario NAME`` runs, with its calls per second.
RUNNERS: dict[ScenarioName, Callable[..., Awaitable[ScenarioResult]]] = {
    "drain": rolling_drain,
    "outage": cluster_outage,
    "failover": cluster_failover,
    "partition": cluster_partition,
    "overload": overload,
}
