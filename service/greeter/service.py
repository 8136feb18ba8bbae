"""The helloworld.Greeter service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.settings import Settings

SERVICE_NAME = helloworld_pb2.DESCRIPTOR.services_by_name["Greeter"].full_name
STREAM_COUNT_HEADER = "x-greeter-stream-count"
STREAM_INTERVAL_HEADER = "x-greeter-stream-interval-ms"
HelloReply = helloworld_pb2.HelloReply


def _whole_number(text: str) -> int:
    """``text`` as a non-negative whole number, or -1. ``str.isdigit`` alone lets through
    digits ``int`` refuses ("²") and numbers too long to convert (over 4,300 digits)."""
    if not (text.isascii() and text.isdigit()):
        return -1
    try:
        return int(text)
    except ValueError:
        return -1


def greeting(name: str) -> str:
    return f"Hello, {name or 'world'}!"


class Greeter(helloworld_pb2_grpc.GreeterServicer):
    def __init__(self, settings: Settings) -> None:
        self._count = settings.stream_count
        self._interval = settings.stream_interval
        self._max = settings.stream_max

    async def SayHello(
        self, request: helloworld_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> helloworld_pb2.HelloReply:
        return HelloReply(message=greeting(request.name))

    async def _stream_shape(self, context: grpc.aio.ServicerContext) -> tuple[int, float]:
        count, interval = self._count, self._interval
        for key, value in context.invocation_metadata() or ():
            if key == STREAM_COUNT_HEADER:
                count = _whole_number(str(value))
                if not 0 <= count <= self._max:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{STREAM_COUNT_HEADER} must be a whole number from 0 to {self._max}",
                    )
            elif key == STREAM_INTERVAL_HEADER:
                try:
                    interval = float(value) / 1000
                    if not 0 <= interval <= 60:
                        raise ValueError
                except ValueError:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{STREAM_INTERVAL_HEADER} must be milliseconds from 0 to 60000",
                    )
        return count, interval

    async def SayHelloStreamReply(
        self, request: helloworld_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[helloworld_pb2.HelloReply]:
        count, interval = await self._stream_shape(context)
        text = greeting(request.name)
        for index in range(1, count + 1):
            if interval and index > 1:
                await asyncio.sleep(interval)
            yield HelloReply(message=f"{text} ({index}/{count})")

    async def SayHelloBidiStream(
        self,
        request_iterator: AsyncIterator[helloworld_pb2.HelloRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[helloworld_pb2.HelloReply]:
        answered = 0
        async for request in request_iterator:
            if answered >= self._max:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"a bidi stream may carry at most {self._max} messages (stream_max)",
                )
            answered += 1
            yield HelloReply(message=greeting(request.name))
