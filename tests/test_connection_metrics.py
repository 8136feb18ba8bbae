"""Open connections and calls in flight per connection in /metrics (greeter.connections):
real servers, real client channels, read over HTTP as Prometheus would."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from collections.abc import AsyncIterator

import grpc
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import scrape

from conftest import running, until
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.connections import ConnectionReader, Connections
from greeter.server import CONNECTION_REFRESH_S

HelloRequest = helloworld_pb2.HelloRequest
CONNECTIONS = "greeter_server_connections"
IN_FLIGHT = "greeter_server_calls_in_flight"
BUSIEST = "greeter_server_connection_calls_in_flight_max"
# its own connection per channel: grpc would otherwise share one subchannel between them
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def gauges(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in (CONNECTIONS, IN_FLIGHT, BUSIEST)
    }


@contextlib.asynccontextmanager
async def channels(port: int, count: int) -> AsyncIterator[list[grpc.aio.Channel]]:
    opened = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) for _ in range(count)
    ]
    try:
        yield opened
    finally:
        for channel in opened:
            await channel.close()


async def test_connections_follow_channels_opening_and_closing() -> None:
    async with running(listeners=2) as server:
        assert gauges(server.metrics_port) == {CONNECTIONS: 0, IN_FLIGHT: 0, BUSIEST: 0}
        async with channels(server.port, 3) as three:
            for channel in three:  # a call each, so each has connected
                await helloworld_pb2_grpc.GreeterStub(channel).SayHello(HelloRequest())
            got = await until(
                lambda: gauges(server.metrics_port),
                lambda g: g == {CONNECTIONS: 3, IN_FLIGHT: 0, BUSIEST: 0},
            )
            assert got == {CONNECTIONS: 3, IN_FLIGHT: 0, BUSIEST: 0}
        got = await until(lambda: gauges(server.metrics_port), lambda g: g[CONNECTIONS] == 0)
        assert got == {CONNECTIONS: 0, IN_FLIGHT: 0, BUSIEST: 0}


async def test_calls_in_flight_per_connection() -> None:
    # Streams that take a while (10 replies, 0.2 s apart): 5 on one connection, 1 on another,
    # as a gateway funnels calls into one connection.
    async with running(stream_interval=0.2) as server, channels(server.port, 2) as (one, other):
        streams = [
            helloworld_pb2_grpc.GreeterStub(one).SayHelloStreamReply(HelloRequest())
            for _ in range(5)
        ]
        streams.append(helloworld_pb2_grpc.GreeterStub(other).SayHelloStreamReply(HelloRequest()))
        for stream in streams:  # each has started on the server
            await stream.read()
        got = await until(lambda: gauges(server.metrics_port), lambda g: g[IN_FLIGHT] == 6)
        assert got == {CONNECTIONS: 2, IN_FLIGHT: 6, BUSIEST: 5}
        for stream in streams:
            stream.cancel()
        got = await until(lambda: gauges(server.metrics_port), lambda g: g[IN_FLIGHT] == 0)
        assert got == {CONNECTIONS: 2, IN_FLIGHT: 0, BUSIEST: 0}


async def test_the_reader_sees_only_its_own_servers_port() -> None:
    # Two servers in one process: each counts its own port's connections, not the other's.
    async with running() as first, running() as second, channels(first.port, 2) as two:
        for channel in two:
            await helloworld_pb2_grpc.GreeterStub(channel).SayHello(HelloRequest())
        # (a call that has just ended can count as in flight for an instant: wait, bounded)
        mine = await until(
            lambda: ConnectionReader(f":{first.port}").read(), lambda c: c == Connections((0, 0))
        )
        assert mine == Connections((0, 0))
        assert ConnectionReader(f":{second.port}").read() == Connections()
        assert gauges(second.metrics_port)[CONNECTIONS] == 0


def test_workers_add_up_their_connections_for_the_parent(spawn_server) -> None:  # type: ignore[no-untyped-def]
    # --workers 2: each worker refreshes its gauges every few seconds, the parent's /metrics
    # adds them up (the busiest connection: the largest of the workers').
    server = spawn_server("--workers", "2")
    with contextlib.ExitStack() as stack:
        for _ in range(4):
            channel = stack.enter_context(
                grpc.insecure_channel(server.address, options=OWN_CONNECTION)
            )
            helloworld_pb2_grpc.GreeterStub(channel).SayHello(HelloRequest(), timeout=10)
        deadline = time.monotonic() + 3 * CONNECTION_REFRESH_S
        got = gauges(server.metrics_port)
        while got.get(CONNECTIONS) != 4 and time.monotonic() < deadline:
            time.sleep(0.2)
            got = gauges(server.metrics_port)
        assert got == {CONNECTIONS: 4, IN_FLIGHT: 0, BUSIEST: 0}
        # the calls grpc-core dropped: a counter the workers add to, none here
        assert scrape(server.metrics_port)[("greeter_server_core_dropped_total", ())] == 0
    code, _, err = server.stop(timeout=30)
    assert code == 0, err


async def test_one_channel_with_many_calls_is_served_whole_by_the_default_stream_limit() -> None:
    # docs/performance.md, "The server's default stream limit stays at 1000": it stays far
    # above what one client connection carries. A grpcio channel (one connection) with more
    # calls in flight than the limit gets some refused (UNAVAILABLE, docs/robustness.md F5);
    # 200 at once, as `greeter load -c 200 --engine grpc` or a gateway worker would send.
    calls = 200
    async with (
        running(stream_interval=0.5, stream_count=4) as server,
        channels(server.port, 1) as (channel,),
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        streams = [stub.SayHelloStreamReply(HelloRequest(), timeout=10) for _ in range(calls)]
        for stream in streams:  # each has started on the server
            await stream.read()
        got = await until(lambda: gauges(server.metrics_port), lambda g: g[IN_FLIGHT] == calls)
        assert got == {CONNECTIONS: 1, IN_FLIGHT: calls, BUSIEST: calls}
        for stream in streams:
            for _ in range(3):
                assert (await stream.read()).message
            assert await stream.code() == grpc.StatusCode.OK


async def test_a_unix_socket_server_counts_its_connections(tmp_path) -> None:  # type: ignore[no-untyped-def]
    host = f"unix:{tmp_path}/greeter.sock"
    async with running(host=host) as server, grpc.aio.insecure_channel(host) as channel:
        await helloworld_pb2_grpc.GreeterStub(channel).SayHello(HelloRequest())
        got = await until(lambda: gauges(server.metrics_port), lambda g: g[CONNECTIONS] == 1)
        assert got[CONNECTIONS] == 1
