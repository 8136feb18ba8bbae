"""OpenTelemetry traces: the SDK, its OTLP exporter and batch processor for one server process.

Tracing is off unless an OTLP endpoint is configured: ``--otlp-endpoint``
(``GREETER_OTLP_ENDPOINT``) or the SDK's standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``;
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off whatever else is set.
When it is off nothing of OpenTelemetry is imported and no hook is bound (no cost per call).

When it is on, the SDK reads the rest of its standard environment itself: ``OTEL_SERVICE_NAME``
and ``OTEL_RESOURCE_ATTRIBUTES`` (over the serving identity: ``k8s.cluster.name``,
``k8s.pod.name``, ``k8s.node.name``, ``cloud.availability_zone``, ``k8s.namespace.name``),
``OTEL_TRACES_SAMPLER``/``_ARG`` (default parent-based always-on), ``OTEL_PROPAGATORS`` (default
W3C ``traceparent``/``tracestate`` and baggage), ``OTEL_EXPORTER_OTLP_*`` (headers, timeout,
certificates) and ``OTEL_BSP_*`` (the batch processor's bounded queue and schedule).
``OTEL_EXPORTER_OTLP_PROTOCOL`` picks ``grpc`` (the default, port 4317) or ``http/protobuf``
(4318). The values this module relies on are checked at start-up (:func:`env_problems`).

Spans leave the process from the batch processor's own thread: a collector that is down, slow or
refusing never holds a call. When the queue (``OTEL_BSP_MAX_QUEUE_SIZE``, 2048) is full, the
oldest span is dropped and counted (``greeter_trace_spans_dropped_total``). The drain's
``traces`` phase flushes what is queued, bounded by what is left of the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from greeter import __version__
from greeter.settings import Settings, parse_bool

logger = logging.getLogger(__name__)

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
PROTOCOLS = ("grpc", "http/protobuf")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_SERVICE_NAME = "greeter"
# The shortest time the traces phase of a drain gets to flush, even when the calls used up
# the grace period (the chart's terminationMargin covers it).
MIN_FLUSH_S = 1.0


class TracingError(ValueError):
    """An ``OTEL_*`` variable has a value greeter cannot trace with."""


def env_problems(environ: Mapping[str, str]) -> list[str]:
    """``VARIABLE: problem`` for each standard variable whose value the SDK would ignore or
    misread (it only logs a warning and falls back): checked before anything starts."""
    bad: list[str] = []
    for name in ("OTEL_SDK_DISABLED",):
        if name in environ:
            try:
                parse_bool(environ[name])
            except ValueError as exc:
                bad.append(f"{name}: {exc}")
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter not in ("otlp", "none", ""):
        bad.append(f"OTEL_TRACES_EXPORTER: {exporter!r} is not otlp or none")
    for name in PROTOCOL_VARS:
        value = environ.get(name, "").strip()
        if value and value not in PROTOCOLS:
            bad.append(f"{name}: {value!r} is not one of {', '.join(PROTOCOLS)}")
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler and sampler not in SAMPLERS:
        bad.append(f"OTEL_TRACES_SAMPLER: {sampler!r} is not one of {', '.join(SAMPLERS)}")
    arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if arg and sampler.endswith("traceidratio"):
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0 <= ratio <= 1:
            bad.append(f"OTEL_TRACES_SAMPLER_ARG: {arg!r} is not a ratio between 0 and 1")
    return bad


def enabled(settings: Settings | None, environ: Mapping[str, str]) -> bool:
    """Whether to trace: an endpoint is configured (by ``settings`` or the environment) and
    the SDK is not disabled."""
    if parse_bool(environ.get("OTEL_SDK_DISABLED", "false") or "false"):
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    flag = settings.otlp_endpoint if settings is not None else ""
    return bool(flag or any(environ.get(name) for name in ENDPOINT_VARS))


def protocol(environ: Mapping[str, str]) -> str:
    for name in PROTOCOL_VARS:
        value = environ.get(name, "").strip()
        if value:
            return value
    return "grpc"


def resource_attributes(settings: Settings) -> dict[str, str]:
    """The serving identity as OpenTelemetry resource attributes (empty ones left out)."""
    pairs = {
        "service.version": __version__,
        "k8s.cluster.name": settings.cluster_name,
        "k8s.namespace.name": settings.namespace,
        "k8s.pod.name": settings.pod_name,
        "k8s.node.name": settings.node_name,
        "cloud.availability_zone": settings.zone,
    }
    return {key: value for key, value in pairs.items() if value}


def _exporter(endpoint: str, environ: Mapping[str, str]) -> Any:
    """The OTLP span exporter for the configured protocol; ``endpoint`` (the flag), when set,
    is the collector's base URL, like ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    if protocol(environ) == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter(endpoint=endpoint.rstrip("/") + "/v1/traces" if endpoint else None)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint or None)


def counting_processor(exporter: Any, dropped: Callable[[], None] | None) -> Any:
    """The SDK's BatchSpanProcessor (its bounded queue and own export thread), calling
    ``dropped`` for each span that pushes the oldest out of a full queue."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    class CountingBatchSpanProcessor(BatchSpanProcessor):
        def on_end(self, span: Any) -> None:
            queue = getattr(self._batch_processor, "_queue", None)
            if (
                dropped is not None
                and queue is not None
                and queue.maxlen is not None
                and len(queue) >= queue.maxlen
                and span.context is not None
                and span.context.trace_flags.sampled
            ):
                dropped()
            super().on_end(span)

    return CountingBatchSpanProcessor(exporter)


class Tracing:
    """One process's tracer provider, tracer and propagator (built by :func:`start`)."""

    def __init__(self, provider: Any, name: str = "greeter") -> None:
        from opentelemetry.propagate import get_global_textmap

        self.provider = provider
        self.tracer = provider.get_tracer(name, __version__)
        self.propagator = get_global_textmap()
        self._flushed: asyncio.Future[None] | None = None

    def describe(self) -> dict[str, Any]:
        """For the start-up log line."""
        resource = self.provider.resource.attributes
        return {
            "service_name": resource.get("service.name"),
            "sampler": self.provider.sampler.get_description(),
        }

    async def drain(self, budget: float) -> bool:
        """Export what is queued and stop (:func:`shutdown_within`)."""
        return await shutdown_within(self.provider, budget)

    def close(self) -> None:
        """Stop without waiting for the queue (start-up failed half way)."""
        threading.Thread(target=self.provider.shutdown, daemon=True).start()


async def shutdown_within(provider: Any, budget: float) -> bool:
    """Export what ``provider`` has queued and stop it, in a thread of its own: True when that
    finished within ``budget`` seconds (the thread is a daemon: a collector that does not
    answer cannot hold the process past it)."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not finished.done():
            finished.set_result(None)

    def run() -> None:
        try:
            provider.shutdown()
        except Exception:
            logger.exception("traces: shutting the exporter down failed")
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed first
                loop.call_soon_threadsafe(settle)

    threading.Thread(target=run, name="greeter-traces-flush", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(finished), budget)
    except TimeoutError:
        return False
    return True


def _provider(
    attributes: dict[str, str],
    default_name: str,
    environ: Mapping[str, str],
    endpoint: str = "",
    dropped: Callable[[], None] | None = None,
    exporter: Any = None,
    sampler: Any = None,
) -> Any:
    """A TracerProvider: resource ``attributes`` under the standard variables'
    (``default_name`` when they name no service), the batch processor over the exporter."""
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider

    from_env = OTELResourceDetector().detect().attributes
    ours = dict(attributes)
    if "service.name" not in from_env:
        ours["service.name"] = default_name
    # The standard variables win over what the settings say.
    resource = Resource.create({**ours, **from_env})
    # No exit hook: the drain's traces phase flushes, bounded; an exit hook would wait up to
    # 30 s for a collector that does not answer.
    provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
    if exporter is None:
        exporter = _exporter(endpoint, environ)
    provider.add_span_processor(counting_processor(exporter, dropped))
    return provider


def client_provider(environ: Mapping[str, str]) -> Any:
    """The load tester's provider: service ``greeter-load``, every span it starts sampled
    (``--trace-sample`` chose the calls)."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    return _provider({"service.version": __version__}, "greeter-load", environ, sampler=ALWAYS_ON)


def start(
    settings: Settings,
    environ: Mapping[str, str],
    dropped: Callable[[], None] | None = None,
    exporter: Any = None,
    sampler: Any = None,
) -> Tracing:
    """The SDK as configured by ``settings`` and the standard environment; ``exporter`` and
    ``sampler`` stand in for the OTLP exporter and the sampler ``OTEL_TRACES_SAMPLER`` names
    (benchmarks). Starts the batch processor's thread."""
    provider = _provider(
        resource_attributes(settings),
        DEFAULT_SERVICE_NAME,
        environ,
        settings.otlp_endpoint,
        dropped,
        exporter,
        sampler,
    )
    return Tracing(provider)


def flush_budget(grace_period: float, used: float) -> float:
    """Seconds the traces phase gets: what the calls left of the grace period, at least
    :data:`MIN_FLUSH_S`."""
    return max(MIN_FLUSH_S, grace_period - used)
