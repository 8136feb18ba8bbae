"""More than one call accepted per method and listener each time the event loop hears from grpc.

A grpc.aio server keeps one request for "the next call of method M" outstanding in grpc-core
per registered method. When a call arrives, core hands it over through the completion queue
and grpc's poller thread; only when the event loop has run that callback does the server ask
for the next one. So a listener accepts at most one call per method per round trip between
the poller thread and the event loop, however many calls are waiting on its connections.
Several connections spread over several listeners (``listeners``), but a gateway that
multiplexes every call over one HTTP/2 connection (an Envoy worker) reaches only one.

``Acceptors`` keeps ``depth - 1`` more requests outstanding per method and listener, so one
round trip hands over up to ``depth`` calls. Each accepted call is then run exactly as grpc
runs the ones it accepts itself (the same handler resolution, cancellation and status
handling), on the same event loop.

The calls are run without grpc.aio's ``maximum_concurrent_rpcs`` limiter and with no grpc.aio
interceptors: the Greeter sets neither (its interceptors are bound into the handlers, see
pipeline.py). A server that did would have to pass them here too.

This uses grpc.aio's internal (underscored) server API, which has no public equivalent.
``supported()`` checks its shape once; when it does not match (another grpcio), the server
logs that it accepts one call per round trip and runs as before.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from greeter.admission import Admission

logger = logging.getLogger(__name__)

# The grpcio series (major, minor) this module was tested with, and the internal signatures
# it was written against; both are checked at start-up.
TESTED_SERIES = (1, 85)
_EXPECTED = {
    "_handle_rpc": (
        "method_name",
        "method_resolver",
        "interceptors",
        "rpc_state",
        "loop",
        "concurrency_exceeded",
    ),
    "_schedule_rpc_coro": ("rpc_coro", "rpc_state", "loop", "method_name"),
}


def _cygrpc() -> Any:
    from grpc._cython import cygrpc

    return cygrpc


def supported(server: grpc.aio.Server | None = None) -> str | None:
    """None when this grpcio has the internal API ``Acceptors`` needs (and ``server`` is
    built on it); else why not. Signatures cannot show a change of behaviour, so a grpcio
    series other than the tested one is refused too."""
    series = tuple(int(part) for part in grpc.__version__.split(".")[:2])
    if series != TESTED_SERIES:
        tested = ".".join(map(str, TESTED_SERIES))
        return f"grpcio {grpc.__version__} is not the {tested} series accept.py was tested with"
    try:
        cygrpc = _cygrpc()
        for name, params in _EXPECTED.items():
            got = tuple(inspect.signature(getattr(cygrpc, name)).parameters)
            if got != params:
                return f"cygrpc.{name}{got} is not {params}"
        request = inspect.signature(cygrpc.AioServer._request_registered_call).parameters
        if tuple(request) != ("self", "method"):
            return (
                f"cygrpc.AioServer._request_registered_call{tuple(request)} is not (self, method)"
            )
        if not callable(getattr(cygrpc.AioServer, "is_running", None)):
            return "cygrpc.AioServer has no is_running"
        if not issubclass(cygrpc._RequestCallError, Exception):
            return "cygrpc._RequestCallError is not an exception"
        cygrpc._MethodResolver([], {})
        if server is not None and not isinstance(
            getattr(server, "_server", None), cygrpc.AioServer
        ):
            return "grpc.aio.Server._server is not a cygrpc.AioServer"
    except Exception as exc:  # any mismatch means "not this grpcio"
        return f"{type(exc).__name__}: {exc}"
    return None


class Acceptors:
    """Extra requests for calls of each method, on one started grpc.aio server."""

    def __init__(
        self,
        server: grpc.aio.Server,
        handlers: dict[str, grpc.RpcMethodHandler],
        depth: int,
        admission: Admission | None = None,
    ) -> None:
        """``handlers``: fully qualified method (``/pkg.Service/Method``) -> its handler, as
        registered on ``server`` with ``add_registered_method_handlers``. ``admission`` counts
        the calls taken here until they finish: the queue of calls it sheds against."""
        self._admission = admission
        cygrpc = _cygrpc()
        self._core = server._server
        self._resolver = cygrpc._MethodResolver([], dict(handlers))
        self._methods = list(handlers)
        self._extra = depth - 1
        self._accepting: set[asyncio.Task[None]] = set()
        self._calls: set[asyncio.Task[Any]] = set()
        self.accepted = 0  # calls that came through the extra requests
        self._failed = 0

    def start(self) -> None:
        """After ``server.start()``: the extra requests go out now."""
        for method in self._methods:
            for _ in range(self._extra):
                task = asyncio.create_task(self._accept(method), name=f"accept {method}")
                self._accepting.add(task)
                task.add_done_callback(self._accepting.discard)

    async def _accept(self, method: str) -> None:
        cygrpc = _cygrpc()
        core = self._core
        loop = asyncio.get_running_loop()
        method_bytes = method.encode()
        calls = self._calls
        handle, schedule = cygrpc._handle_rpc, cygrpc._schedule_rpc_coro
        admission = self._admission
        while core.is_running():
            try:
                rpc_state = await core._request_registered_call(method_bytes)
            except cygrpc._RequestCallError:
                # core failed the request: the server is shutting down (the loop ends), or
                # it failed this one; ask again while it runs, as grpc does for its own
                continue
            except Exception:
                # refused outright (core's API changed under us?): this request is given up,
                # grpc's own keeps the method served; said once per server, not per request
                if not self._failed:
                    logger.exception("an extra request for calls of %s failed", method)
                self._failed += 1
                return
            call = loop.create_task(
                schedule(
                    handle(method, self._resolver, (), rpc_state, loop, False),
                    rpc_state,
                    loop,
                    method,
                ),
                name="rpc_task",
            )
            calls.add(call)
            call.add_done_callback(calls.discard)
            self.accepted += 1
            if admission is not None:
                admission.accepted += 1
                call.add_done_callback(admission.call_done)

    @property
    def outstanding(self) -> int:
        """Extra requests still waiting for a call (0 once the server stopped accepting)."""
        return len(self._accepting)

    async def stop(self, timeout: float = 5.0) -> None:
        """Once the server has stopped: its core failed the outstanding requests, so each
        task has ended or is about to (bounded: one that has not by then is cancelled)."""
        if not self._accepting:
            return
        _, late = await asyncio.wait(set(self._accepting), timeout=timeout)
        if not late:
            return
        logger.warning("%d extra requests for calls outlived their server", len(late))
        if self._core.is_running():
            # core still holds these requests and would complete them into freed state
            return
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
