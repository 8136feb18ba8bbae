"""Connection management: settings reach the HTTP/2 layer (item 7 of the service issue)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from conftest import channel_to, running
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.server import server_options
from greeter.settings import Settings

HelloRequest = helloworld_pb2.HelloRequest


async def peers_of_two_calls(caplog, rotates: bool, **overrides) -> list[str]:
    caplog.set_level(logging.INFO, logger="greeter.access")
    async with running(access_log=True, **overrides) as server, channel_to(server) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        await stub.SayHello(HelloRequest())
        if rotates:  # wait (bounded) for the server's GOAWAY to take the connection away
            ready = grpc.ChannelConnectivity.READY
            await asyncio.wait_for(channel.wait_for_state_change(ready), 10)
        else:
            await asyncio.sleep(1.5)
        await stub.SayHello(HelloRequest(), wait_for_ready=True)
    return [r.peer for r in caplog.records if r.name == "greeter.access"]


async def test_max_connection_age_rotates_connections(caplog):
    peers = await peers_of_two_calls(
        caplog, rotates=True, max_connection_age=0.5, max_connection_age_grace=0.2
    )
    assert len(peers) == 2
    assert peers[0] != peers[1]


async def test_connections_live_on_without_max_age(caplog):
    peers = await peers_of_two_calls(caplog, rotates=False)
    assert len(peers) == 2
    assert peers[0] == peers[1]


def test_options_follow_settings():
    options = dict(
        server_options(
            Settings(
                keepalive_time=30,
                keepalive_timeout=5,
                max_connection_idle=60,
                max_connection_age=120,
                max_connection_age_grace=10,
                max_concurrent_streams=50,
                max_recv_message_size=2048,
                max_send_message_size=4096,
            )
        )
    )
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.max_connection_idle_ms"] == 60_000
    assert options["grpc.max_connection_age_ms"] == 120_000
    assert options["grpc.max_connection_age_grace_ms"] == 10_000
    assert options["grpc.max_concurrent_streams"] == 50
    assert options["grpc.max_receive_message_length"] == 2048
    assert options["grpc.max_send_message_length"] == 4096
    # Listeners share the port on purpose (after a probe, tests/test_listeners.py); a lone
    # server must not share it.
    assert options["grpc.so_reuseport"] == 1
    lone = dict(server_options(Settings(listeners=1)))
    assert lone["grpc.so_reuseport"] == 0
    unix = dict(server_options(Settings(host="unix:/tmp/g.sock")))
    assert unix["grpc.so_reuseport"] == 0


@pytest.mark.parametrize("age", [0.0])
def test_zero_age_means_unlimited(age):
    options = dict(server_options(Settings(max_connection_age=age, max_connection_idle=0)))
    assert "grpc.max_connection_age_ms" not in options
    assert "grpc.max_connection_idle_ms" not in options


async def test_max_send_message_size_limits_replies():
    async with running(max_send_message_size=1024) as server, channel_to(server) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.SayHello(HelloRequest(name="y" * 2000))
        assert error.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
