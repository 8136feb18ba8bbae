"""Per-call cost of the interceptor pipeline, without the network: each
configuration's wrapped SayHello handler is awaited in a tight loop with a
stand-in context, and the time per call is compared with the bare handler.

The ``trace`` configurations run the OpenTelemetry SDK as ``greeter serve`` does when
tracing is on (span per call, batch processor and its thread), with an exporter that
encodes each batch as OTLP protobuf and drops it (no network): root spans sampled at
100 % or 1 % (parent-based ratio), or children of a sampled caller's ``traceparent``.

``python -m bench.hooks`` (microseconds per call; lower is better). ``--cpu`` measures the
process's CPU time instead of the wall clock: every thread's work counts (the span exporter's
encoding too) and time the process spent waiting for a core on a busy machine does not.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc

from greeter import tracing
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.interceptors.tracing import Spans
from greeter.metrics import ServerMetrics
from greeter.pipeline import Registrar
from greeter.server import interceptors
from greeter.service import Greeter
from greeter.settings import Settings


class FakeContext:
    """Enough of ``grpc.aio.ServicerContext`` for the hooks."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._trailers = metadata

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass

    def code(self) -> grpc.StatusCode | None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def time_remaining(self) -> float | None:
        return None


CONFIGS: dict[str, dict[str, Any]] = {
    "no hooks": {"pod_name": "", "access_log": False, "metrics_port": 0, "server_timing": False},
    "server-timing": {"pod_name": "", "access_log": False, "metrics_port": 0},
    "identity, no server-timing": {"access_log": False, "metrics_port": 0, "server_timing": False},
    "identity": {"access_log": False, "metrics_port": 0},
    "identity+metrics": {"access_log": False},
    "identity+metrics+log 1%": {"access_log_sample": 0.01, "access_log_budget": 0},
    "identity+metrics+log 1%+auth": {
        "access_log_sample": 0.01,
        "access_log_budget": 0,
        "auth_enabled": True,
        "auth_tokens": ("t",),
    },
}
LOGGED = CONFIGS["identity+metrics+log 1%"]
# Tracing on top of the default instrumentation: (sampling ratio of root spans, caller's
# traceparent sent).
TRACED: dict[str, tuple[float, bool]] = {
    "identity+metrics+log 1%+trace 100%": (1.0, False),
    "identity+metrics+log 1%+trace 1%": (0.01, False),
    "identity+metrics+log 1%+trace, sampled traceparent": (1.0, True),
}
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class DropExporter:
    """A span exporter that does the OTLP exporter's encoding and sends nothing."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Any) -> Any:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace.export import SpanExportResult

        encode_spans(spans).SerializeToString()
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def traced(settings: Settings, ratio: float, dropped: list[int]) -> tuple[Spans, Any]:
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    def drop() -> None:
        dropped[0] += 1

    sdk = tracing.start(settings, {}, drop, DropExporter(), ParentBased(TraceIdRatioBased(ratio)))
    return Spans(sdk.tracer, sdk.propagator, frozenset()), sdk.provider.force_flush


def handler(settings: Settings, spans: Spans | None = None) -> Any:
    registrar = Registrar()
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(settings), registrar)
    metrics = ServerMetrics(registry=None) if settings.metrics_port else None

    class Capture:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            self.handlers = handlers

    capture = Capture()
    chain = interceptors(settings, metrics, spans=spans)
    registrar.install([capture], chain, timing=settings.server_timing)
    return capture.handlers["SayHello"].unary_unary


async def per_call(
    behavior: Any,
    calls: int,
    caller: bool = False,
    clock: Callable[[], float] = time.perf_counter,
    settle: Callable[[], Any] | None = None,
) -> float:
    """µs per call by ``clock``; ``settle`` (the exporter's flush) runs before it stops."""
    request = helloworld_pb2.HelloRequest(name="world")
    metadata: tuple[tuple[str, str], ...] = (("authorization", "Bearer t"), (":authority", "x"))
    if caller:
        metadata += (("traceparent", CALLER),)
    context = FakeContext(metadata)
    for _ in range(1000):
        await behavior(request, context)
    if settle is not None:
        settle()
    began = clock()
    for _ in range(calls):
        await behavior(request, context)
    if settle is not None:
        settle()
    return (clock() - began) / calls * 1e6


async def main(calls: int = 100_000, rounds: int = 5, cpu: bool = False) -> None:
    logging.getLogger("greeter.access").addHandler(logging.NullHandler())
    logging.getLogger("greeter.access").propagate = False
    logging.getLogger("greeter.access").setLevel(logging.INFO)
    base = {"host": "127.0.0.1", "port": 0, "metrics_port": 1, "pod_name": "pod"}
    behaviors: dict[str, tuple[Any, bool, Any]] = {
        name: (handler(Settings(**{**base, **c})), False, None) for name, c in CONFIGS.items()
    }
    dropped = [0]
    for name, (ratio, caller) in TRACED.items():
        settings = Settings(**{**base, **LOGGED})
        spans, flush = traced(settings, ratio, dropped)
        behaviors[name] = (handler(settings, spans), caller, flush)
    clock = time.process_time if cpu else time.perf_counter
    results: dict[str, list[float]] = {name: [] for name in behaviors}
    for _ in range(rounds):
        for name, (behavior, caller, flush) in behaviors.items():
            results[name].append(await per_call(behavior, calls, caller, clock, flush))
    floor = min(results["no hooks"])
    what = "CPU µs" if cpu else "µs"
    print(f"| hooks | {what} per call (best of rounds) | added µs |")
    print("|---|---:|---:|")
    for name, samples in results.items():
        print(f"| {name} | {min(samples):.2f} | {min(samples) - floor:+.2f} |")
    print(f"\nspans dropped by a full exporter queue: {dropped[0]}")


if __name__ == "__main__":
    asyncio.run(main(cpu="--cpu" in sys.argv[1:]))
