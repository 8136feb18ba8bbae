"""Steady-rate SayHello traffic with a timeline, for the drain and outage scenarios.

``greeter load`` reports totals; the scenarios also need *when* each call was sent and when it
ended (which calls an outage hurt), so this probe keeps one record per call. It uses the same
client channel as ``greeter call`` and ``greeter load`` (no client-side retries), so nothing
hides a lost call. :func:`load_report` turns its records into a ``greeter load`` report (totals,
tables, a timeline), so a scenario's HTML page is the load report's whichever traffic ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from greeter.client import Target, identity_of, open_channel, server_timing_of
from greeter.load.config import LoadConfig
from greeter.load.outcome import Outcome as LoadOutcome
from greeter.load.recorder import NO_SERVER_TIME, UNKNOWN, Recorder, record
from greeter.load.report import build_report
from greeter.timing import server_us

# The scenarios' timeline buckets: fine enough to show a few seconds' outage or a backend's
# drain, coarse enough for each pod to have calls in every bucket at the scenarios' rates.
TIMELINE_INTERVAL_S = 0.5
# A call slower than this counts as slow (hung on a silent pod, then retried): `greeter load`'s
# "slow calls" line (greeter.load.report) uses the same second.
SLOW_CALL_S = 1.0


@dataclass(frozen=True)
class Outcome:
    at: float  # seconds since the traffic started, when the call ended (answer or error)
    code: str
    # When the call was handed to gRPC (same clock). What a call met depends on when it left,
    # not on when its answer was read: a busy event loop or a slow error path only delays ``at``.
    sent: float = 0.0
    cluster: str = ""
    pod: str = ""
    details: str = ""
    server_us: int = NO_SERVER_TIME  # the reply's server-timing (greeter.timing), -1: none


def _server_us(trailers: Any) -> int:
    found = server_timing_of(trailers)
    us = None if found is None else server_us(found)
    return NO_SERVER_TIME if us is None else us


@dataclass
class TrafficReport:
    outcomes: list[Outcome] = field(default_factory=list)
    duration: float = 0.0

    @property
    def count(self) -> int:
        return len(self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code != "OK"]

    @property
    def status_codes(self) -> dict[str, int]:
        return dict(Counter(o.code for o in self.outcomes))

    @property
    def by_cluster(self) -> dict[str, int]:
        return dict(Counter(o.cluster for o in self.outcomes if o.code == "OK"))

    @property
    def by_pod(self) -> dict[str, int]:
        return dict(Counter(o.pod for o in self.outcomes if o.code == "OK"))

    def failures_sent_after(self, t: float) -> list[Outcome]:
        """Failed calls handed to gRPC after ``t`` (seconds since the traffic started)."""
        return [o for o in self.failures if o.sent > t]

    def latency_ms(self) -> dict[str, float]:
        """Each call's time from sent to ended: median, 99th percentile, slowest (ms)."""
        times = sorted((o.at - o.sent) * 1000 for o in self.outcomes)
        if not times:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0}

        def pick(q: float) -> float:
            return round(times[min(len(times) - 1, int(q * len(times)))], 1)

        return {"p50": pick(0.5), "p99": pick(0.99), "max": round(times[-1], 1)}

    def slow_calls(self) -> dict[str, Any]:
        """Calls slower than SLOW_CALL_S: how many, the slowest, and when it was sent."""
        slow = [o for o in self.outcomes if o.at - o.sent > SLOW_CALL_S]
        worst = max(self.outcomes, key=lambda o: o.at - o.sent, default=None)
        return {
            "over_s": SLOW_CALL_S,
            "count": len(slow),
            "slowest_ms": round((worst.at - worst.sent) * 1000, 1) if worst else 0.0,
            "slowest_sent_s": round(worst.sent, 3) if worst else None,
        }

    def failure_window(self) -> float:
        """Seconds from the first failed call to the last (0 with one or none)."""
        failed = self.failures
        return failed[-1].at - failed[0].at if failed else 0.0

    def summary(self) -> dict[str, Any]:
        failed = self.failures
        return {
            "count": self.count,
            "duration_s": round(self.duration, 2),
            "rps": round(self.count / self.duration, 1) if self.duration else 0.0,
            "failed": len(failed),
            "status_codes": self.status_codes,
            "by_cluster": self.by_cluster,
            "by_pod": self.by_pod,
            "latency_ms": self.latency_ms(),
            "slow_calls": self.slow_calls(),
            "first_failure_s": round(failed[0].at, 3) if failed else None,
            "failure_window_s": round(self.failure_window(), 3),
            "last_failure_sent_s": round(max(o.sent for o in failed), 3) if failed else None,
            "failure_samples": [
                {
                    "sent_s": round(o.sent, 3),
                    "at_s": round(o.at, 3),
                    "code": o.code,
                    "details": o.details[:200],
                }
                for o in failed[:10]
            ],
        }


class Traffic:
    """SayHello at ``rps`` over ``channels`` connections, at most ``concurrency`` in flight."""

    def __init__(
        self,
        target: Target,
        rps: float,
        concurrency: int = 16,
        channels: int = 2,
        timeout: float = 10.0,
    ) -> None:
        if rps <= 0 or concurrency < 1 or channels < 1:
            raise ValueError("rps, concurrency and channels must be positive")
        self.target = target
        self.rps = rps
        self.concurrency = concurrency
        self.channels = channels
        self.timeout = timeout
        self.report = TrafficReport()
        self._stop = asyncio.Event()
        # Set once the channels are connected and the first call is due; ``started`` is then
        # the perf_counter() every ``Outcome`` time counts from.
        self.running = asyncio.Event()
        self.started = 0.0
        self.started_at = datetime.datetime.now(datetime.UTC)  # the same moment, wall clock

    def stop(self) -> None:
        self._stop.set()

    async def _one(self, stub: Any, request: Any, gate: asyncio.Semaphore) -> None:
        md = self.target.metadata or None
        sent = time.perf_counter() - self.started
        try:
            call = stub.SayHello(request, timeout=self.timeout, metadata=md)
            await call
            trailers = await call.trailing_metadata()
            who = identity_of(await call.initial_metadata(), trailers)
            outcome = Outcome(
                time.perf_counter() - self.started,
                "OK",
                sent=sent,
                cluster=who.get("x-greeter-cluster", ""),
                pod=who.get("x-greeter-pod", ""),
                server_us=_server_us(trailers),
            )
        except grpc.aio.AioRpcError as exc:
            outcome = Outcome(
                time.perf_counter() - self.started,
                exc.code().name,
                sent=sent,
                details=exc.details() or "",
                server_us=_server_us(exc.trailing_metadata()),
            )
        finally:
            gate.release()
        self.report.outcomes.append(outcome)

    async def run(self, duration: float | None = None) -> TrafficReport:
        """Until :meth:`stop` (or ``duration`` seconds); in-flight calls are awaited."""
        from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

        channels = [open_channel(self.target) for _ in range(self.channels)]
        try:
            stubs = [helloworld_pb2_grpc.GreeterStub(ch) for ch in channels]
            await asyncio.gather(*(ch.channel_ready() for ch in channels))
            request = helloworld_pb2.HelloRequest(name="rehearsal")
            gate = asyncio.Semaphore(self.concurrency)
            tasks: set[asyncio.Task[None]] = set()
            self.started = time.perf_counter()
            self.started_at = datetime.datetime.now(datetime.UTC)
            self.running.set()
            interval = 1.0 / self.rps
            sent = 0
            while not self._stop.is_set():
                now = time.perf_counter() - self.started
                if duration is not None and now >= duration:
                    break
                due = sent * interval
                if due > now:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), due - now)
                    continue
                await gate.acquire()
                task = asyncio.create_task(self._one(stubs[sent % len(stubs)], request, gate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            if tasks:
                await asyncio.wait(tasks, timeout=self.timeout + 5)
            self.report.duration = time.perf_counter() - self.started
        finally:
            for ch in channels:
                await ch.close()
        self.report.outcomes.sort(key=lambda o: o.at)
        return self.report


def load_report(traffic: Traffic, interval: float = TIMELINE_INTERVAL_S) -> dict[str, Any]:
    """The probe's records as ``greeter load``'s JSON report: each call is recorded as the
    load's engine records it (latency from sent to ended, status, serving backend, error),
    in order of ending, and bucketed by when it ended, on the probe's clock (its first call
    at 0)."""
    config = LoadConfig(
        target=traffic.target,
        concurrency=traffic.concurrency,
        connections=traffic.channels,
        rps=traffic.rps,
        timeout=traffic.timeout,
        engine="grpc",  # the probe's client: grpc.aio, as ``--engine grpc``
        timeline_interval=interval,
    )
    rec = Recorder()
    rec.track(0.0, interval)
    for o in traffic.report.outcomes:  # sorted by ``at``
        cluster, pod = o.cluster or UNKNOWN, o.pod or UNKNOWN
        record(rec, o.sent, o.code, cluster, pod, o.details, now=o.at, server=o.server_us)
    rec.close_timeline()
    duration = max(traffic.report.duration, 1e-9)
    outcome = LoadOutcome(rec, traffic.started_at.timestamp(), duration, False)
    return build_report(config, outcome).data


class LoadRun:
    """``greeter load`` as a child process for ``duration`` seconds; its JSON report after.

    The command line is the one the rehearsal prints for people, so the scenario proves the
    same tool they will point at the real gateway.
    """

    def __init__(
        self,
        target: Target,
        rps: float,
        duration: float,
        concurrency: int = 16,
        procs: int = 1,
        interval: float = TIMELINE_INTERVAL_S,
        connections: int = 2,
        extra: Sequence[str] = (),
        core: int | None = None,
    ) -> None:
        """``rps`` 0: a closed loop (each of ``concurrency`` calls followed by the next);
        ``extra``: more ``greeter load`` flags; ``core``: pinned to it (``taskset``)."""
        md = [arg for key, value in target.metadata for arg in ("-m", f"{key}:{value}")]
        tls = ["--cacert", target.cacert] if target.cacert else ["--insecure"]
        pin = ["taskset", "-c", str(core)] if core is not None else []
        rate = ["--rps", f"{rps:g}"] if rps else []
        self.command = [
            *pin,
            sys.executable,
            "-m",
            "greeter",
            "load",
            target.address,
            *tls,
            "--authority",
            target.authority,
            *md,
            "-c",
            str(concurrency),
            "--connections",
            str(connections),
            "--procs",
            str(procs),
            "-z",
            f"{duration:g}s",
            *rate,
            "--timeline-interval",
            f"{interval * 1000:g}ms",
            "-O",
            "json",
            "-q",
            *extra,
        ]
        self.duration = duration
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )

    @property
    def running(self) -> bool:
        """Started and not exited yet."""
        return self._proc is not None and self._proc.returncode is None

    def interrupt(self) -> None:
        """Ctrl-C for the child: it stops sending and prints its (partial) report."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGINT)

    async def result(self, slack: float = 30.0) -> dict[str, Any]:
        """Wait for the report (bounded: duration + slack); the child is killed past that."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("greeter load was not started")
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.duration + slack)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError("greeter load did not finish in time") from None
        try:
            report: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError:
            raise RuntimeError(
                f"greeter load exited {proc.returncode} without a JSON report: "
                f"{err.decode()[-2000:]}"
            ) from None
        return report


def load_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The parts of a ``greeter load`` report the scenarios judge, shaped like the probe's."""
    codes = dict(report.get("status_codes", {}))
    count = int(report.get("count", 0))

    def counts(table: dict[str, Any]) -> dict[str, int]:
        return {k: int(v["count"]) if isinstance(v, dict) else int(v) for k, v in table.items()}

    return {
        "count": count,
        # Rounded as the probe's summary is (greeter load reports microseconds).
        "duration_s": round(float(report.get("duration_s") or 0.0), 2),
        "rps": round(float(report.get("rps") or 0.0), 1),
        "failed": count - int(codes.get("OK", 0)),
        "status_codes": codes,
        "by_cluster": counts(report.get("by_cluster", {})),
        "by_pod": counts(report.get("by_pod", {})),
        "latency_ms": report.get("latency_ms"),
        # Where the latency went (the replies' server-timing): null when none carried one.
        "server_ms": report.get("server_ms"),
        "outside_ms": report.get("outside_ms"),
        "split_by_cluster": {
            name: {"server_ms": row.get("server_ms"), "outside_ms": row.get("outside_ms")}
            for name, row in report.get("by_cluster", {}).items()
            if isinstance(row, dict)
        },
        # Stopped by Ctrl-C (the scenario's interrupt), and the -z limit it was given.
        "interrupted": bool(report.get("interrupted")),
        "limit_s": (report.get("options") or {}).get("duration_s"),
        # The failed calls' messages and how many had each (the report's ``errors`` is a
        # count: iterating it broke the report of a load with failures).
        "errors": report.get("error_messages") or {},
        "served_spans_s": served_spans(report),
        "timeline_interval_s": (report.get("options") or {}).get("timeline_interval_s"),
    }


def served_spans(report: dict[str, Any]) -> dict[str, list[list[float]]]:
    """Per pod, the stretches of the traffic's clock in which it answered calls, in whole
    timeline buckets (``[from, to]`` seconds): a drained pod's calls stop at the end of one
    stretch and come again at the start of the next."""
    spans: dict[str, list[list[float]]] = {}
    for bucket in report.get("timeline") or []:
        start = round(float(bucket["t"]), 3)
        end = round(start + float(bucket["duration_s"]), 3)
        for pod, n in bucket["by_pod"].items():
            if not n or pod == UNKNOWN:
                continue
            stretches = spans.setdefault(pod, [])
            if stretches and stretches[-1][1] >= start:
                stretches[-1][1] = end
            else:
                stretches.append([start, end])
    return dict(sorted(spans.items()))
