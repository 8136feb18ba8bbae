"""An OTLP trace receiver on loopback for tests, built on the official ``opentelemetry-proto``
service definitions: a grpc.aio server of ``opentelemetry.proto.collector.trace.v1.TraceService``
(what ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` exporters call) and, for ``http/protobuf``, an HTTP
server taking ``POST /v1/traces`` with the same ``ExportTraceServiceRequest`` body.

It keeps every span it is sent (:class:`Received`). ``hang=True`` makes it a collector that
accepts calls and never answers them (until it stops), the slow collector of the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


def _value(any_value: common_pb2.AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass(frozen=True)
class Received:
    """One span as the receiver got it; ids in lower-case hex, parent "" for a root."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind: 2 SERVER, 3 CLIENT
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    trace_state: str = ""  # W3C tracestate the span carries


SERVER, CLIENT = 2, 3


@dataclass
class Spans:
    """Every span received so far, with an event for waiting on more."""

    spans: list[Received] = field(default_factory=list)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Received(
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                kind=span.kind,
                                attributes=_attributes(span.attributes),
                                resource=resource,
                                status_code=span.status.code,
                                trace_state=span.trace_state,
                            )
                        )

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.spans)

    def in_trace(self, trace_id: str) -> list[Received]:
        return [span for span in self.snapshot() if span.trace_id == trace_id]


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, spans: Spans, hang: bool) -> None:
        self.spans = spans
        self.hang = hang
        self.release = asyncio.Event()
        self.calls = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.calls += 1
        if self.hang:
            await self.release.wait()
        self.spans.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@dataclass
class Receiver:
    port: int
    spans: Spans
    service: _TraceService
    server: grpc.aio.Server

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.service.release.set()
        await self.server.stop(0)


@contextlib.asynccontextmanager
async def otlp_receiver(hang: bool = False) -> AsyncIterator[Receiver]:
    """A gRPC OTLP receiver on 127.0.0.1 (any free port) for the block."""
    spans = Spans()
    service = _TraceService(spans, hang)
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    receiver = Receiver(port, spans, service, server)
    try:
        yield receiver
    finally:
        await receiver.stop()


@contextlib.contextmanager
def otlp_http_receiver() -> Iterator[tuple[str, Spans]]:
    """An OTLP/HTTP (protobuf) receiver on 127.0.0.1: (base URL, spans) for the block."""
    spans = Spans()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            spans.add(request)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", spans
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> str:
    """A W3C traceparent header value."""
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"
