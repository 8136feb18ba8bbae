"""Malformed request bodies get INVALID_ARGUMENT instead of grpc.aio's UNKNOWN.

grpc.aio deserializes a request before the handler runs; a corrupt body
raises there, and the caller sees UNKNOWN with a traceback in the server log.
Here the deserializer hands back a :class:`Malformed` marker instead, and the
handler answers it with INVALID_ARGUMENT and a clear message.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from greeter.pipeline import Registrar


class Malformed:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any decode failure of outside input
            return Malformed(exc)

    return deserialize


async def _reject(context: grpc.aio.ServicerContext, marker: Malformed) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"malformed request message: {marker.error}"
    )


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    async for request in requests:
        if request.__class__ is Malformed:
            await _reject(context, request)
        yield request


def _guard(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    streaming_in, streaming_out = handler.request_streaming, handler.response_streaming
    field = {
        (False, False): "unary_unary",
        (False, True): "unary_stream",
        (True, False): "stream_unary",
        (True, True): "stream_stream",
    }[(streaming_in, streaming_out)]
    behavior = getattr(handler, field)
    if streaming_out and inspect.isasyncgenfunction(behavior):

        async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if streaming_in:
                request = _checked(request, context)
            elif request.__class__ is Malformed:
                await _reject(context, request)
            async for response in behavior(request, context):
                yield response

        wrapped: Callable[..., Any] = stream_out
    elif inspect.iscoroutinefunction(behavior):

        async def single_out(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if streaming_in:
                request = _checked(request, context)
            elif request.__class__ is Malformed:
                await _reject(context, request)
            return await behavior(request, context)

        wrapped = single_out
    else:
        return handler
    return handler._replace(
        request_deserializer=_tolerant(handler.request_deserializer), **{field: wrapped}
    )


def guard_malformed(registrar: Registrar) -> None:
    """Make every registered handler answer undecodable requests with INVALID_ARGUMENT."""
    for handlers in registrar.services.values():
        for name, handler in handlers.items():
            handlers[name] = _guard(handler)
