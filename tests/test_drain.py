"""The Kubernetes termination contract, with real signals to a real process."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

HelloRequest = helloworld_pb2.HelloRequest


def phases(stderr: str) -> dict[str, dict]:
    found = {}
    for line in stderr.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "shutdown phase done":
            found[entry["phase"]] = entry
    return found


async def test_sigterm_drains_in_flight_stream_then_refuses_and_exits_0(spawn_server):
    proc = spawn_server(
        env={
            "GREETER_DRAIN_DELAY": "3.0",
            "GREETER_GRACE_PERIOD": "10",
            "GREETER_STREAM_INTERVAL": "0.1",
        }
    )
    async with grpc.aio.insecure_channel(proc.address) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        # a 5 s stream is in flight when SIGTERM arrives, and still is when the delay ends
        stream = stub.SayHelloStreamReply(
            HelloRequest(name="drain"), metadata=(("x-greeter-stream-count", "50"),)
        )
        first = await stream.read()
        assert first.message.startswith("Hello, drain!")
        sent_at = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        # health goes NOT_SERVING at once, and calls are still served in the drain delay
        while time.monotonic() - sent_at < 2.0:  # bounded, well inside the 3 s delay
            status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=2)).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.02)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert (await stub.SayHello(HelloRequest(name="late"), timeout=2)).message
        # the in-flight stream completes with OK
        rest = []
        while (message := await stream.read()) is not grpc.aio.EOF:
            rest.append(message)
        assert len(rest) == 49
        assert await stream.code() is grpc.StatusCode.OK
        # after the drain delay, new calls on a fresh connection are refused
        await asyncio.sleep(max(0.0, 3.2 - (time.monotonic() - sent_at)))
    async with grpc.aio.insecure_channel(proc.address) as fresh:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await helloworld_pb2_grpc.GreeterStub(fresh).SayHello(HelloRequest(), timeout=2)
        assert error.value.code() is grpc.StatusCode.UNAVAILABLE
    rc, _, err = await asyncio.to_thread(proc.wait, 15)
    took = time.monotonic() - sent_at
    assert rc == 0
    assert took < 3.0 + 10 + 3  # drain delay + grace + margin
    logged = phases(err)
    assert list(logged) == ["not_serving", "drain_delay", "stop", "metrics"]
    assert logged["drain_delay"]["took_s"] >= 2.9


async def test_grace_period_cancels_what_is_left(spawn_server):
    proc = spawn_server(env={"GREETER_GRACE_PERIOD": "0.5", "GREETER_STREAM_INTERVAL": "0.2"})
    async with grpc.aio.insecure_channel(proc.address) as channel:
        stream = helloworld_pb2_grpc.GreeterStub(channel).SayHelloStreamReply(
            HelloRequest(), metadata=(("x-greeter-stream-count", "1000"),)
        )
        await stream.read()
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError):
            while await stream.read() is not grpc.aio.EOF:
                pass
    rc, _, _ = await asyncio.to_thread(proc.wait, 15)
    assert rc == 0
    assert time.monotonic() - started < 5


def test_second_signal_exits_at_once_non_zero(spawn_server):
    proc = spawn_server(env={"GREETER_DRAIN_DELAY": "30"})
    proc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    rc = proc.proc.wait(timeout=10)
    assert rc == 128 + signal.SIGINT
    assert time.monotonic() - started < 5


def test_sigint_drains_like_sigterm(spawn_server):
    proc = spawn_server()
    proc.proc.send_signal(signal.SIGINT)
    rc = proc.proc.wait(timeout=15)
    assert rc == 0
