"""Counts and times every call with the go-grpc-prometheus metric families.

With tracing on, the latency histogram carries the call's trace id as an exemplar on its
bucket (``exemplar``: the sampled call's labels, or None), which the OpenMetrics exposition
of ``/metrics`` shows, so a slow bucket in a dashboard links to a trace of a call in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from greeter.metrics import GO_CODE_NAMES, ServerMetrics, exemplar_setter, fast_inc, fast_observe
from greeter.pipeline import CallRecord, Hooks, Metadata, Method


class Metrics:
    def __init__(
        self,
        metrics: ServerMetrics,
        exemplar: Callable[[Any], dict[str, str] | None] | None = None,
    ) -> None:
        self._metrics = metrics
        self._exemplar = exemplar

    def bind(self, method: Method) -> Hooks:
        m = self._metrics
        labels = (method.grpc_type, method.service, method.name)
        # Label lookups happen here, once per method; a call only increments.
        started = fast_inc(m.started.labels(*labels))
        received = fast_inc(m.msg_received.labels(*labels))
        sent = fast_inc(m.msg_sent.labels(*labels))
        histogram = m.handling.labels(*labels)
        observe = fast_observe(histogram)
        ok = grpc.StatusCode.OK
        handled_ok = fast_inc(m.handled.labels(*labels, GO_CODE_NAMES[ok]))  # the common case
        handled: dict[grpc.StatusCode, Callable[..., None]] = {}

        def before(context: grpc.aio.ServicerContext, metadata: Metadata) -> None:
            started(1)

        def after(call: CallRecord) -> None:
            code = call.code
            if code is ok:
                handled_ok(1)
            else:
                inc = handled.get(code)
                if inc is None:
                    child = m.handled.labels(*labels, GO_CODE_NAMES[code])
                    inc = handled[code] = fast_inc(child)
                inc(1)
            observe(call.duration)
            if call.received:
                received(call.received)
            if call.sent:
                sent(call.sent)

        exemplar_of = self._exemplar
        if exemplar_of is None:  # tracing off: nothing more per call
            return Hooks(before=before, after=after, counts_messages=True)
        counted = after
        set_exemplar = exemplar_setter(histogram)

        def after_traced(call: CallRecord) -> None:
            counted(call)
            exemplar = exemplar_of(call.context)
            if exemplar is not None:
                set_exemplar(call.duration, exemplar)

        return Hooks(before=before, after=after_traced, counts_messages=True)
