"""What every case gets: the target, one connection to it, --max-wait, and calls that speak
gRPC or gRPC-Web alike (:meth:`Context.unary`, :meth:`Context.server_stream`), each
returning a :class:`Reply` whatever happened, never raising for a status."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

import grpc

from greeter.client import Target, identity_of

# The client is never the limit: it sends and takes messages of any size.
CLIENT_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_metadata_size", 1024 * 1024),
)
# Slack on top of a case's own waits before it counts as hung: room for its lookup loops
# (greeter.check.lookup, 10 s each at most), which take turns with other cases'.
CASE_SLACK_S = 60.0
Metadata = Sequence[tuple[str, str | bytes]]


class CallOptions(TypedDict, total=False):
    """:meth:`Context.unary`'s and :meth:`Context.server_stream`'s keywords: the deadline
    (default 10 s, None: none), request metadata (after the target's -m) and compression."""

    timeout: float | None
    metadata: Metadata
    compression: grpc.Compression | None


@dataclass
class Reply:
    """How a call ended: status, messages (decoded), headers and trailers, times."""

    code: str
    details: str
    messages: list[Any] = field(default_factory=list)
    headers: list[tuple[str, Any]] = field(default_factory=list)
    trailers: list[tuple[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # s from the start, per message (gRPC)

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    def get(self, key: str) -> Any:
        """``key`` from the headers, else the trailers (``-bin`` values as bytes)."""
        for md in (self.headers, self.trailers):
            for k, v in md:
                if k == key:
                    if key.endswith("-bin") and isinstance(v, str):
                        return base64.b64decode(v + "=" * (-len(v) % 4))
                    return v
        return None

    @property
    def pod(self) -> str:
        """The pod that answered ("" when the reply carried no identity: not a pod's)."""
        return identity_of(self.headers, self.trailers).get("x-greeter-pod", "")

    @property
    def ended_by_pod(self) -> bool:
        """The status came from a pod: its identity is in the trailers (a stream's headers
        carry it too, so a stream a gateway cut still names the pod in its headers)."""
        return "x-greeter-pod" in identity_of(self.trailers)

    def status(self) -> str:
        text = f"{self.code}: {self.details}" if self.details else self.code
        return text if len(text) <= 200 else text[:197] + "..."


class Context:
    """One run's shared state. ``channel`` (gRPC) or ``web_channel`` (gRPC-Web) is open."""

    def __init__(self, target: Target, max_wait: float, web: bool = False) -> None:
        self.target = target
        self.max_wait = max_wait
        self.web = web
        self.channel: grpc.aio.Channel | None = None
        self.web_channel: Any = None
        self.interop = False
        self.lookup_lock = asyncio.Lock()  # greeter.check.lookup: one lookup loop at a time
        self.interop_missing = (
            "the target does not serve grpc.testing.TestService: start the pods with "
            "greeter serve --interop (chart: interop.enabled=true)"
        )

    def case_timeout(self, case: Any) -> float:
        return (2 * self.max_wait if case.long else 0.0) + CASE_SLACK_S

    def metadata(self, extra: Metadata = ()) -> list[tuple[str, Any]]:
        return [*self.target.metadata, *extra]

    # -- calls ----------------------------------------------------------------
    async def unary(
        self, path: str, request: Any, response_type: Any, **options: Unpack[CallOptions]
    ) -> Reply:
        return await self._call("unary_unary", path, request, response_type, **options)

    async def server_stream(
        self, path: str, request: Any, response_type: Any, **options: Unpack[CallOptions]
    ) -> Reply:
        return await self._call("unary_stream", path, request, response_type, **options)

    async def _call(
        self,
        kind: str,
        path: str,
        request: Any,
        response_type: Any,
        *,
        timeout: float | None = 10.0,
        metadata: Metadata = (),
        compression: grpc.Compression | None = None,
    ) -> Reply:
        if self.web:
            return await self._web(path, request, response_type, timeout, metadata)
        started = time.perf_counter()
        call = self.method(kind, path, response_type)(
            request, timeout=timeout, metadata=self.metadata(metadata), compression=compression
        )
        messages: list[Any] = []
        arrivals: list[float] = []
        try:
            if kind == "unary_unary":
                messages.append(await call)
                arrivals.append(time.perf_counter() - started)
            else:
                async for message in call:
                    messages.append(message)
                    arrivals.append(time.perf_counter() - started)
        except grpc.aio.AioRpcError as exc:
            reply = _failed(exc, started)
        else:
            reply = await _ended(call, started)
        reply.messages, reply.arrivals = messages, arrivals
        return reply

    def method(self, kind: str, path: str, response_type: Any) -> Any:
        """The channel's multicallable of ``kind`` (``unary_unary``, ``stream_stream``...)
        for ``path``: any request message, replies decoded as ``response_type``."""
        assert self.channel is not None
        return getattr(self.channel, kind)(
            path, request_serializer=_serialize, response_deserializer=response_type.FromString
        )

    async def _web(
        self,
        path: str,
        request: Any,
        response_type: Any,
        timeout: float | None,
        metadata: Metadata,
    ) -> Reply:
        md = [(k, base64.b64encode(v).decode() if isinstance(v, bytes) else v) for k, v in metadata]
        started = time.perf_counter()
        result = await self.web_channel.call(
            path, request.SerializeToString(), timeout=timeout, metadata=md
        )
        elapsed = time.perf_counter() - started
        try:
            messages = [response_type.FromString(m) for m in result.messages]
        except Exception as exc:  # a gateway's garbled body
            return Reply("INTERNAL", f"undecodable reply: {exc}", elapsed_s=elapsed)
        return Reply(
            result.code,
            result.details,
            messages,
            list(result.headers),
            list(result.trailers),
            elapsed,
            [elapsed] * len(messages),
        )


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


async def _ended(call: Any, started: float) -> Reply:
    code = await call.code()
    return Reply(
        code.name,
        await call.details() or "",
        headers=list(await call.initial_metadata() or ()),
        trailers=list(await call.trailing_metadata() or ()),
        elapsed_s=time.perf_counter() - started,
    )


def _failed(exc: grpc.aio.AioRpcError, started: float) -> Reply:
    return Reply(
        exc.code().name,
        exc.details() or "",
        headers=list(exc.initial_metadata() or ()),
        trailers=list(exc.trailing_metadata() or ()),
        elapsed_s=time.perf_counter() - started,
    )


async def gather_bounded(*aws: Any, limit: float) -> list[Any]:
    """Await all, giving up (TimeoutError) after ``limit`` seconds."""
    return list(await asyncio.wait_for(asyncio.gather(*aws), limit))
