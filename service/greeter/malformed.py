"""Malformed request bodies get INVALID_ARGUMENT instead of grpc.aio's UNKNOWN.

grpc.aio deserializes a request before the handler runs; a corrupt body
raises there, and the caller sees UNKNOWN with a traceback in the server log.
Here the deserializer hands back a :class:`Malformed` marker instead, and the
pipeline's single wrapper layer (:mod:`greeter.pipeline`) answers it with
INVALID_ARGUMENT and a clear message, after the interceptors' before-hooks ran
(so auth still decides first, and metrics count the call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


class Malformed:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any decode failure of outside input
            return Malformed(exc)

    return deserialize


async def reject(context: grpc.aio.ServicerContext, marker: Malformed) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"malformed request message: {marker.error}"
    )
