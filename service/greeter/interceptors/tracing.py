"""One OpenTelemetry SERVER span per call, child of the caller's ``traceparent``.

The span is named for the method (``helloworld.Greeter/SayHello``) and carries the
semantic-convention attributes (``rpc.system``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``, ``network.peer.address``/``.port``). It starts in the first
before-hook of the chain and ends in the last after-hook, so it covers every other hook
(a refusal by auth is in it) and the access log and metrics, whose after-hooks run before
it ends, can name its trace (:meth:`Spans.ids`, :meth:`Spans.exemplar`). That takes two
entries in the chain, one state: ``spans.starts`` first, ``spans.ends`` last.

Spans are kept by the call's context, not in a context variable: a streaming call's
after-hooks can run outside its task (a reset stream's generator closed by the loop).
Health and reflection calls are not traced (probes every few seconds would bury the calls).
Only :mod:`greeter.tracing` builds one of these, so nothing of OpenTelemetry is imported
while tracing is off.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import grpc

from greeter.pipeline import CallRecord, Hooks, Metadata, Method

# The semantic conventions' server span status: these codes are errors, the others are the
# caller's doing and leave the status unset.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def peer_attributes(peer: str) -> dict[str, Any]:
    """``ipv4:10.0.0.7:5000`` / ``ipv6:%5B::1%5D:34932`` as ``network.peer.*`` attributes."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6") or not rest:
        return {}
    host, _, port = unquote(rest).rpartition(":")
    out: dict[str, Any] = {"network.peer.address": host.strip("[]"), "network.type": kind}
    if port.isdigit():
        out["network.peer.port"] = int(port)
    return out


class Spans:
    """The spans of calls in flight, started and ended by two interceptors of one chain."""

    def __init__(self, tracer: Any, propagator: Any, untraced: frozenset[str]) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._tracer = tracer
        self._propagator = propagator
        self._fields = frozenset(propagator.fields)
        self._untraced = untraced
        self._kind = SpanKind.SERVER
        self._error = StatusCode.ERROR
        self._status = Status
        self._live: dict[Any, Any] = {}
        self.starts = _Starts(self)
        self.ends = _Ends(self)

    def traced(self, method: Method) -> bool:
        return method.service not in self._untraced

    def bind_start(self, method: Method) -> Hooks | None:
        if not self.traced(method):
            return None
        start_span = self._tracer.start_span
        extract = self._propagator.extract
        fields = self._fields
        live = self._live
        kind = self._kind
        name = method.path[1:]
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": method.service,
            "rpc.method": method.name,
        }

        def before(context: grpc.aio.ServicerContext, metadata: Metadata) -> None:
            carrier = None
            for key, value in metadata:
                if key in fields:
                    if carrier is None:
                        carrier = {}
                    carrier[key] = value
            parent = extract(carrier) if carrier is not None else None
            span = start_span(name, parent, kind, attributes)
            if span.is_recording():
                span.set_attributes(peer_attributes(context.peer()))
            live[context] = span

        return Hooks(before=before, reads_metadata=True)

    def bind_end(self, method: Method) -> Hooks | None:
        if not self.traced(method):
            return None
        live = self._live
        errors = SERVER_ERRORS
        error = self._error
        status = self._status

        def after(call: CallRecord) -> None:
            span = live.pop(call.context, None)
            if span is None:
                return
            if span.is_recording():
                code = call.code
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code in errors:
                    span.set_status(status(error, code.name))
            span.end()

        return Hooks(after=after)

    def ids(self, context: Any) -> tuple[str, str, bool] | None:
        """(trace id, span id, sampled) of the call's span, in hex, while it is in flight."""
        span = self._live.get(context)
        if span is None:
            return None
        sc = span.get_span_context()
        if not sc.is_valid:
            return None
        return format(sc.trace_id, "032x"), format(sc.span_id, "016x"), sc.trace_flags.sampled

    def exemplar(self, context: Any) -> dict[str, str] | None:
        """The call's trace, as histogram exemplar labels, when it is sampled (exported)."""
        span = self._live.get(context)
        if span is None:
            return None
        sc = span.get_span_context()
        if not sc.trace_flags.sampled:
            return None
        return {"trace_id": format(sc.trace_id, "032x")}


class _Starts:
    def __init__(self, spans: Spans) -> None:
        self.bind = spans.bind_start


class _Ends:
    def __init__(self, spans: Spans) -> None:
        self.bind = spans.bind_end
