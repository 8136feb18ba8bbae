"""What one load test does: a frozen, validated description built once by the
CLI (or by a caller of :func:`greeter.load.run_load`) and passed everywhere."""

from __future__ import annotations

import datetime
import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

from greeter.client import CALLS, Target
from greeter.client import call_name as call_name  # where it was first
from greeter.durations import parse_duration
from greeter.load.timeline import DEFAULT_INTERVAL, MIN_INTERVAL

SCHEDULES = ("const", "step", "line")
ENGINES = ("auto", "grpc", "h2")  # auto: h2 where it applies (unary, one address), else grpc
# grpc: gRPC over HTTP/2 (the engines above); grpc-web(-text): the grpc-web engine.
PROTOCOLS = ("grpc", "grpc-web", "grpc-web-text")
DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
LATENCY_STATS = ("min", "mean", "max")


class ConfigError(ValueError):
    """The load test cannot run as described (a bad argument)."""


MAX_START_AHEAD = 24 * 3600.0  # --start-at further ahead than this is taken for a typo


def parse_start_at(text: str, now: float) -> float:
    """``--start-at``: an RFC 3339 time (``2026-05-01T12:00:00Z``, ``...+02:00``) or
    ``+30s`` (that long after ``now``) → Unix seconds. A time in the past is accepted (the
    run starts late and says by how much); one more than a day ahead is not."""
    raw = text.strip()
    if raw.startswith("+"):
        seconds = parse_duration(raw[1:])
        if seconds < 0:
            raise ValueError(f"{text!r}: a delay after + must not be negative")
        at = now + seconds
    else:
        try:
            moment = datetime.datetime.fromisoformat(raw.upper())
        except ValueError:
            raise ValueError(
                f"{text!r} is not an RFC 3339 time (2026-05-01T12:00:00Z) or +DURATION (+30s)"
            ) from None
        if moment.tzinfo is None:
            raise ValueError(f"{text!r} has no UTC offset: end it with Z or +hh:mm")
        at = moment.timestamp()
    if at - now > MAX_START_AHEAD:
        raise ValueError(f"{text!r} is {(at - now) / 3600:.1f} h ahead (at most 24 h)")
    return at


def percentile_name(percent: float) -> str:
    """50 → ``p50``, 99.9 → ``p99.9``."""
    return f"p{percent:g}"


# What a latency bound may judge: the whole call, or one side of the latency split
# (``server``: the replies' server-timing; ``outside``: the rest, greeter.load.recorder).
LATENCY_SCOPES = ("total", "server", "outside")


@dataclass(frozen=True)
class Threshold:
    """A latency bound: ``stat`` (``p99``, ``mean``, ``max``...) of ``scope`` (``total``,
    ``server`` or ``outside``) must be ≤ ``limit_ms``."""

    stat: str
    limit_ms: float
    scope: str = "total"

    @property
    def name(self) -> str:
        """As written: ``p99``, ``outside.p99``."""
        return self.stat if self.scope == "total" else f"{self.scope}.{self.stat}"


def parse_threshold(text: str) -> Threshold:
    """``p99=250ms``, ``p99<=250``, ``mean=20ms``, ``outside.p99=20ms``, ``server.p50=2``
    → a Threshold (plain numbers are ms)."""
    stat, sep, limit = text.replace("<=", "=").partition("=")
    stat = stat.strip().lower()
    if not sep:
        raise ValueError(f"{text!r} must look like p99=250ms or outside.p99=20ms")
    scope, dot, rest = stat.partition(".")
    if dot and scope in LATENCY_SCOPES:
        stat = rest
    else:
        scope = "total"
    if stat not in LATENCY_STATS:
        if not re.fullmatch(r"p\d+(\.\d+)?", stat) or not 0 < float(stat[1:]) <= 100:
            raise ValueError(
                f"{stat!r} is not p<percent>, min, mean or max "
                f"(optionally after {', '.join(s + '.' for s in LATENCY_SCOPES)})"
            )
        stat = percentile_name(float(stat[1:]))
    raw = limit.strip().lower()
    seconds = parse_duration(raw) if raw and not raw[-1].isdigit() else float(raw or "nan") / 1e3
    if not seconds > 0:
        raise ValueError(f"{text!r} needs a positive latency")
    return Threshold(stat, seconds * 1e3, scope)


SPLIT_NAME = re.compile(r"[^\s=,]+")


def parse_split(text: str) -> tuple[tuple[str, float], ...]:
    """``cluster-a=80,cluster-b=20`` → ((cluster-a, 80.0), (cluster-b, 20.0)): cluster
    names (as ``x-greeter-cluster`` gives them) with percentages that add up to 100."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise ValueError(f"{text!r} must look like cluster-a=80,cluster-b=20")
    shares: list[tuple[str, float]] = []
    for part in parts:
        name, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep or not SPLIT_NAME.fullmatch(name):
            raise ValueError(f"{part!r} must look like NAME=PERCENT, e.g. cluster-a=80")
        try:
            share = float(value.removesuffix("%"))
        except ValueError:
            raise ValueError(f"{part!r}: {value!r} is not a percentage") from None
        shares.append((name, share))
    split = tuple(shares)
    problem = split_problem(split)
    if problem:
        raise ValueError(problem)
    return split


def split_problem(split: tuple[tuple[str, float], ...]) -> str | None:
    """What is wrong with an expected split, or None."""
    names = [name for name, _ in split]
    if not split:
        return "names no cluster"
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        return f"names cluster {duplicate!r} twice"
    for name, share in split:
        if not math.isfinite(share) or not 0 <= share <= 100:
            return f"{name}={share:g} is not a percentage between 0 and 100"
    total = sum(share for _, share in split)
    if abs(total - 100) > 1e-6:
        return f"shares add up to {total:g}, not 100"
    return None


def parse_confidence(text: str) -> float:
    """``0.99`` or ``99%`` → 0.99."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a confidence like 0.99 or 99%") from None
    return value


def default_procs() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class LoadConfig:
    """Everything ``greeter load`` can be told. Durations are in seconds, rates per second.

    Neither ``total`` nor ``duration``: 200 calls, as ghz does."""

    target: Target
    call: str = "SayHello"
    request: dict[str, Any] = field(default_factory=dict)  # the request message, as JSON fields
    concurrency: int = 50
    total: int | None = None
    duration: float | None = None
    rps: float | None = None  # open loop when set (or when a schedule is set)
    schedule: str = "const"
    load_start: float | None = None
    load_end: float | None = None
    load_step: float = 0.0
    load_step_duration: float = 0.0
    connections: int = 1
    procs: int = 1
    warmup: float = 0.0
    timeout: float = 20.0
    connect_timeout: float = 10.0
    stream_count: int | None = None  # replies asked of a server stream / messages sent in bidi
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    max_error_rate: float | None = None  # a fraction 0..1
    thresholds: tuple[Threshold, ...] = ()
    # The split gate: expected percent per cluster, or one cluster for every call.
    expect_split: tuple[tuple[str, float], ...] | None = None
    expect_cluster: str | None = None
    split_confidence: float = 0.99
    progress: bool = False
    uvloop: bool = False
    engine: str = "auto"
    timeline_interval: float = DEFAULT_INTERVAL  # seconds per timeline bucket
    protocol: str = "grpc"
    start_at: float | None = None  # Unix seconds: when the load phase starts (--start-at)
    trace_sample: float = 0.0  # share of calls that start a trace (greeter.load.tracing)

    def __post_init__(self) -> None:
        for name, problem in self._problems():
            raise ConfigError(f"{name}: {problem}")

    def _problems(self) -> list[tuple[str, str]]:
        bad: list[tuple[str, str]] = []
        if self.call not in CALLS:
            bad.append(("--call", f"{self.call!r} is not one of {', '.join(CALLS)}"))
        if self.concurrency < 1:
            bad.append(("-c/--concurrency", "must be at least 1"))
        if self.total is not None and self.total < 1:
            bad.append(("-n/--total", "must be at least 1"))
        if self.duration is not None and not self.duration > 0:
            bad.append(("-z/--duration", "must be positive"))
        if self.rps is not None and not self.rps > 0:
            bad.append(("--rps", "must be positive"))
        if self.schedule not in SCHEDULES:
            bad.append(("--load-schedule", f"{self.schedule!r} is not one of {SCHEDULES}"))
        if self.schedule != "const":
            if self.load_start is None or self.load_start <= 0:
                bad.append(("--load-start", f"a {self.schedule} schedule needs a positive start"))
            if self.load_end is not None and self.load_end <= 0:
                bad.append(("--load-end", "must be positive"))
            if self.schedule == "step" and (self.load_step == 0 or self.load_step_duration <= 0):
                bad.append(
                    (
                        "--load-step",
                        "a step schedule needs --load-step and a positive --load-step-duration",
                    )
                )
            if self.schedule == "line" and self.load_step == 0:
                bad.append(("--load-step", "a line schedule needs a slope (rps per second)"))
            if self.total is None and self.duration is None and self.load_end is None:
                bad.append(("--load-end", "a schedule needs -n, -z or --load-end to finish"))
        if self.connections < 1:
            bad.append(("--connections", "must be at least 1"))
        if self.connections > self.concurrency:
            bad.append(("--connections", "cannot exceed -c (each connection needs a worker)"))
        if self.procs < 1:
            bad.append(("--procs", "must be at least 1"))
        if self.warmup < 0:
            bad.append(("--warmup", "must not be negative"))
        if not self.timeout > 0:
            bad.append(("-t/--timeout", "must be positive"))
        if not self.connect_timeout > 0:
            bad.append(("--connect-timeout", "must be positive"))
        if self.stream_count is not None and not 0 <= self.stream_count <= 100_000:
            bad.append(("--stream-count", "must be between 0 and 100000"))
        if self.call == "SayHelloBidiStream" and self.stream_count == 0:
            bad.append(("--stream-count", "a bidi call sends at least one message"))
        for p in self.percentiles:
            if not 0 < p <= 100:
                bad.append(("--percentiles", f"{p:g} is not between 0 and 100"))
        if self.protocol not in PROTOCOLS:
            bad.append(("--protocol", f"{self.protocol!r} is not one of {', '.join(PROTOCOLS)}"))
        elif self.protocol != "grpc":
            from greeter.load.webengine import applies as web_applies

            why = web_applies(self.target, self.call)
            if why:
                bad.append(("--protocol", why))
            if self.engine != "auto":
                bad.append(
                    ("--engine", "chooses a gRPC client: leave it out with --protocol grpc-web")
                )
        if self.engine not in ENGINES:
            bad.append(("--engine", f"{self.engine!r} is not one of {', '.join(ENGINES)}"))
        elif self.engine == "h2":
            from greeter.load.h2engine import applies

            why = applies(self.target, self.call, b"")
            if why:
                bad.append(("--engine", f"h2 cannot run this load: {why}"))
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            bad.append(("--max-error-rate", "must be a fraction between 0 and 1 (or a percent)"))
        bad.extend(self._split_problems())
        bad.extend(self._timeline_problems())
        if self.start_at is not None and not math.isfinite(self.start_at):
            bad.append(("--start-at", "must be a time"))
        if not 0 <= self.trace_sample <= 1:
            bad.append(("--trace-sample", "must be a fraction between 0 and 1"))
        return bad

    def _split_problems(self) -> list[tuple[str, str]]:
        bad: list[tuple[str, str]] = []
        if self.expect_split is not None:
            problem = split_problem(self.expect_split)
            if problem:
                bad.append(("--expect-split", problem))
        if self.expect_cluster is not None and not SPLIT_NAME.fullmatch(self.expect_cluster):
            bad.append(("--expect-cluster", f"{self.expect_cluster!r} is not a cluster name"))
        if self.expect_split is not None and self.expect_cluster is not None:
            bad.append(
                (
                    "--expect-cluster",
                    "cannot be combined with --expect-split "
                    f"(--expect-split {self.expect_cluster}=100 is the statistical form)",
                )
            )
        if not (isinstance(self.split_confidence, float | int) and 0 < self.split_confidence < 1):
            bad.append(("--split-confidence", "must be between 0 and 1 (exclusive), e.g. 0.99"))
        return bad

    def _timeline_problems(self) -> list[tuple[str, str]]:
        interval = self.timeline_interval
        if not (math.isfinite(interval) and interval >= MIN_INTERVAL):
            return [("--timeline-interval", f"must be at least {MIN_INTERVAL * 1000:g}ms")]
        return []

    @property
    def open_loop(self) -> bool:
        return self.rps is not None or self.schedule != "const"

    @property
    def effective_total(self) -> int | None:
        if self.total is None and self.duration is None and self.load_end is None:
            return 200
        return self.total

    def rate_at(self, elapsed: float) -> float:
        """The asked request rate ``elapsed`` seconds into the run (whole run, all procs)."""
        if self.schedule == "const":
            return self.rps or 0.0
        start = self.load_start or 0.0
        if self.schedule == "step":
            rate = start + self.load_step * math.floor(elapsed / self.load_step_duration)
        else:
            rate = start + self.load_step * elapsed
        if self.load_end is not None:
            rate = min(rate, self.load_end) if self.load_step > 0 else max(rate, self.load_end)
        return max(rate, 0.001)

    def schedule_end(self) -> float | None:
        """When a schedule reaches ``load_end``, the run ends (as ghz's does), unless -n/-z."""
        if self.schedule == "const" or self.load_end is None or self.duration or self.total:
            return None
        start = self.load_start or 0.0
        steps = (self.load_end - start) / self.load_step
        if self.schedule == "step":
            return (math.floor(steps) + 1) * self.load_step_duration
        return steps

    def share(self, index: int, procs: int) -> LoadConfig:
        """Process ``index`` of ``procs``'s part: concurrency, connections, total and rate
        split so that the parts add up exactly to the whole."""

        def part(whole: int) -> int:
            return whole // procs + (1 if index < whole % procs else 0)

        scale = 1 / procs
        return replace(
            self,
            concurrency=part(self.concurrency),
            connections=max(1, min(part(self.connections), part(self.concurrency))),
            total=None if self.total is None else part(self.total),
            rps=None if self.rps is None else self.rps * scale,
            load_start=None if self.load_start is None else self.load_start * scale,
            load_end=None if self.load_end is None else self.load_end * scale,
            load_step=self.load_step * scale,
            procs=1,
        )
