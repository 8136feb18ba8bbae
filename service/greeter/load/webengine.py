"""The ``grpc-web`` engine: ``greeter load --protocol grpc-web`` (or ``grpc-web-text``).

Calls go through :class:`greeter.web.client.WebChannel` (gRPC-Web over HTTP/1.1, one call
at a time per connection, idle connections kept alive): each of the ``--connections``
channels opens as many connections as it has calls in flight, so ``-c`` is the number
of connections a gateway sees. The report is the gRPC engines' (status names, error
messages, identity from the response headers or trailers, by_cluster/by_pod).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from greeter import timing
from greeter.client import Target
from greeter.load.recorder import NO_SERVER_TIME
from greeter.web.client import WebChannel

CLUSTER_KEY = "x-greeter-cluster"
POD_KEY = "x-greeter-pod"
STREAM_COUNT_HEADER = "x-greeter-stream-count"
UNKNOWN = "(none)"
CALLS = ("SayHello", "SayHelloStreamReply", "Check")  # gRPC-Web has no client streams

# rec, began, code, cluster, pod, message, now (None: now), server µs (-1: no server-timing)
Record = Callable[[Any, float, str, str, str, str, float | None, int], None]


def applies(target: Target, call: str) -> str:
    """Why this engine cannot run the load ("" when it can)."""
    if call not in CALLS:
        return f"gRPC-Web carries unary and server-streaming calls only ({', '.join(CALLS)})"
    if target.lb_policy or target.address.startswith(("dns:", "unix:")):
        return "gRPC-Web needs a single host:port address"
    return ""


def make_caller(
    channel: WebChannel,
    call: str,
    path: str,
    payload: bytes,
    stream_count: int | None,
    timeout: float | None,
    connect_timeout: float,
    record: Record,
    tracer: Any = None,
) -> Callable[[Any, float], Any]:
    """A coroutine function making one call on ``channel`` and recording it; a call
    ``tracer`` samples (greeter.load.tracing) carries a traceparent."""
    extra: tuple[tuple[str, str], ...] = ()
    if stream_count is not None and call == "SayHelloStreamReply":
        extra = ((STREAM_COUNT_HEADER, str(stream_count)),)

    server_us = timing.server_us

    plain_record = record

    async def web_call(rec: Any, began: float) -> None:
        metadata, record = extra, plain_record
        traced = tracer.start(began) if tracer is not None else None
        if traced is not None:
            metadata, record = (*extra, ("traceparent", traced.header)), traced.record
        result = await channel.call(
            path, payload, timeout=timeout, connect_timeout=connect_timeout, metadata=metadata
        )
        rec.replies += len(result.messages)
        cluster = result.metadata(CLUSTER_KEY) or UNKNOWN
        pod = result.metadata(POD_KEY) or UNKNOWN
        stamped = result.metadata(timing.KEY)
        server = server_us(stamped) if stamped is not None else None
        record(
            rec, began, result.code, cluster, pod, result.details, None,
            NO_SERVER_TIME if server is None else server,
        )  # fmt: skip

    return web_call


async def open_channels(
    target: Target, connections: int, timeout: float, text: bool
) -> list[WebChannel]:
    """``connections`` channels, each with one connection open; raises OSError (refused,
    TLS, timed out) after closing whatever did connect."""
    channels = [WebChannel(target, text=text) for _ in range(connections)]
    results = await asyncio.gather(
        *(ch.connect(timeout) for ch in channels), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            await close_channels(channels)
            if isinstance(result, TimeoutError):
                raise OSError(f"not connected within {timeout:g}s")
            raise result
    return channels


async def close_channels(channels: Sequence[WebChannel]) -> None:
    await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
