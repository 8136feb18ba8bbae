"""Prometheus metrics: go-grpc-prometheus names and labels, process metrics,
build info, and the ``/metrics`` HTTP endpoint on its own port."""

from __future__ import annotations

import logging
import math
import platform
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, Literal

import grpc
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from greeter import __version__
from greeter.admission import AdmissionState
from greeter.connections import Connections

logger = logging.getLogger(__name__)

# Prometheus' Go client DefBuckets, which go-grpc-prometheus uses, so that
# existing dashboards' histogram_quantile() queries see the same bucket edges.
HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LABELS = ("grpc_type", "grpc_service", "grpc_method")


def go_code_name(code: grpc.StatusCode) -> str:
    """The ``grpc_code`` label as Go's ``codes.Code.String()`` spells it (``DeadlineExceeded``)."""
    if code is grpc.StatusCode.OK:
        return "OK"
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(part.capitalize() for part in code.name.split("_"))


GO_CODE_NAMES = {code: go_code_name(code) for code in grpc.StatusCode}


MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The connection gauges: name, help, the Connections property, how workers' values add up.
CONNECTION_GAUGES: tuple[tuple[str, str, str, Literal["livesum", "livemax"]], ...] = (
    (
        "greeter_server_connections",
        "Open HTTP/2 connections on the gRPC port (every listener of the process).",
        "open",
        "livesum",
    ),
    (
        "greeter_server_calls_in_flight",
        "Calls in flight on the gRPC port's connections.",
        "calls",
        "livesum",
    ),
    (
        "greeter_server_connection_calls_in_flight_max",
        "Calls in flight on the busiest of the gRPC port's connections.",
        "busiest",
        "livemax",
    ),
)


# Admission control's gauges: name, help, the AdmissionState field, how workers' values add up.
ADMISSION_GAUGES: tuple[tuple[str, str, str, Literal["livesum", "livemax"]], ...] = (
    (
        "greeter_server_queue_delay_seconds",
        "Standing queue of the event loop: the smallest delay of its probe over the last"
        " window (admission control sheds new calls while it is above the target).",
        "delay",
        "livemax",
    ),
    (
        "greeter_server_queue_delay_target_seconds",
        "The queue delay above which admission control sheds new calls (adaptive unless fixed).",
        "target",
        "livemax",
    ),
    (
        "greeter_server_shedding",
        "1 while admission control sheds new calls, else 0.",
        "shedding",
        "livemax",
    ),
    (
        "greeter_server_admission_limit",
        "The fixed cap on calls in flight per process (admission_limit; 0: none).",
        "limit",
        "livemax",
    ),
)


CORE_DROPPED = "greeter_server_core_dropped"
CORE_DROPPED_HELP = (
    "Calls grpc-core refused before the server took them (CANCELLED): held unrequested past"
    " admission_core_wait, or past grpc-core's pending-call limits. Read from channelz."
)


class CoreDrops:
    """``greeter_server_core_dropped_total`` from successive readings of
    :attr:`Connections.dropped`. A call that ends while one reading is taken can look dropped
    in that reading only; a dropped call stays dropped. So a count is taken once two readings
    in a row show it, one reading late, never spuriously from one."""

    def __init__(self) -> None:
        self.count = 0
        self._last = 0

    def update(self, now: Connections) -> int:
        """Take a reading; how much the count grew."""
        seen = min(self._last, now.dropped)
        self._last = now.dropped
        grew = max(0, seen - self.count)
        self.count += grew
        return grew


class ConnectionCollector:
    """The connection gauges and the core-dropped calls, read when Prometheus scrapes
    (``read`` set by the server)."""

    def __init__(self) -> None:
        self.read: Callable[[], Connections] | None = None
        self.drops = CoreDrops()

    def describe(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        return [
            *(GaugeMetricFamily(name, doc) for name, doc, _, _ in CONNECTION_GAUGES),
            CounterMetricFamily(CORE_DROPPED, CORE_DROPPED_HELP),
        ]

    def collect(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        read = self.read
        if read is None:
            return []
        now = read()
        self.drops.update(now)
        return [
            *(
                GaugeMetricFamily(name, doc, value=getattr(now, attr))
                for name, doc, attr, _ in CONNECTION_GAUGES
            ),
            CounterMetricFamily(CORE_DROPPED, CORE_DROPPED_HELP, value=self.drops.count),
        ]


class ServerMetrics:
    """The server's metric families, in a registry of their own.

    With ``multiprocess=True`` (a worker of ``greeter serve --workers N``) the
    values go to prometheus_client's per-process files in the directory named
    by ``PROMETHEUS_MULTIPROC_DIR``, which the parent aggregates and serves;
    process metrics are left out, as they cannot be summed across processes.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, multiprocess: bool = False
    ) -> None:
        # go-grpc-prometheus has no *_created series; leaving them out halves the scrape.
        prometheus_client.disable_created_metrics()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            LABELS,
            registry=r,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*LABELS, "grpc_code"),
            registry=r,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            LABELS,
            registry=r,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            LABELS,
            registry=r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been "
            "application-level handled by the server.",
            LABELS,
            buckets=HANDLING_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "greeter_server_shed_total",
            "Calls refused with RESOURCE_EXHAUSTED before their handler ran (admission"
            " control), by reason: deadline (already past), queue (the event loop had a"
            " standing queue above its target), limit (admission_limit calls in flight).",
            ("grpc_service", "grpc_method", "reason"),
            registry=r,
        )
        # Admission control's state, set at the end of every window of its probe.
        self.admission = {
            attr: Gauge(name, doc, registry=r, multiprocess_mode=mode)
            for name, doc, attr, mode in ADMISSION_GAUGES
        }
        self.spans_dropped = Counter(
            "greeter_trace_spans_dropped_total",
            "Spans dropped because the trace exporter's queue was full (collector down or"
            " slow); calls never wait for it.",
            registry=r,
        )
        info = Gauge(
            "greeter_build_info",
            "Build information; the value is always 1.",
            ("version", "python_version", "grpc_version"),
            registry=r,
            multiprocess_mode="max",  # one series for all workers, not one per pid
        )
        info.labels(__version__, platform.python_version(), grpc.__version__).set(1)
        # Connections: read at scrape time in a single process; a worker of --workers N
        # cannot be asked at its parent's scrape, so it sets gauges every few seconds
        # (record_connections) that the parent adds up.
        self.connections = ConnectionCollector()
        self._connection_gauges: list[tuple[Gauge, str]] = []
        self._core_dropped: Counter | None = None
        if multiprocess:
            self._connection_gauges = [
                (Gauge(name, doc, registry=r, multiprocess_mode=mode), attr)
                for name, doc, attr, mode in CONNECTION_GAUGES
            ]
            self._core_dropped = Counter(CORE_DROPPED, CORE_DROPPED_HELP, registry=r)
        else:
            r.register(self.connections)
        if registry is None and not multiprocess:
            prometheus_client.ProcessCollector(registry=r)
            prometheus_client.PlatformCollector(registry=r)
            prometheus_client.GCCollector(registry=r)

    def record_admission(self, state: AdmissionState) -> None:
        """Admission control's state, as it ends a window."""
        for attr, gauge in self.admission.items():
            gauge.set(float(getattr(state, attr)))

    def record_connections(self, now: Connections) -> None:
        """Set a worker's connection gauges (a single process reads them at scrape time)."""
        for gauge, attr in self._connection_gauges:
            gauge.set(getattr(now, attr))
        grew = self.connections.drops.update(now)
        if grew and self._core_dropped is not None:
            self._core_dropped.inc(grew)


def fast_inc(child: Any) -> Callable[..., None]:
    """``child.inc`` without its per-call checks: the value's own ``inc`` (still
    locked, still multiprocess-aware). Falls back to ``inc`` if the internals differ."""
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else child.inc


def fast_observe(child: Any) -> Callable[[float], None]:
    """``child.observe`` with a binary search for the bucket instead of a scan,
    and without the per-call checks. Falls back to ``observe`` if the internals differ."""
    try:
        add_sum = child._sum.inc
        bucket_incs = tuple(bucket.inc for bucket in child._buckets)
        bounds = tuple(float(b) for b in child._upper_bounds)
    except (AttributeError, TypeError):
        return child.observe
    if len(bounds) != len(bucket_incs) or bounds[-1] != math.inf:
        return child.observe

    def observe(amount: float) -> None:
        add_sum(amount)
        bucket_incs[bisect_left(bounds, amount)](1)

    return observe


def exemplar_setter(child: Any) -> Callable[[float, dict[str, str]], None]:
    """What ``child.observe(amount, exemplar=labels)`` does besides counting: ``labels`` (a
    trace id) become the exemplar of the bucket ``amount`` fell in, found by bisection as in
    :func:`fast_observe`. prometheus_client keeps exemplars in a single process only (a
    ``--workers`` worker's are dropped). Without the internals: exemplars are left out."""
    try:
        buckets = tuple(child._buckets)
        bounds = tuple(float(b) for b in child._upper_bounds)
    except (AttributeError, TypeError):
        return lambda amount, labels: None
    from prometheus_client.samples import Exemplar

    now = time.time

    def set_exemplar(amount: float, labels: dict[str, str]) -> None:
        buckets[bisect_left(bounds, amount)].set_exemplar(Exemplar(labels, amount, now()))

    return set_exemplar


def multiprocess_registry() -> CollectorRegistry:
    """A registry that reads every worker's values from ``PROMETHEUS_MULTIPROC_DIR``
    (counters and histograms summed, build info maxed) for the parent to serve."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def mark_worker_dead(pid: int) -> None:
    """Forget a finished worker's live-gauge files (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


class MetricsEndpoint:
    """``/metrics`` over HTTP, served from a thread so it answers even when the loop is busy."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host.strip("[]")
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self._port

    def start(self) -> None:
        self._server, self._thread = prometheus_client.start_http_server(
            self._port, addr=self._host, registry=self._registry
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
