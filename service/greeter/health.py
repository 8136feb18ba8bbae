"""grpc.health.v1.Health: Check and Watch, with a drain-aware shutdown; and
greeter.v1.Readiness, the same state as a gRPC status code.

Unlike the stock asyncio servicer, Watch streams end (UNAVAILABLE) when the
server stops accepting calls, so they do not hold the shutdown for the whole
grace period.

Health/Check answers NOT_SERVING with status OK, which a checker that reads only
the status code (ALB's gRPC health checks) takes for healthy. Readiness/Check
reads the same statuses and answers NOT_SERVING with UNAVAILABLE instead, so it
flips at the very moment Health/Check does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from greeter._proto.greeter.v1 import readiness_pb2, readiness_pb2_grpc

SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
READINESS_SERVICE_NAME = readiness_pb2.DESCRIPTOR.services_by_name["Readiness"].full_name
Status = health_pb2.HealthCheckResponse.ServingStatus
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self, services: Iterable[str]) -> None:
        self._status: dict[str, int] = {name: NOT_SERVING for name in ("", *services)}
        self._changed = asyncio.Event()
        self._draining = False
        self._closed = False

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def status(self, service: str = "") -> int | None:
        return self._status.get(service)

    @property
    def draining(self) -> bool:
        return self._draining

    def set_all(self, status: int) -> None:
        if self._draining:
            return  # once draining, nothing turns a service back on
        for name in self._status:
            self._status[name] = status
        self._notify()

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good; Watch streams see it at once."""
        self.set_all(NOT_SERVING)
        self._draining = True

    def close_watchers(self) -> None:
        """End the Watch streams (the server is about to stop accepting calls)."""
        self._closed = True
        self._notify()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._status.items()
            }
        )

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            changed = self._changed
            status = self._status.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self._closed:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            await changed.wait()


_READY = readiness_pb2.CheckResponse(status=readiness_pb2.CheckResponse.SERVING)


class Readiness(readiness_pb2_grpc.ReadinessServicer):
    """greeter.v1.Readiness/Check: OK while SERVING, UNAVAILABLE while not, NOT_FOUND for
    a service ``health`` does not know. An empty request asks about the whole server."""

    def __init__(self, health: Health) -> None:
        self._health = health

    async def Check(
        self, request: readiness_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> readiness_pb2.CheckResponse:
        status = self._health.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        if status != SERVING:
            state = "draining" if self._health.draining else "not ready"
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{state}: {name}")
        return _READY
