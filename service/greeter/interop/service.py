"""``grpc.testing.TestService`` and ``UnimplementedService``, as grpc's interop spec
(grpc/grpc doc/interop-test-descriptions.md) describes the server's side.

What each request field does here, and the limits, are in docs/interop.md. In short:

- replies carry a payload of ``response_size`` / ``size`` zero bytes;
- ``interval_us`` is a pause (an ``asyncio.sleep``: a cancel or the caller's deadline
  ends it at once) before that reply;
- ``response_status`` ends the call with that code and message (after the replies);
- ``x-grpc-test-echo-initial`` comes back in the response headers and
  ``x-grpc-test-echo-trailing-bin`` in the trailers;
- ``response_compressed`` / ``compressed`` compress those replies (gzip);
  ``expect_compressed`` cannot be checked (grpc.aio does not tell a handler whether a
  request message was compressed) and is accepted as it comes;
- FullDuplexCall answers each request as it arrives, HalfDuplexCall after the caller
  half-closes.

Work a caller asks for is bounded by the ``interop_max_*`` settings: a single request
asking past one is refused with RESOURCE_EXHAUSTED naming the setting before any reply;
a stream that runs past one mid-way ends with RESOURCE_EXHAUSTED there. Impossible
values (a negative size or interval, a status code that does not exist) get
INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from greeter._proto.grpc.testing import empty_pb2, messages_pb2, test_pb2, test_pb2_grpc
from greeter.interop.checklog import CHECK_ECHO, CHECK_LOOKUP, CHECK_SEEN, CheckLog
from greeter.pipeline import owns_metadata
from greeter.settings import Settings

TEST_SERVICE = test_pb2.DESCRIPTOR.services_by_name["TestService"].full_name
UNIMPLEMENTED_SERVICE = test_pb2.DESCRIPTOR.services_by_name["UnimplementedService"].full_name
SERVICE_NAMES = (TEST_SERVICE, UNIMPLEMENTED_SERVICE)
ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
_CODES = {code.value[0]: code for code in grpc.StatusCode}
Payload = messages_pb2.Payload
SimpleResponse = messages_pb2.SimpleResponse
StreamingOutputCallResponse = messages_pb2.StreamingOutputCallResponse
Pairs = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Limits:
    """The interop_max_* settings."""

    message_size: int
    interval: float
    duration: float
    messages: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        s = settings
        return cls(
            s.interop_max_message_size,
            s.interop_max_interval,
            s.interop_max_duration,
            s.interop_max_messages,
        )


class _Call:
    """One call's echo metadata, its start and what it has asked for so far."""

    __slots__ = ("asked", "context", "echo_initial", "limits", "replies", "requests", "start")

    def __init__(self, context: grpc.aio.ServicerContext, limits: Limits) -> None:
        self.context = context
        self.limits = limits
        self.start = time.monotonic()
        self.asked = 0.0  # seconds of pauses asked for
        self.replies = 0
        self.requests = 0
        self.echo_initial: Pairs = ()
        trailing: list[tuple[str, str | bytes]] = []
        for key, value in context.invocation_metadata() or ():
            if key == ECHO_INITIAL:
                self.echo_initial = ((key, value),)
            elif key in (ECHO_TRAILING, CHECK_ECHO):
                trailing.append((key, value))
        if trailing:  # next to the trailers the interceptors set (the serving identity)
            context.set_trailing_metadata((*(context.trailing_metadata() or ()), *trailing))

    async def fail(self, code: grpc.StatusCode, details: str) -> NoReturn:
        await self.context.abort(code, details, tuple(self.context.trailing_metadata() or ()))
        raise AssertionError("abort returned")  # pragma: no cover

    async def begin(self, headers: Pairs = (), compress: bool = False) -> None:
        """Before the first reply: compression, then the response headers (``headers``
        and the echo) when there are any. (grpc.aio compresses a unary reply only when
        the headers were sent on their own after set_compression.)"""
        if compress:
            self.context.set_compression(grpc.Compression.Gzip)
        if compress or headers or self.echo_initial:
            await self.context.send_initial_metadata((*headers, *self.echo_initial))

    async def size(self, size: int, field: str) -> bytes:
        if size < 0:
            await self.fail(_INVALID, f"{field} {size} is negative")
        if size > self.limits.message_size:
            await self.fail(
                _EXHAUSTED,
                f"{field} {size} is over interop_max_message_size ({self.limits.message_size})",
            )
        return bytes(size)

    async def request(self) -> None:
        """One more request message of a stream."""
        self.requests += 1
        if self.requests > self.limits.messages:
            await self.fail(
                _EXHAUSTED,
                f"more than interop_max_messages ({self.limits.messages}) request messages",
            )

    async def plan(self, parameters: Iterable[messages_pb2.ResponseParameters]) -> None:
        """Check a request's asked-for replies against the limits before any is sent."""
        limits = self.limits
        for p in parameters:
            await self.size(p.size, "size")
            if p.interval_us < 0:
                await self.fail(_INVALID, f"interval_us {p.interval_us} is negative")
            if p.interval_us / 1e6 > limits.interval:
                await self.fail(
                    _EXHAUSTED,
                    f"interval_us {p.interval_us} is over interop_max_interval"
                    f" ({limits.interval:g} s)",
                )
            self.asked += p.interval_us / 1e6
            self.replies += 1
        if self.replies > limits.messages:
            await self.fail(
                _EXHAUSTED, f"more than interop_max_messages ({limits.messages}) replies"
            )
        if self.asked > limits.duration:
            await self.fail(
                _EXHAUSTED,
                f"the pauses asked for ({self.asked:g} s) are over interop_max_duration"
                f" ({limits.duration:g} s)",
            )

    async def take(
        self, request: messages_pb2.StreamingOutputCallRequest
    ) -> grpc.StatusCode | None:
        """One request of a duplex stream, within the limits; the status it asks for."""
        await self.request()
        await self.plan(request.response_parameters)
        return await self.status(request.response_status)

    async def pause(self, interval_us: int) -> None:
        if not interval_us:
            return
        seconds = interval_us / 1e6
        if time.monotonic() - self.start + seconds > self.limits.duration:
            await self.fail(
                _EXHAUSTED,
                f"the call would last past interop_max_duration ({self.limits.duration:g} s)",
            )
        await asyncio.sleep(seconds)

    async def status(self, echo: messages_pb2.EchoStatus) -> grpc.StatusCode | None:
        """The status ``response_status`` asks for (None: OK), refused when unknown."""
        if not echo.code:
            return None
        code = _CODES.get(echo.code)
        if code is None:
            await self.fail(_INVALID, f"response_status.code {echo.code} is no gRPC status")
        return code

    def end(self, code: grpc.StatusCode | None, message: str) -> None:
        if code is not None:
            self.context.set_code(code)
            self.context.set_details(message)


def _compressed(value: messages_pb2.BoolValue) -> bool:
    return value.value


class TestService(test_pb2_grpc.TestServiceServicer):
    """grpc.testing.TestService within ``limits``; ``identity`` goes in the headers of
    its streams (as the Identity interceptor sends it for other streams)."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        limits: Limits,
        identity: Mapping[str, str],
        check_log: CheckLog | None = None,
        server_id: str = "",
    ) -> None:
        self._limits = limits
        self._identity = tuple(identity.items())
        self._check_log = check_log
        self._server_id = server_id

    @owns_metadata
    async def EmptyCall(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        call = _Call(context, self._limits)
        if self._check_log is not None:
            for key, value in context.invocation_metadata() or ():
                if key == CHECK_LOOKUP and isinstance(value, str):
                    seen = self._check_log.seen(value).format()
                    trailers = context.trailing_metadata() or ()
                    context.set_trailing_metadata((*trailers, (CHECK_SEEN, seen)))
                    break
        await call.begin()
        return empty_pb2.Empty()

    @owns_metadata
    async def UnaryCall(
        self, request: messages_pb2.SimpleRequest, context: grpc.aio.ServicerContext
    ) -> messages_pb2.SimpleResponse | None:
        call = _Call(context, self._limits)
        body = await call.size(request.response_size, "response_size")
        code = await call.status(request.response_status)
        await call.begin(compress=_compressed(request.response_compressed))
        if code is not None:
            call.end(code, request.response_status.message)
            return None
        reply = SimpleResponse(payload=Payload(body=body))
        if request.fill_server_id:
            reply.server_id = reply.hostname = self._server_id
        return reply

    CacheableUnaryCall = UnaryCall

    @owns_metadata
    async def StreamingOutputCall(
        self,
        request: messages_pb2.StreamingOutputCallRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
        call = _Call(context, self._limits)
        parameters = request.response_parameters
        await call.plan(parameters)
        code = await call.status(request.response_status)
        compress = any(_compressed(p.compressed) for p in parameters)
        await call.begin(self._identity, compress)
        for p in parameters:
            await call.pause(p.interval_us)
            if compress and not _compressed(p.compressed):
                context.disable_next_message_compression()
            yield StreamingOutputCallResponse(payload=Payload(body=bytes(p.size)))
        call.end(code, request.response_status.message)

    @owns_metadata
    async def StreamingInputCall(
        self,
        request_iterator: AsyncIterator[messages_pb2.StreamingInputCallRequest],
        context: grpc.aio.ServicerContext,
    ) -> messages_pb2.StreamingInputCallResponse:
        call = _Call(context, self._limits)
        total = 0
        async for request in request_iterator:
            await call.request()
            total += len(request.payload.body)
        await call.begin()
        return messages_pb2.StreamingInputCallResponse(aggregated_payload_size=total)

    @owns_metadata
    async def FullDuplexCall(
        self,
        request_iterator: AsyncIterator[messages_pb2.StreamingOutputCallRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
        call = _Call(context, self._limits)
        await call.begin(self._identity)  # at once: the caller may wait for them
        async for request in request_iterator:
            code = await call.take(request)
            for p in request.response_parameters:
                await call.pause(p.interval_us)
                yield StreamingOutputCallResponse(payload=Payload(body=bytes(p.size)))
            if code is not None:
                call.end(code, request.response_status.message)
                return

    @owns_metadata
    async def HalfDuplexCall(
        self,
        request_iterator: AsyncIterator[messages_pb2.StreamingOutputCallRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[messages_pb2.StreamingOutputCallResponse]:
        call = _Call(context, self._limits)
        await call.begin(self._identity)
        asked: list[tuple[int, int]] = []  # (size, interval_us): the payloads are not kept
        code: grpc.StatusCode | None = None
        message = ""
        async for request in request_iterator:
            status = await call.take(request)
            asked += [(p.size, p.interval_us) for p in request.response_parameters]
            if status is not None:
                code, message = status, request.response_status.message
        for size, interval_us in asked:
            await call.pause(interval_us)
            yield StreamingOutputCallResponse(payload=Payload(body=bytes(size)))
        call.end(code, message)

    async def UnimplementedCall(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{TEST_SERVICE}/UnimplementedCall")


class UnimplementedService(test_pb2_grpc.UnimplementedServiceServicer):
    """Every method answers UNIMPLEMENTED (through the pipeline, unlike a missing one)."""

    async def UnimplementedCall(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{UNIMPLEMENTED_SERVICE}/UnimplementedCall"
        )


def add_interop(
    registrar: Any,
    settings: Settings,
    identity: Mapping[str, str],
    check_log: CheckLog | None,
) -> None:
    """Register both services on a :class:`greeter.pipeline.Registrar`."""
    service = TestService(Limits.of(settings), identity, check_log, settings.pod_name)
    test_pb2_grpc.add_TestServiceServicer_to_server(service, registrar)
    test_pb2_grpc.add_UnimplementedServiceServicer_to_server(UnimplementedService(), registrar)
