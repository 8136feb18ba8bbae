"""Counts and times every call with the go-grpc-prometheus metric families."""

from __future__ import annotations

from typing import Any

import grpc

from greeter.metrics import GO_CODE_NAMES, ServerMetrics
from greeter.pipeline import CallRecord, Hooks, Method


class Metrics:
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def bind(self, method: Method) -> Hooks:
        m = self._metrics
        labels = (method.grpc_type, method.service, method.name)
        started = m.started.labels(*labels)
        received = m.msg_received.labels(*labels)
        sent = m.msg_sent.labels(*labels)
        handling = m.handling.labels(*labels)
        handled: dict[grpc.StatusCode, Any] = {}
        for code in (grpc.StatusCode.OK,):  # the common case, created up front
            handled[code] = m.handled.labels(*labels, GO_CODE_NAMES[code])

        def before(context: grpc.aio.ServicerContext) -> None:
            started.inc()

        def after(call: CallRecord) -> None:
            child = handled.get(call.code)
            if child is None:
                child = handled[call.code] = m.handled.labels(*labels, GO_CODE_NAMES[call.code])
            child.inc()
            handling.observe(call.duration)
            if call.received:
                received.inc(call.received)
            if call.sent:
                sent.inc(call.sent)

        return Hooks(before=before, after=after, counts_messages=True)
