"""Counts and times every call with the go-grpc-prometheus metric families."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from greeter.metrics import GO_CODE_NAMES, ServerMetrics
from greeter.pipeline import CallRecord, Hooks, Method


class Metrics:
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def bind(self, method: Method) -> Hooks:
        m = self._metrics
        labels = (method.grpc_type, method.service, method.name)
        # Label lookups happen here, once per method; a call only increments.
        started = m.started.labels(*labels).inc
        received = m.msg_received.labels(*labels).inc
        sent = m.msg_sent.labels(*labels).inc
        observe = m.handling.labels(*labels).observe
        ok = grpc.StatusCode.OK
        handled_ok = m.handled.labels(*labels, GO_CODE_NAMES[ok]).inc  # the common case
        handled: dict[grpc.StatusCode, Callable[[], None]] = {}

        def before(context: grpc.aio.ServicerContext) -> None:
            started()

        def after(call: CallRecord) -> None:
            code = call.code
            if code is ok:
                handled_ok()
            else:
                inc = handled.get(code)
                if inc is None:
                    inc = handled[code] = m.handled.labels(*labels, GO_CODE_NAMES[code]).inc
                inc()
            observe(call.duration)
            if call.received:
                received(call.received)
            if call.sent:
                sent(call.sent)

        return Hooks(before=before, after=after, counts_messages=True)
