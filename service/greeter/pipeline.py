"""Binds interceptors to method handlers once, when the server is built.

grpc.aio's ``ServerInterceptor`` runs on every call and re-wraps the handler
each time; measured here it costs 6-14% of a unary call before it does any
work. Instead, each interceptor is asked once per method for its hooks, and
every handler is wrapped in a single layer that runs just those hooks. The
wrapper also works out the real status of every call (returns, aborts,
exceptions, cancellation and deadline expiry) for the ``after`` hooks.

The same layer stamps every reply with the server's own time: a ``server-timing``
trailer (W3C Server-Timing, ``app;dur=0.052``: milliseconds from the moment the call
entered this wrapper to the moment its status is handed to grpc), set together with
the interceptors' trailers (the serving identity): no layer of its own, one clock read
and one more ``set_trailing_metadata`` per call (the identity's, as the call starts,
stays: an abort from inside a handler is sent at once and carries that). A refusal (a
before-hook's ``context.abort``) is stamped before it is sent: a hook returns the
abort's coroutine instead of awaiting it.

A handler marked with :func:`owns_metadata` (the interop service, which echoes what the
caller asks for) sends its own response headers and adds trailers of its own: interceptors
see ``Method.owns_metadata`` and leave the headers to it, and the stamp adds the
server-timing to the trailers the call has by then instead of replacing them.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import grpc

from greeter import timing
from greeter.malformed import Malformed, reject, tolerant

_OK = grpc.StatusCode.OK
_UNKNOWN = grpc.StatusCode.UNKNOWN
_CANCELLED = grpc.StatusCode.CANCELLED
_DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
_AbortError: type[BaseException] = grpc.aio.AbortError
_now = time.perf_counter
_timing_value = timing.value
SERVER_TIMING = timing.KEY  # the trailer with the server's own time (greeter.timing)


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC method, as interceptors see it when they bind."""

    service: str
    name: str
    request_streaming: bool
    response_streaming: bool
    # The handler sends its own response headers and sets trailers of its own
    # (owns_metadata): hooks must not send headers for it.
    owns_metadata: bool = False

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def grpc_type(self) -> str:
        """The go-grpc-prometheus ``grpc_type`` label."""
        if self.request_streaming:
            return "bidi_stream" if self.response_streaming else "client_stream"
        return "server_stream" if self.response_streaming else "unary"


class CallRecord(NamedTuple):
    """What an ``after`` hook learns about a finished call."""

    method: Method
    code: grpc.StatusCode
    duration: float
    received: int
    sent: int
    context: grpc.aio.ServicerContext
    # The client's address, when the wrapper took it while the call was alive. A streaming
    # handler's generator can be closed after grpc has freed the call (the client reset the
    # stream and grpc dropped the generator, which the loop then finalizes): context.peer()
    # then reads freed memory and the process segfaults. None: ask the context.
    peer: str | None = None


Metadata = Sequence[tuple[str, Any]]
# A before-hook gets the call's request metadata (read once per call, and only when some
# hook of the method asked for it; otherwise empty). A sync hook returns None, or a
# refusal: ``context.abort(...)``'s coroutine, not awaited. An ``async def`` hook's
# coroutine is awaited, and returns None or such a refusal. The wrapper stamps the
# server-timing trailer on the call, then awaits the refusal (which sends the status).
Before = Callable[[grpc.aio.ServicerContext, Metadata], Awaitable[Any] | None]
After = Callable[[CallRecord], None]


class Hooks(NamedTuple):
    before: Before | None = None
    after: After | None = None
    counts_messages: bool = False
    reads_metadata: bool = False
    # Trailing metadata for every reply of the method (the serving identity). The wrapper
    # sets the trailers of all hooks together as the call starts (so an abort from inside
    # the handler carries them too) and, with the server-timing, as the status goes out.
    trailers: Metadata = ()


_OWNS_METADATA = "greeter_owns_metadata"
F = TypeVar("F", bound=Callable[..., Any])


def owns_metadata(handler: F) -> F:
    """Mark a servicer method that sends its own response headers and adds its own
    trailing metadata (to ``context.trailing_metadata()``, which holds the hooks')."""
    setattr(handler, _OWNS_METADATA, True)
    return handler


def handler_owns_metadata(handler: grpc.RpcMethodHandler) -> bool:
    shape = (handler.request_streaming, handler.response_streaming)
    return bool(getattr(getattr(handler, _BEHAVIOR_FIELD[shape]), _OWNS_METADATA, False))


class Interceptor(Protocol):
    def bind(self, method: Method) -> Hooks | None:
        """The hooks to run for calls of ``method``, or None to stay out of them."""


def final_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpc versions hand back the number
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate
    return _OK


def _aborted_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = final_code(context)
    return _UNKNOWN if code is _OK else code


# A client whose deadline passes cancels the call (RST_STREAM) at about the moment the
# server's copy of that deadline passes; whichever the server sees first, a cancel this close
# to the deadline is the deadline, and is counted as DeadlineExceeded.
DEADLINE_SLACK = 0.05


def _cancelled_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    remaining = context.time_remaining()
    return _DEADLINE if remaining is not None and remaining <= DEADLINE_SLACK else _CANCELLED


def _failure_code(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status of a call whose handler left with ``exc``: an abort's own code, a cancel
    (deadline or client), or UNKNOWN for any other exception."""
    if isinstance(exc, _AbortError):
        return _aborted_code(context)
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return _cancelled_code(context)
    return _UNKNOWN


class _Chain:
    """The hooks of all interceptors for one method, in order."""

    __slots__ = (
        "afters",
        "all_sync",
        "befores",
        "counts",
        "merge",
        "method",
        "reads_metadata",
        "timing",
        "trailers",
    )

    def __init__(self, method: Method, hooks: Iterable[Hooks], timing: bool = True) -> None:
        self.method = method
        befores: list[tuple[Before, bool]] = []
        self.afters: list[After] = []
        self.counts = False
        self.reads_metadata = False
        trailers: list[tuple[str, Any]] = []
        for hook in hooks:
            if hook.before is not None:
                befores.append((hook.before, inspect.iscoroutinefunction(hook.before)))
            if hook.after is not None:
                self.afters.append(hook.after)
            self.counts = self.counts or hook.counts_messages
            self.reads_metadata = self.reads_metadata or hook.reads_metadata
            trailers.extend(hook.trailers)
        self.befores = tuple(befores)
        self.trailers = tuple(trailers)
        self.timing = timing
        self.merge = method.owns_metadata
        # When no before-hook is a coroutine function, ``enter`` calls them inline and a
        # normal call creates no coroutine for them.
        self.all_sync = not any(is_async for _, is_async in befores)

    def stamp(self, context: grpc.aio.ServicerContext, start: float) -> None:
        """The call's trailers as its status goes out: the hooks' and the server-timing."""
        if self.timing:
            stamped = (SERVER_TIMING, _timing_value(_now() - start))
            if self.merge:  # the handler's trailers too (a refusal may stamp twice)
                kept = [kv for kv in context.trailing_metadata() or () if kv[0] != SERVER_TIMING]
                context.set_trailing_metadata((*kept, stamped))
            else:
                context.set_trailing_metadata((*self.trailers, stamped))

    def enter(
        self, context: grpc.aio.ServicerContext, request: Any, start: float
    ) -> Awaitable[None] | None:
        """Set the hooks' trailers, run the before-hooks, then refuse an undecodable
        request; returns an awaitable only when there is something to wait for (an async
        hook, or a refusal)."""
        if self.trailers:
            context.set_trailing_metadata(self.trailers)
        metadata = context.invocation_metadata() or () if self.reads_metadata else ()
        if not self.all_sync:
            return self._enter_async(context, metadata, request, start)
        for before, _ in self.befores:
            refusal = before(context, metadata)
            if refusal is not None:  # an abort: it raises when awaited
                self.stamp(context, start)
                return refusal
        if request.__class__ is Malformed:
            self.stamp(context, start)
            return reject(context, request)
        return None

    async def _enter_async(
        self, context: grpc.aio.ServicerContext, metadata: Metadata, request: Any, start: float
    ) -> None:
        for before, is_async in self.befores:
            pending = before(context, metadata)
            if pending is not None and is_async:
                pending = await pending  # an async hook's refusal, if it has one
            if pending is not None:
                self.stamp(context, start)
                await pending
        if request.__class__ is Malformed:
            self.stamp(context, start)
            await reject(context, request)

    def run_afters(
        self,
        context: grpc.aio.ServicerContext,
        code: grpc.StatusCode,
        start: float,
        received: int,
        sent: int,
        peer: str | None = None,
    ) -> None:
        record = CallRecord(self.method, code, _now() - start, received, sent, context, peer)
        for after in self.afters:
            after(record)


class _Counter:
    __slots__ = ("n",)

    def __init__(self, n: int = 0) -> None:
        self.n = n


_ONE = _Counter(1)  # the count of a unary request: shared, never changed


async def _received(
    iterator: AsyncIterator[Any], counter: _Counter, context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    """A request stream, counted, with undecodable messages answered INVALID_ARGUMENT."""
    async for message in iterator:
        if message.__class__ is Malformed:
            await reject(context, message)
        counter.n += 1
        yield message


def _wrap_unary_response(chain: _Chain, behavior: Callable[..., Any]) -> Callable[..., Any]:
    """Handlers that return one response (unary and client streaming), and
    streaming handlers written as coroutines that call ``context.write``."""
    streaming_in = chain.method.request_streaming
    unary_out = not chain.method.response_streaming
    enter = chain.enter
    stamp = chain.stamp

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = _now()
        code = _OK
        received = _ONE
        if streaming_in:
            received = _Counter()
            request = _received(request, received, context)
        try:
            pending = enter(context, request, start)
            if pending is not None:
                await pending
            response = await behavior(request, context)
            stamp(context, start)
            code = final_code(context)
            return response
        except (asyncio.CancelledError, Exception) as exc:
            code = _failure_code(exc, context)
            if code is not _CANCELLED and code is not _DEADLINE:
                # UNKNOWN: grpc sends it after this, with these trailers; an abort from the
                # handler itself: the web port sends its status after this too.
                stamp(context, start)
            raise
        finally:
            if chain.afters:
                sent = 1 if unary_out and code is _OK else 0
                chain.run_afters(context, code, start, received.n, sent)

    return handler


def _wrap_stream_response(chain: _Chain, behavior: Callable[..., Any]) -> Callable[..., Any]:
    """Handlers written as async generators (server and bidi streaming)."""
    streaming_in = chain.method.request_streaming
    enter = chain.enter
    stamp = chain.stamp

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        start = _now()
        code = _OK
        sent = 0
        received = _ONE
        # Taken now: the finally below may run after grpc freed the call (see CallRecord).
        peer = context.peer() if chain.afters else None
        if streaming_in:
            received = _Counter()
            request = _received(request, received, context)
        try:
            pending = enter(context, request, start)
            if pending is not None:
                await pending
            async for response in behavior(request, context):
                sent += 1
                yield response
            stamp(context, start)
            code = final_code(context)
        except (asyncio.CancelledError, GeneratorExit, Exception) as exc:
            code = _failure_code(exc, context)
            if code is not _CANCELLED and code is not _DEADLINE:
                stamp(context, start)
            raise
        finally:
            if chain.afters:
                chain.run_afters(context, code, start, received.n, sent, peer)

    return handler


_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
_BEHAVIOR_FIELD = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def wrap_handler(
    method: Method,
    handler: grpc.RpcMethodHandler,
    interceptors: Iterable[Interceptor],
    timing: bool = True,
) -> grpc.RpcMethodHandler:
    """Return ``handler`` with the interceptors' hooks for ``method`` around its behaviour
    (and, with ``timing``, the server-timing trailer on every reply)."""
    shape = (handler.request_streaming, handler.response_streaming)
    behavior = getattr(handler, _BEHAVIOR_FIELD[shape])
    hooks = [h for h in (i.bind(method) for i in interceptors) if h is not None]
    chain = _Chain(method, hooks, timing)  # wrapped even without hooks: malformed requests
    if handler.response_streaming and inspect.isasyncgenfunction(behavior):
        wrapped = _wrap_stream_response(chain, behavior)
    elif inspect.iscoroutinefunction(behavior):
        wrapped = _wrap_unary_response(chain, behavior)
    else:  # a synchronous default (e.g. a base servicer's UNIMPLEMENTED stub)
        return handler
    return _FACTORIES[shape](
        wrapped,
        request_deserializer=tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class Registrar:
    """Stands in for a server when generated ``add_*_to_server`` functions run,
    so their method handlers can be wrapped before the real server sees them."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        # The handlers as installed, interceptors bound in: the web port serves these too.
        self.wrapped: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Generated code registers twice; the registered-method form is the one kept."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services[service] = dict(handlers)

    def install(
        self,
        servers: Sequence[grpc.aio.Server],
        interceptors: list[Interceptor],
        timing: bool = True,
    ) -> None:
        """Wrap every handler once and register the wrapped handlers on each server."""
        for service, handlers in self.services.items():
            wrapped = {
                name: wrap_handler(
                    Method(
                        service,
                        name,
                        h.request_streaming,
                        h.response_streaming,
                        handler_owns_metadata(h),
                    ),
                    h,
                    interceptors,
                    timing,
                )
                for name, h in handlers.items()
            }
            self.wrapped[service] = wrapped
            for server in servers:
                server.add_generic_rpc_handlers(
                    (grpc.method_handlers_generic_handler(service, wrapped),)
                )
                server.add_registered_method_handlers(service, wrapped)
