"""The Greeter server and its lifecycle: startup, serve, drain.

Shutdown follows the Kubernetes termination contract, in named phases:

1. ``not_serving``: every health status goes NOT_SERVING (Watch streams see it),
2. ``drain_delay``: keep serving while gateways and endpoints stop sending,
3. ``stop``: refuse new calls (on the gRPC port and the gRPC-Web port); in-flight calls
   get ``grace_period`` to finish, then whatever is left is cancelled,
4. ``traces`` (tracing on): export the spans still queued, within what the calls left of the
   grace period (at least a second),
5. ``metrics``: stop the metrics endpoint.

A second SIGTERM/SIGINT during shutdown exits at once with ``128 + signal``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from greeter import accept, health, ports, reflection, tracing
from greeter._proto import helloworld_pb2_grpc
from greeter._proto.greeter.v1 import readiness_pb2_grpc
from greeter.admission import Admission
from greeter.connections import ConnectionReader, Connections
from greeter.health import SERVING, Health, Readiness
from greeter.interceptors import (
    AccessLog,
    Auth,
    CheckRecorder,
    Faults,
    Identity,
    MetadataLimit,
    Metrics,
)
from greeter.interceptors.admission import AdmissionControl
from greeter.interop.checklog import CheckLog
from greeter.metrics import MetricsEndpoint, ServerMetrics
from greeter.pipeline import Interceptor, Registrar
from greeter.service import SERVICE_NAME as GREETER_SERVICE
from greeter.service import Greeter
from greeter.settings import Settings, parse_token_lines
from greeter.threads import helper_threads

if TYPE_CHECKING:
    from greeter.interceptors.tracing import Spans
    from greeter.web.server import WebServer

logger = logging.getLogger(__name__)

STARTUP_FAILURE = 3
_MS = 1000
# How often a worker of --workers N refreshes its connection gauges for the parent's /metrics.
CONNECTION_REFRESH_S = 5.0
# grpc-core counts a request's whole header list (pseudo-headers, content-type, te,
# grpc-timeout, and what a gateway adds: x-forwarded-*, x-request-id...), the metadata limit
# interceptor only the metadata the handler sees: grpc-core's limit is max_metadata_size plus
# this allowance, so that every request within the setting reaches the interceptor.
HEADER_ALLOWANCE = 4 * 1024


class StartupError(RuntimeError):
    """The server could not start (port in use, unreadable certificate...)."""


def listener_count(settings: Settings) -> int:
    """How many gRPC servers this process runs on the port (a unix socket takes one)."""
    return 1 if settings.is_unix else settings.listeners


def server_options(settings: Settings) -> list[tuple[str, int]]:
    s = settings
    options = [
        # Listeners (and workers) share the port on purpose, after a check that nobody else
        # holds it; a lone server must fail when its port is taken, not silently share it.
        ("grpc.so_reuseport", 1 if s.workers > 1 or listener_count(s) > 1 else 0),
        ("grpc.keepalive_time_ms", int(s.keepalive_time * _MS)),
        ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout * _MS)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(s.keepalive_min_time * _MS)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ("grpc.max_receive_message_length", s.recv_message_limit),
        ("grpc.max_send_message_length", s.send_message_limit),
        # grpcio 1.85: max_metadata_size is grpc-core's soft limit (8 KiB by default: past it
        # a request is refused at random, ever more often up to the hard limit, 16 KiB);
        # absolute_max_metadata_size the hard one, also advertised as
        # SETTINGS_MAX_HEADER_LIST_SIZE. Both the same: past it, always RESOURCE_EXHAUSTED.
        ("grpc.max_metadata_size", header_list_limit(s)),
        ("grpc.absolute_max_metadata_size", header_list_limit(s)),
    ]
    if s.admission_control:
        # grpc-core drops a call no request has taken for this long (admission.py)
        options.append(("grpc.server_max_unrequested_time_in_server", s.admission_core_wait))
    if s.max_connection_idle:
        options.append(("grpc.max_connection_idle_ms", int(s.max_connection_idle * _MS)))
    if s.max_connection_age:
        options.append(("grpc.max_connection_age_ms", int(s.max_connection_age * _MS)))
        options.append(("grpc.max_connection_age_grace_ms", int(s.max_connection_age_grace * _MS)))
    return options


def header_list_limit(settings: Settings) -> int:
    """The request header list grpc-core takes (and advertises), bytes as HTTP/2 counts them."""
    return settings.max_metadata_size + HEADER_ALLOWANCE


def bind_address(settings: Settings, port: int | None = None) -> str:
    """``host:port``, or a ``unix:/path`` host as it is (the port is then unused)."""
    if settings.is_unix:
        return settings.host
    return f"{settings.host}:{settings.port if port is None else port}"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls:
        return None
    try:
        key = Path(settings.tls_key).read_bytes()
        cert = Path(settings.tls_cert).read_bytes()
        client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise StartupError(f"cannot read TLS files: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def auth_tokens(settings: Settings) -> list[tuple[str, tuple[str, ...]]]:
    lines = list(settings.auth_tokens)
    if settings.auth_tokens_file:
        try:
            lines += Path(settings.auth_tokens_file).read_text().splitlines()
        except OSError as exc:
            raise StartupError(f"cannot read auth_tokens_file: {exc}") from exc
    tokens = parse_token_lines(lines)
    if settings.auth_enabled and not tokens:
        raise StartupError("auth_enabled but no tokens were configured")
    return tokens


WORKER_KEY = "x-greeter-worker"


def serving_identity(settings: Settings, worker: int | None = None) -> dict[str, str]:
    """The identity metadata replies carry; one of several processes on the port says which."""
    if worker is None:
        return settings.identity
    return {**settings.identity, WORKER_KEY: str(worker)}


def interceptors(
    settings: Settings,
    metrics: ServerMetrics | None,
    worker: int | None = None,
    check_log: CheckLog | None = None,
    admission: Admission | None = None,
    spans: Spans | None = None,
) -> list[Interceptor]:
    """Order matters: metrics and the access log see calls that later hooks reject; admission
    control refuses before anything else runs. With tracing (``spans``), a call's span starts
    before every other hook and ends after them."""
    chain: list[Interceptor] = []
    if spans is not None:
        chain.append(spans.starts)
    if metrics is not None:
        chain.append(Metrics(metrics, spans.exemplar if spans is not None else None))
    if settings.access_log:
        chain.append(
            AccessLog(
                settings.access_log_sample,
                settings.access_log_budget,
                spans.ids if spans is not None else None,
            )
        )
    if admission is not None:  # the Greeter only: health and reflection are never shed
        chain.append(AdmissionControl(admission, frozenset({GREETER_SERVICE}), metrics))
    chain.append(Identity(serving_identity(settings, worker)))
    if check_log is not None:  # --interop: calls tagged by greeter check, before refusals
        chain.append(CheckRecorder(check_log))
    chain.append(MetadataLimit(settings.max_metadata_size))
    if settings.auth_enabled:
        exempt: set[str] = set()
        if "health" in settings.auth_exempt:  # both health services: checkers send no token
            exempt.update((health.SERVICE_NAME, health.READINESS_SERVICE_NAME))
        if "reflection" in settings.auth_exempt:
            exempt.update(reflection.SERVICE_NAMES)
        chain.append(Auth(auth_tokens(settings), exempt))
    if settings.fault_enabled:
        chain.append(
            Faults(
                frozenset({GREETER_SERVICE}),
                settings.fault_delay,
                settings.fault_delay_percent,
                settings.fault_status,
                settings.fault_status_percent,
            )
        )
    if spans is not None:
        chain.append(spans.ends)
    return chain


def start_tracing(
    settings: Settings, metrics: ServerMetrics | None
) -> tuple[tracing.Tracing, Spans] | None:
    """The SDK and the spans' interceptors, when tracing is configured (greeter.tracing)."""
    if not tracing.enabled(settings, os.environ):
        return None
    from greeter.interceptors.tracing import Spans

    dropped = metrics.spans_dropped.inc if metrics is not None else None
    traces = tracing.start(settings, os.environ, dropped)
    untraced = frozenset(
        (health.SERVICE_NAME, health.READINESS_SERVICE_NAME, *reflection.SERVICE_NAMES)
    )
    return traces, Spans(traces.tracer, traces.propagator, untraced)


class GreeterServer:
    """One server process: the gRPC server, its health and its metrics endpoint.

    ``worker`` is set in the processes of ``greeter serve --workers N``: the
    identity then carries the worker index, metrics go to the multiprocess
    files that the parent serves, and this process serves no ``/metrics``.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: ServerMetrics | None = None,
        *,
        worker: int | None = None,
    ) -> None:
        self.settings = settings
        self.worker = worker
        self.health = Health([GREETER_SERVICE])
        if metrics is None and settings.metrics_port:
            metrics = ServerMetrics(multiprocess=worker is not None)
        self.metrics = metrics
        self.admission: Admission | None = None
        if settings.admission_control:
            self.admission = Admission(
                settings.admission_queue_target,
                settings.admission_limit,
                on_window=metrics.record_admission if metrics is not None else None,
            )
        self._endpoint: MetricsEndpoint | None = None
        self._servers: list[grpc.aio.Server] = []
        self._acceptors: list[accept.Acceptors] = []
        # calls of a method each listener accepts per event-loop turn (accept_depth, or 1)
        self.accept_depth = 1
        self._web: WebServer | None = None
        self._stopping = asyncio.Event()
        self._refresh: asyncio.Task[None] | None = None
        # A worker reads its connections in a thread of its own, started with grpc's helper
        # threads so that it gets their scheduling policy (asyncio's default executor would
        # start one later, outside it).
        self._reading: concurrent.futures.ThreadPoolExecutor | None = None
        self.tracing: tracing.Tracing | None = None
        self.port = 0
        # --interop: the calls tagged with x-greeter-check-id (greeter.interop.checklog)
        self.check_log = CheckLog() if settings.interop else None

    @property
    def web_port(self) -> int:
        """The gRPC-Web port (0: off)."""
        return self._web.port if self._web else 0

    @property
    def metrics_port(self) -> int:
        return self._endpoint.port if self._endpoint else 0

    # -- startup -------------------------------------------------------------
    async def start(self) -> None:
        began = time.perf_counter()
        s = self.settings
        registrar = Registrar()
        helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(s), registrar)
        from grpc_health.v1 import health_pb2_grpc

        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        # The same health, as a status code (ALB's gRPC health checks read only that).
        readiness_pb2_grpc.add_ReadinessServicer_to_server(Readiness(self.health), registrar)
        served = [GREETER_SERVICE, health.SERVICE_NAME, health.READINESS_SERVICE_NAME]
        if s.interop:
            from greeter.interop import service as interop

            identity = serving_identity(s, self.worker)
            interop.add_interop(registrar, s, identity, self.check_log)
            served += interop.SERVICE_NAMES
        if s.reflection:
            reflection.add_reflection(registrar, served)
        # grpc's poller and I/O threads, the metrics thread and the span exporter's thread
        # are started in here (all of them by the time the servers exist; starting them
        # starts no more). No await inside: nothing else on this loop may start threads
        # while the policy is batch.
        with helper_threads(s.thread_policy) as thread_policy:
            traced = start_tracing(s, self.metrics)
            spans = None
            if traced is not None:
                self.tracing, spans = traced
            chain = interceptors(
                s,
                self.metrics,
                self.worker,
                check_log=self.check_log,
                admission=self.admission,
                spans=spans,
            )
            # grpc.aio accepts one call per method and server each time the event loop
            # hears from grpc: several servers on one port (listeners) accept several at
            # once for several connections, and accept_depth several on each (accept.py).
            self._servers = [
                grpc.aio.server(options=server_options(s)) for _ in range(listener_count(s))
            ]
            registrar.install(self._servers, chain, timing=s.server_timing)
            self._start_metrics_endpoint()
            self.port = self._bind(self._servers)
            if self.worker is not None and self.metrics is not None:
                self._reading = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="greeter-connections"
                )
                self._reading.submit(lambda: None).result()  # its thread starts here
        self._bind_web(registrar)
        await asyncio.gather(*(server.start() for server in self._servers))
        if self.admission is not None:
            self.admission.start()
        self._accept_ahead(registrar)
        self._watch_connections()
        if self._web is not None:
            await self._web.start()
        self.health.set_all(SERVING)
        logger.info(
            "serving",
            extra={
                "phase": "startup",
                "address": bind_address(s) if s.is_unix else f"{s.host}:{self.port}",
                "tls": s.tls,
                "mtls": bool(s.tls_client_ca),
                "metrics_port": self.metrics_port,
                "web_port": self.web_port,
                "reflection": s.reflection,
                "interop": s.interop,
                "identity": s.identity,
                "listeners": len(self._servers),
                "accept_depth": self.accept_depth,
                "thread_policy": thread_policy,
                "event_loop": loop_name(asyncio.get_running_loop()),
                "tracing": self.tracing.describe() if self.tracing else None,
                "pid": os.getpid(),
                "worker": self.worker,
                "took_s": round(time.perf_counter() - began, 3),
            },
        )

    def _accept_ahead(self, registrar: Registrar) -> None:
        """``accept_depth`` > 1: each listener accepts that many calls of a method at once."""
        depth = self.settings.accept_depth
        if depth <= 1:
            return
        why = accept.supported(self._servers[0])  # every listener is built the same way
        if why is not None:
            logger.warning(
                "accept_depth needs grpc.aio internals this grpcio lacks; accepting one call"
                " per method and listener per turn",
                extra={"phase": "startup", "reason": why},
            )
            return
        handlers = {
            f"/{service}/{name}": handler
            for service, methods in registrar.wrapped.items()
            for name, handler in methods.items()
        }
        for server in self._servers:
            acceptors = accept.Acceptors(server, handlers, depth, self.admission)
            acceptors.start()
            self._acceptors.append(acceptors)
        self.accept_depth = depth

    @property
    def accepted_ahead(self) -> int:
        """Calls accepted through those extra requests (the rest came through grpc.aio's)."""
        return sum(acceptors.accepted for acceptors in self._acceptors)

    @property
    def accepting(self) -> int:
        """Extra requests for calls the listeners have outstanding (0 with accept_depth 1)."""
        return sum(acceptors.outstanding for acceptors in self._acceptors)

    def _watch_connections(self) -> None:
        """Open connections and calls in flight on them, for /metrics (see connections.py)."""
        if self.metrics is None:
            return
        s = self.settings
        reader = ConnectionReader(s.host if s.is_unix else f":{self.port}")
        if not reader.available:
            return
        if self.worker is None:
            self.metrics.connections.read = reader.read
            return
        metrics = self.metrics
        loop = asyncio.get_running_loop()

        async def refresh() -> None:
            while True:
                # in a thread: reading costs ~0.4 ms per connection, not for the event loop
                metrics.record_connections(await loop.run_in_executor(self._reading, reader.read))
                await asyncio.sleep(CONNECTION_REFRESH_S)

        self._refresh = asyncio.create_task(refresh())

    def _start_metrics_endpoint(self) -> None:
        # Before the gRPC port: once it accepts connections, /metrics answers too.
        s = self.settings
        if self.metrics is None or self.worker is not None:
            return
        self._endpoint = MetricsEndpoint(self.metrics.registry, s.metrics_host, s.metrics_port)
        try:
            self._endpoint.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on metrics port {s.metrics_host}:{s.metrics_port}: {exc}"
            ) from exc

    def _bind_web(self, registrar: Registrar) -> None:
        """The gRPC-Web port, over the handlers just installed (interceptors bound in).
        Imported only when asked for: a server without it loads none of it."""
        s = self.settings
        if not s.web_port:
            return
        from greeter.web.app import WebApp
        from greeter.web.server import WebServer

        app = WebApp(
            registrar.wrapped,
            identity=serving_identity(s, self.worker),
            cors_origins=s.web_cors_origins,
            max_recv_message_size=s.recv_message_limit,
            max_send_message_size=s.send_message_limit,
        )
        self._web = WebServer(app, s, reuse_port=self.worker is not None)
        try:
            self._web.bind()
        except OSError as exc:
            self._web = None
            raise StartupError(
                f"cannot listen on web port {s.web_host}:{s.web_port}: {exc}"
            ) from exc

    def _bind(self, servers: list[grpc.aio.Server]) -> int:
        """Bind every server to the port; the port they got (the first picks one for 0)."""
        s = self.settings
        port = s.port
        if len(servers) > 1 and self.worker is None:
            # They share it with SO_REUSEPORT, which would also share it with a stranger:
            # check nobody holds it (for port 0, have the kernel pick one nobody holds).
            try:
                port = ports.resolve_port(s.host, port)
            except OSError as exc:
                raise StartupError(f"cannot listen on {bind_address(s)}: {exc}") from exc
        credentials = server_credentials(s)
        for server in servers:
            address = bind_address(s, port)
            try:
                if credentials is None:
                    bound = server.add_insecure_port(address)
                else:
                    bound = server.add_secure_port(address, credentials)
            except RuntimeError as exc:
                raise StartupError(f"cannot listen on {address}: {exc}") from exc
            if not bound:
                raise StartupError(f"cannot listen on {address}")
            port = bound
        return port

    # -- shutdown ------------------------------------------------------------
    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stop_requested(self) -> None:
        await self._stopping.wait()

    async def drain(self) -> None:
        """Run the shutdown phases; every wait is bounded by the settings."""
        s = self.settings
        began = time.perf_counter()

        def done(phase: str, since: float, **extra: object) -> float:
            now = time.perf_counter()
            logger.info(
                "shutdown phase done",
                extra={"phase": phase, "took_s": round(now - since, 3), **extra},
            )
            return now

        # 1. Tell health checkers (kubelet, gateways, Watch streams) to stop sending.
        self.health.enter_graceful_shutdown()
        mark = done("not_serving", began)
        # 2. Keep serving while endpoints and gateways take this backend out.
        if s.drain_delay:
            await asyncio.sleep(s.drain_delay)
        mark = done("drain_delay", mark, drain_delay=s.drain_delay)
        # 3. Refuse new calls, let in-flight ones finish within the grace period.
        self.health.close_watchers()
        web, self._web = self._web, None
        await asyncio.gather(
            *(server.stop(s.grace_period) for server in self._servers),
            *([web.stop(s.grace_period)] if web is not None else []),
        )
        self._servers = []
        if self.admission is not None:
            self.admission.stop()  # extra requests paused by it resume, and end with the server
        await self._stop_accepting()
        self._unwatch_connections()
        stopped = done("stop", mark, grace_period=s.grace_period)
        # 4. Export the spans still queued, within what is left of the grace period.
        traces, self.tracing = self.tracing, None
        if traces is not None:
            budget = tracing.flush_budget(s.grace_period, stopped - mark)
            flushed = await traces.drain(budget)
            if not flushed:
                logger.warning(
                    "traces: the exporter did not finish within %.1f s; the rest is dropped",
                    budget,
                )
            stopped = done("traces", stopped, flushed=flushed)
        mark = stopped
        # 5. The metrics endpoint goes last, so the final counts can be scraped.
        if self._endpoint is not None:
            await asyncio.to_thread(self._endpoint.stop)
            self._endpoint = None
        done("metrics", mark)
        logger.info("stopped", extra={"took_s": round(time.perf_counter() - began, 3)})

    async def _stop_accepting(self) -> None:
        """After the servers stopped: their extra requests for calls have ended."""
        acceptors, self._acceptors = self._acceptors, []
        await asyncio.gather(*(a.stop() for a in acceptors))

    def _unwatch_connections(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        if self._reading is not None:
            self._reading.shutdown(wait=False, cancel_futures=True)
            self._reading = None
        if self.metrics is not None:
            self.metrics.connections.read = None
            self.metrics.record_connections(Connections())

    async def abort(self) -> None:
        """Stop now, without draining (start-up failed half way)."""
        self._unwatch_connections()
        if self.admission is not None:
            self.admission.stop()
        await asyncio.gather(*(_discard(server) for server in self._servers))
        self._servers = []
        await self._stop_accepting()
        if self._web is not None:
            self._web.abort()
            self._web = None
        if self.tracing is not None:
            self.tracing.close()
            self.tracing = None
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None


async def _discard(server: grpc.aio.Server) -> None:
    """Close a server whatever state start-up left it in. grpc.aio frees a server's
    listening sockets only when a started server stops, so a bound one is started first."""
    with contextlib.suppress(Exception):
        await server.start()  # returns at once if it is running already
    with contextlib.suppress(Exception):
        await server.stop(0)


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings, metrics: ServerMetrics | None = None
) -> AsyncIterator[GreeterServer]:
    """Start a server in the running loop for the block's duration (used by tests and tools)."""
    server = GreeterServer(settings, metrics)
    try:
        await server.start()
    except BaseException:
        await server.abort()
        raise
    try:
        yield server
    finally:
        await server.drain()


def _install_signal_handlers(server: GreeterServer) -> None:
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:
            logger.warning("second signal %s: exiting now", signal.Signals(signum).name)
            # os._exit, not SystemExit: a second signal means "stop waiting", and what a
            # SystemExit would run first is what is being waited for. Raised in this handler,
            # it would cancel every task and run their cleanup (the drain's own finally
            # blocks, grpc.aio's server shutdown, each listener's stop with its grace), any
            # of which may block on the calls or peers that made the drain slow; with
            # --workers, the parent's second signal must end it without that wait too.
            # Nothing is lost that the drain would keep: the log handlers flush each line as
            # it is written, and the kernel closes the sockets, as after a SIGKILL.
            os._exit(128 + signum)
        received.append(signum)
        logger.info("signal %s: draining", signal.Signals(signum).name)
        server.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def serve(settings: Settings, *, worker: int | None = None) -> int:
    """Run until SIGTERM/SIGINT, then drain. Returns the process exit code."""
    server = GreeterServer(settings, worker=worker)
    # Before binding: a SIGTERM that arrives while starting still drains cleanly.
    _install_signal_handlers(server)
    try:
        await server.start()
    except StartupError as exc:
        logger.error("start-up failed: %s", exc)
        await server.abort()
        return STARTUP_FAILURE
    await server.wait_stop_requested()
    await server.drain()
    return 0


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: the module of the loop that really runs, for the log."""
    return type(loop).__module__.split(".")[0]


def run(settings: Settings, *, worker: int | None = None) -> int:
    """Serve with the configured event loop; the process exit code is returned."""
    if settings.event_loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if settings.event_loop == "uvloop":
                logger.error("event_loop=uvloop but uvloop is not installed (pip install uvloop)")
                return STARTUP_FAILURE
        else:
            return int(uvloop.run(serve(settings, worker=worker)))
    return asyncio.run(serve(settings, worker=worker))
