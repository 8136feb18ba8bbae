"""One process's share of the load: channels, worker coroutines, recording.

The hot path is kept short, because a Python client spends most of its CPU in
grpc itself: requests are serialized once and sent as bytes through the
channel's multicallable (no per-call serializer), responses are not
deserialized (only counted), metadata is built once, each worker is a plain
loop (no task per call), the serving identity and the server's own time (its
``server-timing``, greeter.timing) are read from the trailers, and
latencies go straight into preallocated histogram counts. The timeline costs one comparison
per call (greeter.load.timeline).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from greeter import timing
from greeter.client import (
    ConnectFailed,
    TargetError,
    channel_options,
    connect_failure,
    credentials,
    wait_connected,
)
from greeter.load import h2engine, webengine
from greeter.load.config import CALLS, LoadConfig
from greeter.load.recorder import NO_SERVER_TIME, UNKNOWN, Backend, Recorder, record
from greeter.load.tracing import TRACEPARENT, Tracer, tracer_for
from greeter.threads import helper_threads

# Backend, Recorder, record and UNKNOWN live in greeter.load.recorder; importable from here.
__all__ = ["UNKNOWN", "Backend", "ConnectError", "Recorder", "Run", "record", "resolved_engine"]

CLUSTER_KEY = "x-greeter-cluster"
POD_KEY = "x-greeter-pod"
SERVER_TIMING_KEY = timing.KEY
STREAM_COUNT_HEADER = "x-greeter-stream-count"
DUE_SLACK = 1e-9  # seconds: 450 steps of 1/150 s fall short of 3 s by float rounding


class ConnectError(RuntimeError):
    """The target could not be reached (refused, TLS mismatch, timed out)."""


class Schedule:
    """Hands out calls: how many are left, until when, and (open loop) when each is due."""

    def __init__(self, config: LoadConfig, start: float, total: int | None, end: float | None):
        self._left = total
        self._end = end
        self._start = start
        self._open = config.open_loop
        self._rate_at = config.rate_at
        self._next_due = start
        self.stopped = False

    def next(self) -> float:
        """The due time of the next call (0.0: now, closed loop), or -1.0 when done."""
        if self.stopped:
            return -1.0
        if self._left is not None:
            if self._left <= 0:
                return -1.0
            self._left -= 1
        if not self._open:
            if self._end is not None and time.perf_counter() >= self._end:
                self.stopped = True
                return -1.0
            return 0.0
        due = self._next_due
        if self._end is not None and due >= self._end - DUE_SLACK:
            # No call is due before the end: this worker is done, but the others still
            # make the calls they were handed (``stopped`` would drop them).
            return -1.0
        self._next_due = due + 1.0 / self._rate_at(due - self._start)
        return due


def request_bytes(config: LoadConfig) -> bytes:
    from grpc_health.v1 import health_pb2

    from greeter._proto import helloworld_pb2

    message_type: Any = (
        health_pb2.HealthCheckRequest if config.call == "Check" else helloworld_pb2.HelloRequest
    )
    try:
        message = json_format.ParseDict(config.request, message_type())
    except json_format.ParseError as exc:
        raise TargetError(f"-d/--data does not fit {message_type.DESCRIPTOR.name}: {exc}") from None
    return bytes(message.SerializeToString())


def _metadata(config: LoadConfig) -> grpc.aio.Metadata | None:
    pairs = list(config.target.metadata)
    if config.stream_count is not None and config.call == "SayHelloStreamReply":
        pairs.append((STREAM_COUNT_HEADER, str(config.stream_count)))
    return grpc.aio.Metadata(*pairs) if pairs else None


def _identity(trailers: Any) -> tuple[str, str, int]:
    """Cluster, pod and the server's own time (µs; -1 if none) from a call's trailers."""
    cluster = pod = UNKNOWN
    server = NO_SERVER_TIME
    for key, value in trailers or ():
        if key == CLUSTER_KEY:
            cluster = value
        elif key == POD_KEY:
            pod = value
        elif key == SERVER_TIMING_KEY:
            found = server_us(value)
            if found is not None:
                server = found
    return cluster, pod, server


def _code_name(code: grpc.StatusCode | None) -> str:
    return code.name if code is not None else "UNKNOWN"


Caller = Callable[[Recorder, float], Any]
AUTO_H2 = True  # --engine auto picks h2 where it applies
server_us = timing.server_us


def resolved_engine(config: LoadConfig) -> str:
    """The engine that runs ``config``: ``h2`` (the lean HTTP/2 client), ``grpc``, or
    ``grpc-web`` (for ``--protocol grpc-web``)."""
    if config.protocol != "grpc":
        return "grpc-web"
    if config.engine == "grpc":
        return "grpc"
    if config.engine == "h2":
        return "h2"
    if not AUTO_H2:
        return "grpc"
    try:
        payload = request_bytes(config)
    except TargetError:
        return "grpc"
    return "grpc" if h2engine.applies(config.target, config.call, payload) else "h2"


def _prepare(
    metadata: grpc.aio.Metadata | None, tracer: Tracer | None
) -> Callable[[float], tuple[grpc.aio.Metadata | None, Any]]:
    """Per call: its metadata and record function; a call ``tracer`` samples carries a
    traceparent and is recorded by its trace too (greeter.load.tracing)."""
    plain = (metadata, record)
    if tracer is None:
        return lambda began: plain
    start = tracer.start
    base = tuple(metadata or ())

    def prepare(began: float) -> tuple[grpc.aio.Metadata | None, Any]:
        traced = start(began)
        if traced is None:
            return plain
        return grpc.aio.Metadata(*base, (TRACEPARENT, traced.header)), traced.record

    return prepare


def _make_caller(channel: Any, config: LoadConfig, tracer: Tracer | None = None) -> Caller:
    """A coroutine function doing one call and recording it, for the configured call kind."""
    path = CALLS[config.call]
    payload = request_bytes(config)
    timeout = config.timeout
    if config.protocol != "grpc":
        return webengine.make_caller(
            channel,
            config.call,
            path,
            payload,
            config.stream_count,
            timeout,
            config.connect_timeout,
            record,
            tracer,
        )
    if isinstance(channel, h2engine.H2Channel):
        return h2engine.make_caller(
            channel,
            path,
            payload,
            config.target.metadata,
            timeout,
            config.connect_timeout,
            record,
            tracer,
        )
    prepare = _prepare(_metadata(config), tracer)
    rpc_error = grpc.aio.AioRpcError

    def finish(
        rec: Recorder, began: float, code: str, trailers: Any, details: str, done: Any
    ) -> None:
        cluster, pod, server = _identity(trailers)
        done(rec, began, code, cluster, pod, details, None, server)

    if config.call in ("SayHello", "Check"):
        unary = channel.unary_unary(path, _registered_method=True)

        async def unary_call(rec: Recorder, began: float) -> None:
            metadata, done = prepare(began)
            call = unary(payload, timeout=timeout, metadata=metadata)
            try:
                await call
            except rpc_error as exc:
                code = _code_name(exc.code())
                finish(rec, began, code, exc.trailing_metadata(), exc.details(), done)
                return
            trailers = await call.trailing_metadata()
            rec.replies += 1
            finish(rec, began, "OK", trailers, "", done)

        return unary_call

    if config.call == "SayHelloStreamReply":
        server_stream = channel.unary_stream(path, _registered_method=True)

        async def stream_call(rec: Recorder, began: float) -> None:
            metadata, done = prepare(began)
            call = server_stream(payload, timeout=timeout, metadata=metadata)
            n = 0
            try:
                async for _ in call:
                    n += 1
            except rpc_error as exc:
                rec.replies += n
                code = _code_name(exc.code())
                finish(rec, began, code, exc.trailing_metadata(), exc.details(), done)
                return
            rec.replies += n
            finish(rec, began, "OK", await call.trailing_metadata(), "", done)

        return stream_call

    bidi = channel.stream_stream(path, _registered_method=True)
    sends = config.stream_count or 1

    async def bidi_call(rec: Recorder, began: float) -> None:
        metadata, done = prepare(began)
        call = bidi(timeout=timeout, metadata=metadata)
        n = 0
        try:
            for _ in range(sends):
                await call.write(payload)
                if await call.read() is grpc.aio.EOF:
                    break
                n += 1
            await call.done_writing()
            code = await call.code()
        except rpc_error as exc:
            rec.replies += n
            code_name = _code_name(exc.code())
            finish(rec, began, code_name, exc.trailing_metadata(), exc.details(), done)
            return
        rec.replies += n
        trailers = await call.trailing_metadata()
        if code is grpc.StatusCode.OK:
            finish(rec, began, "OK", trailers, "", done)
        else:
            finish(rec, began, _code_name(code), trailers, await call.details(), done)

    return bidi_call


def channel_args(index: int) -> list[tuple[str, object]]:
    # A private subchannel pool per channel: without it, channels with equal arguments share
    # one HTTP/2 connection, and --connections would spread nothing.
    return [("grpc.use_local_subchannel_pool", 1), ("greeter.load.connection", index)]


@contextlib.asynccontextmanager
async def connected(config: LoadConfig, first: int = 0) -> AsyncIterator[list[Any]]:
    """``config.connections`` ready channels (grpc channels or h2engine channels, as
    :func:`resolved_engine` says), or ConnectError with the reason."""
    target = config.target
    if config.protocol != "grpc":
        try:
            web = await webengine.open_channels(
                target,
                config.connections,
                config.connect_timeout,
                text=config.protocol == "grpc-web-text",
            )
        except OSError as exc:
            raise ConnectError(await asyncio.to_thread(connect_failure, target, str(exc))) from None
        try:
            yield web
        finally:
            await webengine.close_channels(web)
        return
    if resolved_engine(config) == "h2":
        try:
            h2channels = await h2engine.open_channels(
                target, config.connections, config.connect_timeout
            )
        except OSError as exc:
            raise ConnectError(await asyncio.to_thread(connect_failure, target, str(exc))) from None
        try:
            yield h2channels
        finally:
            await h2engine.close_channels(h2channels)
        return
    channels: list[grpc.aio.Channel] = []
    try:
        try:
            # Blocking for --insecure (it fetches the server's certificate): off the loop.
            creds, extra = await asyncio.to_thread(credentials, target, config.connect_timeout)
        except (OSError, ValueError) as exc:
            raise ConnectError(await asyncio.to_thread(connect_failure, target, str(exc))) from None
        # grpc's poller and I/O threads start with the first channel: born SCHED_BATCH,
        # they stop preempting the loop that generates the load (greeter.threads).
        with helper_threads("batch"):
            for i in range(config.connections):
                options = channel_options(target, [*channel_args(first + i), *extra])
                if creds is None:
                    channels.append(grpc.aio.insecure_channel(target.address, options=options))
                else:
                    channels.append(grpc.aio.secure_channel(target.address, creds, options=options))
        try:  # a refused port or a TLS mismatch fails at once, not after the timeout
            await asyncio.gather(
                *(wait_connected(ch, target, config.connect_timeout) for ch in channels)
            )
        except ConnectFailed as exc:
            raise ConnectError(str(exc)) from None
        yield channels
    finally:
        for ch in channels:
            await ch.close()


class Run:
    """The workers of one process over already connected channels."""

    def __init__(self, config: LoadConfig, channels: list[Any]) -> None:
        self.config = config
        self.tracer = tracer_for(config.trace_sample, CALLS[config.call])
        self.callers = [_make_caller(ch, config, self.tracer) for ch in channels]
        self.recorder = Recorder()
        self.schedule: Schedule | None = None
        self._stop = asyncio.Event()
        self.stopped_at = 0.0  # perf_counter() of stop(), 0 if not stopped

    async def _worker(self, caller: Caller, schedule: Schedule, rec: Recorder) -> None:
        perf = time.perf_counter
        sleep = asyncio.sleep
        while True:
            due = schedule.next()
            if due < 0:
                return
            if due:
                wait = due - perf()
                if wait > 0:
                    await sleep(wait)
                    if schedule.stopped:
                        return
                # Latency counts from when the call was due, not when a worker got to it:
                # a stalled server shows up in the numbers (no coordinated omission).
                await caller(rec, due)
            else:
                await caller(rec, perf())

    async def wait_until(self, start: float) -> None:
        """Sleep until ``start`` (a perf_counter() time), or until :meth:`stop`."""
        wait = start - time.perf_counter()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    async def phase(
        self, start: float, total: int | None, end: float | None, rec: Recorder, drain: float
    ) -> None:
        """Run the workers from ``start`` until the schedule is done, ``end`` passes or
        :meth:`stop` is called."""
        self.schedule = schedule = Schedule(self.config, start, total, end)
        wait = start - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        n = len(self.callers)
        workers = [
            asyncio.ensure_future(self._worker(self.callers[i % n], schedule, rec))
            for i in range(self.config.concurrency)
        ]
        everyone = asyncio.gather(*workers, return_exceptions=True)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            timeout = None if end is None else max(0.0, end - time.perf_counter())
            waiters: set[asyncio.Future[Any]] = {everyone, stopped}
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            schedule.stopped = True
            # Calls in flight at the end get a short while; the rest are cancelled and not
            # counted, as they never finished.
            await asyncio.wait(workers, timeout=drain)
        finally:
            schedule.stopped = True
            stopped.cancel()
            for w in workers:
                w.cancel()
            results = await everyone
        for result in results:
            if isinstance(result, Exception):
                raise result

    async def close(self) -> None:
        """After the run: the CLIENT spans still queued leave (--trace-sample, bounded)."""
        if self.tracer is not None:
            await self.tracer.close()

    @property
    def interrupted(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop issuing calls (Ctrl-C); the running phase ends after a short drain."""
        if not self._stop.is_set():
            self.stopped_at = time.perf_counter()
        self._stop.set()
        if self.schedule is not None:
            self.schedule.stopped = True


def start_loop(config: LoadConfig) -> None:
    """Use uvloop when asked for and installed."""
    if config.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
