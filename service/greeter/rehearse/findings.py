"""What a scenario found, typed: the scenario names, the facts each step yields, the verdict,
and the one place (:func:`facts_json`) where the facts become the report's JSON.

A scenario's JSON summary (``greeter rehearse --scenario NAME --json``) is the traffic's own
summary (a ``greeter load``-like report: ``count``, ``failed``, ``status_codes``, ``by_cluster``,
``by_pod``...), then the scenario's facts in the order their dataclasses declare them, then
its ``events``. Times are seconds since the traffic started.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal, get_args

from greeter.rehearse.traffic import SLOW_CALL_S, TrafficReport

# The scenarios, by the one name the command line, the JSON (``scenario``) and the report use.
ScenarioName = Literal["drain", "outage", "failover", "partition", "overload"]
SCENARIOS: tuple[ScenarioName, ...] = get_args(ScenarioName)

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
# A partition (packets dropped, no reset) loses no unary call with the shipped settings: the
# gateway gives up on a silent pod within its per-try (Envoy) or read/connect (nginx)
# timeout and sends the call to another one. Its calls must also not hang: none slower than
# the gateway's bound (``Rehearsal.partition_bound_s``).
PARTITION_MAX_FAILED = 0
# ...except with nginx, which cannot replay a call whose request body it was still streaming
# to the backend when that backend's read timeout fired (a gRPC body is not buffered): a call
# sent in the instant of the cut may fail with 504 (measured: 1 of 3,024 in one run of five).
# The outage's allowance, as the cause is the same: calls already handed to the lost backend.
NGINX_PARTITION_MAX_FAILED = OUTAGE_MAX_FAILED
# Failed calls each scenario may have by default (``--max-failed`` overrides).
MAX_FAILED: dict[ScenarioName, int] = {
    "drain": 0,
    "outage": OUTAGE_MAX_FAILED,
    "failover": FAILOVER_MAX_FAILED,
    "partition": PARTITION_MAX_FAILED,
    # Past capacity calls are refused on purpose: the overload is judged by its goodput
    # (``passed``), not by failed calls.
    "overload": 0,
}
# The overload: the rate asked is this many times the fleet's capacity, each call has this
# deadline, and the run passes when the goodput is at least this share of the capacity.
OVERLOAD_LEVEL = 2.0
OVERLOAD_DEADLINE_S = 2.0
OVERLOAD_MIN_GOODPUT = 0.9
# The client kept up when it sent at least this share of the rate asked (bench.overload's too).
KEPT_UP = 0.95
# How the overload counts the calls: refused by a pod past capacity (admission control's
# RESOURCE_EXHAUSTED, grpc-core's CANCELLED after its wait), and the rest.
REFUSED_CODES = ("RESOURCE_EXHAUSTED", "CANCELLED")
OVERLOAD_CODES = ("OK", *REFUSED_CODES, "DEADLINE_EXCEEDED", "UNAVAILABLE")
# Scenarios in which a failed call sent after the victims were gone fails the run whatever
# ``--max-failed`` says: a standby exists to take those.
NO_FAILURE_AFTER_DEAD: frozenset[ScenarioName] = frozenset({"failover"})


def allowed_failures(
    scenario: ScenarioName, max_failed: int | None = None, gateway: str = ""
) -> int:
    """Failed calls ``scenario`` may have through ``gateway``: ``max_failed`` if given."""
    if max_failed is not None:
        return max_failed
    if scenario == "partition" and gateway == "nginx":
        return NGINX_PARTITION_MAX_FAILED
    return MAX_FAILED[scenario]


def failures_after_dead(summary: dict[str, Any]) -> int:
    """Failed calls sent after the victims were gone, in a scenario that allows none."""
    if summary["scenario"] not in NO_FAILURE_AFTER_DEAD:
        return 0
    return int(summary.get("failures_sent_after_dead") or 0)


def too_slow(summary: dict[str, Any]) -> bool:
    """A partition whose slowest call took longer than its bound (it hung)."""
    bound = summary.get("slowest_bound_ms")
    return bound is not None and float(summary["latency_ms"]["max"]) > float(bound)


def passed(summary: dict[str, Any], allowed: int) -> bool:
    """The verdict: no more failed calls than ``allowed``, in a failover none sent once
    the active backends were gone (the standby must take those), in a partition none slower
    than its bound; in an overload, the goodput at least ``min_goodput`` x the capacity."""
    if "min_goodput" in summary:
        return float(summary["goodput_x"]) >= float(summary["min_goodput"])
    return (
        not failures_after_dead(summary)
        and not too_slow(summary)
        and int(summary["failed"]) <= allowed
    )


# -- the facts each step yields -----------------------------------------------------


@dataclass
class DrainFacts:
    """The rolling drain: when ``greeter load`` was seen sending, and whether its run covered
    every restart (sending before the first SIGTERM, still running after the last)."""

    load_sending_at_s: float
    covered_all_restarts: bool


@dataclass
class Killed:
    """What a SIGKILL did: ``kill_at_s`` when it went out, ``dead_at_s`` when the victims had
    exited (reaped), ``survivors`` if SIGKILL did not end them. A failed call sent within
    ``dead_grace_s`` after that is not counted as sent after they were gone (the rehearsal's
    ``dead_grace_s``: a keep-alive gateway learns of the death a moment later)."""

    kill_at_s: float
    dead_at_s: float
    survivors: list[str]
    # Which calls failed is decided by when they were sent: the ones already sent to a killed
    # backend. When a failed call's answer arrived is only the client's pace.
    last_failure_sent_after_kill_s: float | None
    dead_grace_s: float
    failures_sent_after_dead: int
    ok_sent_after_dead: int


@dataclass
class Returned:
    """When the victims were started again, when all were SERVING, and when one of them
    served a call again (they take calls as soon as they listen, before the rehearsal has
    seen them SERVING)."""

    reviving_at_s: float
    revived_at_s: float
    returned_at_s: float | None


@dataclass
class Phase:
    """The calls ``calls`` ("sent", or "ended") in ``(from_s, to_s]``: how many, how many
    failed, which clusters served the others."""

    calls: str
    from_s: float
    to_s: float
    count: int
    failed: int
    by_cluster: dict[str, int]


@dataclass
class OutageFacts:
    killed: Killed
    cluster: str
    returned: Returned


@dataclass
class FailoverFacts:
    killed: Killed
    active: list[str]
    standby: list[str]
    returned: Returned
    return_bound_s: float
    # before_kill, active_down, returned
    phases: dict[str, Phase]
    standby_share_before_kill: float | None
    standby_share_after_kill: float | None
    active_share_after_return: float | None
    # What was done to the active clusters: "kill" (SIGKILL) or "cut" (a partition).
    fault: str = "kill"


@dataclass
class GatewayCounts:
    """The gateway's own count of the probe's calls (its access log), beside the probe's:
    calls it logged, how many it tried on more than one pod, the successful ones by the pod
    that served them; ``agrees``: the same totals and the same per-pod split as the probe."""

    calls: int
    retried: int
    by_pod: dict[str, int]
    agrees: bool


@dataclass
class PartitionFacts:
    """A cluster cut off (packets dropped both ways) at ``cut_at_s`` for ``partition_for_s``:
    the slow calls, the last call sent that still went to the cut cluster first (it was slow
    or failed), when it served calls again after the heal, and the gateway's own counts."""

    cluster: str
    cut_at_s: float
    healed_at_s: float
    partition_for_s: float
    failed_by_code: dict[str, int]
    # The last call sent during the cut that the cut cluster held (slower than ``held_s``,
    # the gateway's give-up time for a quick call, or failed): after it, the gateway sent the
    # cut cluster nothing more.
    held_s: float
    last_held_sent_s: float | None
    stopped_after_s: float | None
    returned: Returned
    slowest_bound_ms: float
    gateway_counts: GatewayCounts | None


@dataclass
class PodLoad:
    """One pod in the overload, as the gateway's access log saw the run (warm-up included):
    the calls it answered OK, refused (``REFUSED_CODES``) and otherwise failed; the cores its
    quota held it to and how long the quota held it back."""

    cores: float | None
    ok: int
    refused: int
    other: int
    throttled_s: float


@dataclass
class OverloadFacts:
    """The fleet past capacity: ``capacity`` (OK calls/s through the gateway, closed loop),
    then an open loop asking ``level`` x that with a ``deadline_s``; its goodput and how it
    compares with ``min_goodput``; the calls by code (``codes``: every one of
    ``OVERLOAD_CODES``, and ``other``, adding up to ``count``); whether the client kept up."""

    level: float
    deadline_s: float
    capacity: float
    capacity_by_pod: dict[str, int]
    capacity_codes: dict[str, int]
    asked_rps: float
    sent_rps: float
    kept_up: bool
    goodput: float
    goodput_x: float
    min_goodput: float
    codes: dict[str, int]
    refused: int
    past_deadline: int
    pods: dict[str, PodLoad]
    gateway_retried: int
    # Calls Envoy answered itself (a circuit breaker's overflow, no healthy pod).
    gateway_answered: dict[str, int]
    client_core: int | None
    pod_cores: str


def overload_codes(status_codes: dict[str, int]) -> dict[str, int]:
    """Every code the overload reports (0 when none), then ``other``: they add up."""
    codes = {code: int(status_codes.get(code, 0)) for code in OVERLOAD_CODES}
    codes["other"] = sum(n for code, n in status_codes.items() if code not in OVERLOAD_CODES)
    return codes


Facts = (
    DrainFacts
    | Killed
    | Returned
    | OutageFacts
    | FailoverFacts
    | PartitionFacts
    | GatewayCounts
    | OverloadFacts
)


def facts_json(facts: Facts | None) -> dict[str, Any]:
    """The facts as the summary's JSON: a fact that is itself facts (``killed``,
    ``returned``) is spread in place, in declaration order; other dataclasses become
    objects."""
    out: dict[str, Any] = {}
    if facts is None:
        return out
    for f in dataclasses.fields(facts):
        value = getattr(facts, f.name)
        if isinstance(value, Killed | Returned):
            out.update(facts_json(value))
        else:
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# -- the verdict step: facts from the probe's records ----------------------------------


def killed(
    report: TrafficReport,
    kill_s: float,
    dead_s: float,
    survivors: list[str],
    grace_s: float = 0.0,
) -> Killed:
    """What the SIGKILL at ``kill_s`` did, the victims gone at ``dead_s``."""
    failed = report.failures
    return Killed(
        kill_at_s=round(kill_s, 3),
        dead_at_s=round(dead_s, 3),
        survivors=survivors,
        last_failure_sent_after_kill_s=(
            round(max(o.sent for o in failed) - kill_s, 3) if failed else None
        ),
        dead_grace_s=grace_s,
        failures_sent_after_dead=len(report.failures_sent_after(dead_s + grace_s)),
        ok_sent_after_dead=sum(1 for o in report.outcomes if o.code == "OK" and o.sent > dead_s),
    )


def returned(
    report: TrafficReport, clusters: Collection[str], reviving_s: float, revived_s: float
) -> Returned:
    """When the killed ``clusters`` were started again and were SERVING, and when one of them
    served a call again."""
    back = [
        o.sent
        for o in report.outcomes
        if o.sent > reviving_s and o.code == "OK" and o.cluster in clusters
    ]
    return Returned(
        reviving_at_s=round(reviving_s, 3),
        revived_at_s=round(revived_s, 3),
        returned_at_s=round(min(back), 3) if back else None,
    )


def partition(
    report: TrafficReport,
    cluster: str,
    times: tuple[float, float],
    partition_for: float,
    bound_s: float,
    counts: GatewayCounts | None,
    held_s: float = SLOW_CALL_S,
) -> PartitionFacts:
    """What the cut of ``cluster`` from ``times[0]`` to ``times[1]`` (seconds since the
    traffic started) did to the probe's calls; a call slower than ``held_s`` was held by it."""
    cut_s, heal_s = times
    held = [
        o.sent
        for o in report.outcomes
        if cut_s <= o.sent < heal_s and (o.code != "OK" or o.at - o.sent >= held_s)
    ]
    last = max(held) if held else None
    return PartitionFacts(
        cluster=cluster,
        cut_at_s=round(cut_s, 3),
        healed_at_s=round(heal_s, 3),
        partition_for_s=partition_for,
        failed_by_code=dict(Counter(o.code for o in report.failures)),
        held_s=held_s,
        last_held_sent_s=None if last is None else round(last, 3),
        stopped_after_s=None if last is None else round(last - cut_s, 3),
        returned=returned(report, [cluster], heal_s, heal_s),
        slowest_bound_ms=round(bound_s * 1000, 1),
        gateway_counts=counts,
    )


def phase(report: TrafficReport, since: float, until: float, by: str = "sent") -> Phase:
    """The calls ``by`` ("sent", or "ended": answered or failed) in ``(since, until]``."""
    calls = [o for o in report.outcomes if since < (o.sent if by == "sent" else o.at) <= until]
    return Phase(
        calls=by,
        from_s=round(max(since, 0.0), 3),
        to_s=round(min(until, report.duration), 3),
        count=len(calls),
        failed=sum(1 for o in calls if o.code != "OK"),
        by_cluster=dict(Counter(o.cluster for o in calls if o.code == "OK")),
    )


def _share(p: Phase, clusters: Collection[str]) -> float | None:
    ok = sum(p.by_cluster.values())
    if not ok:
        return None
    return round(sum(n for name, n in p.by_cluster.items() if name in clusters) / ok, 4)


def failover(
    report: TrafficReport,
    kill: Killed,
    active: Collection[str],
    standby: Collection[str],
    times: tuple[float, float, float, float],
    bound_s: float,
) -> FailoverFacts:
    """What the failover did to the split (``kill``: what the SIGKILL did). ``times`` since
    the traffic started: the SIGKILL, the active backends gone, their restart begun, all of
    them SERVING again."""
    kill_s, dead_s, reviving_s, revived_s = times
    phases = {
        # Ended before the SIGKILL: picked while every active backend was up. (A call sent
        # just before it may reach nginx after it, and rightly go to the standby.)
        "before_kill": phase(report, float("-inf"), kill_s, by="ended"),
        "active_down": phase(report, dead_s, reviving_s),
        "returned": phase(report, revived_s + bound_s, float("inf")),
    }
    return FailoverFacts(
        killed=kill,
        active=list(active),
        standby=list(standby),
        returned=returned(report, active, reviving_s, revived_s),
        return_bound_s=bound_s,
        phases=phases,
        standby_share_before_kill=_share(phases["before_kill"], standby),
        standby_share_after_kill=_share(phases["active_down"], standby),
        active_share_after_return=_share(phases["returned"], active),
    )
