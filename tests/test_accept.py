"""``accept_depth``: each listener keeps several requests for calls of each method in grpc-core,
so one HTTP/2 connection (a gateway's) is not limited to one accepted call per event-loop turn.
Speed is measured in ``bench.gateway``; these tests hold the calls accepted that way to every
rule the others follow: served, counted, drained, cancelled."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import channel_to, running, serving_line, until
from greeter import accept
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.settings import Settings

HelloRequest = helloworld_pb2.HelloRequest
# SayHello, SayHelloStreamReply, SayHelloBidiStream, Check, Watch, List and Readiness's own: the
# registered methods each listener keeps extra requests for (reflection's is one of them).
STREAM_COUNT = 20


def registered_methods(server) -> int:
    return len(server._acceptors[0]._methods) if server._acceptors else 0


def open_streams(stub, prefix: str, calls: int, replies: int, **kwargs) -> list:
    """``calls`` SayHelloStreamReply calls in flight at once, ``replies`` replies each."""
    return [
        stub.SayHelloStreamReply(
            HelloRequest(name=f"{prefix}{i}"),
            metadata=(("x-greeter-stream-count", str(replies)),),
            **kwargs,
        )
        for i in range(calls)
    ]


def handled(server, method: str, grpc_type: str, code: str) -> float:
    """``grpc_server_handled_total`` of one Greeter method and code (go-grpc-prometheus's
    spelling: ``OK``, ``Canceled``)."""
    labels = {
        "grpc_service": "helloworld.Greeter",
        "grpc_method": method,
        "grpc_type": grpc_type,
        "grpc_code": code,
    }
    return server.metrics.registry.get_sample_value("grpc_server_handled_total", labels) or 0.0


async def test_this_grpcio_has_the_internals_accept_depth_needs() -> None:
    # If a grpcio upgrade changes them the server falls back to depth 1 (and says so), and
    # this test is the one that tells: the gateway benchmark would lose a third. (A coroutine:
    # grpc.aio.server() wants an event loop, and after another module's async tests the
    # main thread has none of its own.)
    assert accept.supported() is None
    assert accept.supported(grpc.aio.server()) is None


def test_another_grpcio_series_or_server_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "not a cygrpc.AioServer" in (accept.supported(object()) or "")  # type: ignore[arg-type]
    monkeypatch.setattr(grpc, "__version__", "1.86.0")
    assert "1.86.0 is not the 1.85 series" in (accept.supported() or "")


def test_the_default_depth_is_the_one_measured_in_bench_gateway() -> None:
    assert Settings().accept_depth == 16


async def test_each_listener_keeps_depth_minus_one_extra_requests_per_method() -> None:
    async with running(listeners=2, accept_depth=4) as server:
        methods = registered_methods(server)
        assert methods >= 4  # the Greeter's three methods and health's Check at least
        assert server.accept_depth == 4
        assert server.accepting == 2 * 3 * methods
        async with channel_to(server) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            for i in range(20):
                assert (await stub.SayHello(HelloRequest(name=f"n{i}"))).message == f"Hello, n{i}!"
        # no extra task died with a call: each went on to wait for the next one
        assert server.accepting == 2 * 3 * methods
        assert server.accepted_ahead <= 20
        acceptors = list(server._acceptors)
    # drained: every extra task has ended (core failed their requests)
    assert acceptors
    assert all(a.outstanding == 0 for a in acceptors)


async def serves_at_depth_one(**settings: object) -> None:
    """A server with these settings keeps no extra request, and serves."""
    async with running(listeners=1, **settings) as server:
        assert server.accept_depth == 1
        assert server.accepting == 0
        async with channel_to(server) as channel:
            reply = await helloworld_pb2_grpc.GreeterStub(channel).SayHello(HelloRequest())
            assert reply.message == "Hello, world!"


async def test_depth_one_keeps_no_extra_request() -> None:
    await serves_at_depth_one(accept_depth=1)


async def test_many_calls_on_one_connection_are_all_served_and_counted() -> None:
    """One listener and one channel, as behind an Envoy worker: 400 unary calls, 16 streams
    and health checks at once."""
    async with running(listeners=1, accept_depth=8) as server:
        async with channel_to(server) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def read_all(call) -> list[str]:
                return [reply.message async for reply in call]

            unary = [stub.SayHello(HelloRequest(name=f"u{i}"), timeout=20) for i in range(400)]
            streams = [read_all(c) for c in open_streams(stub, "s", 16, STREAM_COUNT, timeout=20)]
            checks = [health.Check(health_pb2.HealthCheckRequest(), timeout=20) for _ in range(8)]
            replies, streamed, statuses = await asyncio.gather(
                asyncio.gather(*unary), asyncio.gather(*streams), asyncio.gather(*checks)
            )
        assert [r.message for r in replies] == [f"Hello, u{i}!" for i in range(400)]
        assert all(len(s) == STREAM_COUNT for s in streamed)
        assert all(s[0].startswith(f"Hello, s{i}!") for i, s in enumerate(streamed))
        assert {c.status for c in statuses} == {health_pb2.HealthCheckResponse.SERVING}
        assert handled(server, "SayHello", "unary", "OK") == 400
        # grpc.aio's own request takes one call per turn: the burst needed the extra ones
        assert server.accepted_ahead > 0


async def test_a_deadline_and_a_cancel_reach_calls_accepted_ahead() -> None:
    async with running(listeners=1, accept_depth=8, stream_interval=0.05) as server:
        async with channel_to(server) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            # more streams than one turn accepts, so most came through the extra requests
            calls = open_streams(stub, "c", 32, 1000)
            for call in calls:
                assert (await call.read()).message.startswith("Hello, c")
            for call in calls:
                call.cancel()
            for call in calls:
                assert await call.code() is grpc.StatusCode.CANCELLED
            timed = stub.SayHelloStreamReply(
                HelloRequest(), metadata=(("x-greeter-stream-count", "1000"),), timeout=0.3
            )
            with pytest.raises(grpc.aio.AioRpcError) as error:
                async for _ in timed:
                    pass
            assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert server.accepted_ahead > 0  # some of those calls came through the extra requests
        # the server records a cancel just after the client saw it: a bounded wait
        cancelled = await until(
            lambda: handled(server, "SayHelloStreamReply", "server_stream", "Canceled"),
            lambda n: n >= 32,
            timeout=10,
        )
        assert cancelled == 32


async def test_sigterm_drains_every_stream_in_flight_and_exits_cleanly(
    spawn_server: Callable,
) -> None:
    proc = spawn_server(
        "--listeners",
        "1",
        "--accept-depth",
        "16",
        env={"GREETER_GRACE_PERIOD": "10", "GREETER_STREAM_INTERVAL": "0.05"},
    )
    async with grpc.aio.insecure_channel(proc.address) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        calls = open_streams(stub, "d", 24, 20)
        for call in calls:
            await call.read()
        proc.proc.send_signal(signal.SIGTERM)
        for call in calls:
            rest = []
            while (message := await call.read()) is not grpc.aio.EOF:
                rest.append(message)
            assert len(rest) == 19
            assert await call.code() is grpc.StatusCode.OK
    code, _, err = await asyncio.to_thread(proc.wait, 20)
    assert code == 0, err
    assert serving_line(err)["accept_depth"] == 16
    troubles = ("Traceback", "never retrieved", "destroyed but it is pending", "outlived", "ERROR")
    for trouble in troubles:
        assert trouble not in err


async def test_a_grpcio_without_the_internals_falls_back_to_depth_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(accept, "supported", lambda server=None: "cygrpc._handle_rpc changed")
    with caplog.at_level(logging.WARNING, logger="greeter.server"):
        await serves_at_depth_one(accept_depth=8)
    warned = [r for r in caplog.records if "accept_depth" in r.getMessage()]
    assert len(warned) == 1
    assert warned[0].reason == "cygrpc._handle_rpc changed"  # type: ignore[attr-defined]
