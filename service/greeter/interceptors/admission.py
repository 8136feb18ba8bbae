"""Sheds calls the server cannot serve in time, before their handler runs (greeter.admission).

Health and reflection are never shed: an overloaded pod is not a dead one, and a kubelet probe
or a gateway's health check that failed under load would restart the pod or take it out of
rotation, moving its load onto the others (docs/performance.md, "Overload").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from greeter.admission import REASONS, Admission
from greeter.metrics import ServerMetrics, fast_inc
from greeter.pipeline import CallRecord, Hooks, Metadata, Method

_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class AdmissionControl:
    def __init__(
        self,
        admission: Admission,
        services: frozenset[str],
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._admission = admission
        self._services = services  # the services whose calls may be shed
        self._metrics = metrics

    def bind(self, method: Method) -> Hooks | None:
        if method.service not in self._services:
            return None
        admission = self._admission
        refuse = admission.refuse
        shed: dict[str, Callable[..., None]] = {}
        if self._metrics is not None:
            family = self._metrics.shed
            shed = {r: fast_inc(family.labels(method.service, method.name, r)) for r in REASONS}

        def before(context: grpc.aio.ServicerContext, metadata: Metadata) -> Awaitable[None] | None:
            admission.in_flight += 1  # counted out by after, which every call that got here runs
            reason = refuse(context.time_remaining())
            if reason is None:
                return None
            if shed:
                shed[reason](1)
            return context.abort(_EXHAUSTED, admission.message(reason))

        def after(call: CallRecord) -> None:
            admission.in_flight -= 1

        return Hooks(before=before, after=after)
