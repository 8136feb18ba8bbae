"""``greeter load --trace-sample RATE``: start a W3C trace on that share of the calls.

A sampled call carries a ``traceparent`` (sampled flag set), so the pod's SERVER span (and a
gateway's, when it traces) joins the trace. With the OpenTelemetry environment set
(``OTEL_EXPORTER_OTLP_ENDPOINT``...), the load tester also exports its own CLIENT span per
sampled call, the parent of those; without it the ids are random and nothing is exported.
``--trace-sample`` is the sampler: the SDK's ``OTEL_TRACES_SAMPLER`` is not consulted.

Every process keeps its slowest sampled calls (greeter.load.sampled), which merge
like the histograms (``--procs``, ``greeter load merge``): the report lists them with trace id,
cluster, pod, server time and outside time, so the slowest calls can be looked up in a
tracing UI. With a rate of 0 (the default) nothing here runs.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import grpc

from greeter.load.recorder import record
from greeter.load.sampled import SampledCall

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
FLUSH_S = 5.0  # seconds the client spans get to leave at the end of a run
_perf = time.perf_counter


class _Call:
    """One sampled call in flight: its ``traceparent``, and a record function that records
    it as usual, then keeps it and ends its CLIENT span."""

    __slots__ = ("header", "span", "trace_id")

    def __init__(self, trace_id: str, header: str, span: Any) -> None:
        self.trace_id = trace_id
        self.header = header
        self.span = span

    def record(self, rec: Any, began: float, *outcome: Any) -> None:
        """greeter.load.recorder.record's arguments, all of them, as the engines pass them:
        ``outcome`` is code, cluster, pod, details, now (None: this moment), server µs."""
        code, cluster, pod, details, now, server = outcome
        if now is None:
            now = _perf()
        record(rec, began, code, cluster, pod, details, now, server)
        us = int((now - began) * 1e6)
        rec.sampled.add(SampledCall(us, self.trace_id, code, cluster, pod, server))
        span = self.span
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", _CODES.get(code, 2))
            if cluster:
                span.set_attribute("greeter.cluster", cluster)
            if pod:
                span.set_attribute("greeter.pod", pod)
            span.end(end_time=time.time_ns() - int((_perf() - now) * 1e9))


_CODES = {code.name: code.value[0] for code in grpc.StatusCode}  # "UNAVAILABLE": 14


class Tracer:
    """Decides which calls are sampled and makes their ``traceparent`` (and CLIENT span)."""

    def __init__(self, rate: float, path: str, provider: Any = None) -> None:
        self.rate = rate
        self.provider = provider
        self._draw = random.random
        self._bits = random.getrandbits
        self._name = path.lstrip("/")
        self._tracer = None
        self._attributes: dict[str, str] = {}
        if provider is not None:
            from opentelemetry.trace import SpanKind

            service, _, method = self._name.partition("/")
            self._tracer = provider.get_tracer("greeter.load")
            self._kind = SpanKind.CLIENT
            self._attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

    def start(self, began: float) -> _Call | None:
        """A sampled call starting (due at ``began``), or None for a call not sampled."""
        if self.rate < 1 and self._draw() >= self.rate:
            return None
        tracer = self._tracer
        if tracer is None:
            trace_id, span_id = self._bits(128) or 1, self._bits(64) or 1
            span = None
        else:
            start_ns = time.time_ns() - int((_perf() - began) * 1e9)
            span = tracer.start_span(
                self._name, None, self._kind, self._attributes, start_time=start_ns
            )
            context = span.get_span_context()
            trace_id, span_id = context.trace_id, context.span_id
        tid = format(trace_id, "032x")
        return _Call(tid, f"00-{tid}-{span_id:016x}-01", span)

    async def close(self) -> None:
        """Export the CLIENT spans still queued (bounded by :data:`FLUSH_S`)."""
        if self.provider is None:
            return
        from greeter.tracing import shutdown_within

        if not await shutdown_within(self.provider, FLUSH_S):
            logger.warning("traces: the exporter did not finish within %.0f s", FLUSH_S)


def tracer_for(rate: float, path: str) -> Tracer | None:
    """The run's tracer (None at rate 0); it exports CLIENT spans when the OpenTelemetry
    environment names an endpoint (greeter.tracing.enabled)."""
    if rate <= 0:
        return None
    from greeter import tracing

    provider = None
    if tracing.enabled(None, os.environ):
        provider = tracing.client_provider(os.environ)
    return Tracer(rate, path, provider)
