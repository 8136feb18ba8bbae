"""A ``grpc.aio.ServicerContext`` for a call that came in as gRPC-Web.

The wrapped handlers of :mod:`greeter.pipeline` (interceptors bound in) run unchanged on
it: ``abort`` raises ``grpc.aio.AbortError`` after setting the code, metadata set by the
interceptors is kept for the response, and the deadline is the one ``grpc-timeout`` sent.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc

Pairs = Sequence[tuple[str, str | bytes]]

_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(text: str) -> float:
    """``grpc-timeout`` (``100m``, ``5S``: at most 8 digits and a unit) → seconds."""
    digits, unit = text[:-1], text[-1:]
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 8 or unit not in _UNITS:
        raise ValueError(f"bad grpc-timeout {text[:20]!r}")
    return int(digits) * _UNITS[unit]


def metadata_value(key: str, value: str) -> str | bytes:
    """Binary metadata (``-bin`` keys) travels base64-encoded in HTTP/1.1 headers."""
    if not key.endswith("-bin"):
        return value
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return value.encode()


class WebContext(grpc.aio.ServicerContext):
    __slots__ = (
        "_code",
        "_deadline",
        "_details",
        "_initial",
        "_metadata",
        "_peer",
        "_trailing",
        "cancelled_by_client",
        "finished",
    )

    def __init__(self, metadata: Pairs, peer: str, timeout: float | None) -> None:
        self._metadata = tuple(metadata)
        self._peer = peer
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._initial: list[tuple[str, str | bytes]] = []
        self._trailing: list[tuple[str, str | bytes]] = []
        self.cancelled_by_client = False
        self.finished = False

    # -- what the handler and the interceptors use -------------------------------
    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Pairs = ()
    ) -> NoReturn:
        self._code = code
        self._details = details
        if trailing_metadata:
            self._trailing = list(trailing_metadata)
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: Any) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Pairs) -> None:
        self._trailing = list(trailing_metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return tuple(self._trailing)

    async def send_initial_metadata(self, initial_metadata: Pairs) -> None:
        # Kept for the HTTP response headers, which go out with the first message.
        self._initial = list(initial_metadata)

    def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return tuple(self._initial)

    def cancelled(self) -> bool:
        return self.cancelled_by_client

    def done(self) -> bool:
        return self.finished

    # -- not meaningful for gRPC-Web ----------------------------------------------
    async def read(self) -> Any:
        raise RuntimeError("gRPC-Web calls have no request stream")

    async def write(self, message: Any) -> None:
        raise RuntimeError("gRPC-Web handlers yield their replies")

    def set_compression(self, compression: grpc.Compression) -> None:
        """Responses are not compressed on the web port."""

    def disable_next_message_compression(self) -> None:
        """Nothing is compressed."""

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def add_done_callback(self, callback: Any) -> None:
        raise RuntimeError("not supported on gRPC-Web calls")


def cancel_code(context: WebContext) -> grpc.StatusCode:
    """A handler cancelled by its deadline or by its client: which it was."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED
