"""Identity metadata, auth, fault injection and the access log, over real calls."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import channel_to, running
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.client import identity_of
from greeter.interceptors.faults import sleep_at_least
from greeter.interceptors.metadata_limit import metadata_size
from greeter.server import HEADER_ALLOWANCE

HelloRequest = helloworld_pb2.HelloRequest


async def test_identity_in_unary_trailers_and_stream_headers():
    async with (
        running(cluster_name="east", pod_name="pod-7", node_name="node-1", zone="z1") as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        call = stub.SayHello(HelloRequest())
        await call
        expected = {
            "x-greeter-cluster": "east",
            "x-greeter-pod": "pod-7",
            "x-greeter-node": "node-1",
            "x-greeter-zone": "z1",
        }
        assert identity_of(await call.trailing_metadata()) == expected
        stream = stub.SayHelloStreamReply(HelloRequest())
        assert identity_of(await stream.initial_metadata()) == expected
        _ = [r async for r in stream]


async def test_identity_rides_on_failed_calls_too():
    async with running(fault_enabled=True) as server, channel_to(server) as channel:
        call = helloworld_pb2_grpc.GreeterStub(channel).SayHello(
            HelloRequest(), metadata=(("x-greeter-fault-status", "INTERNAL"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert identity_of(error.value.trailing_metadata())["x-greeter-pod"] == "pod-a"


TOKENS = ("all-access", "hello-only /helloworld.Greeter/SayHello")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_auth_rejects_and_accepts(tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text("# comment\nfrom-file helloworld.Greeter\n")
    async with (
        running(auth_enabled=True, auth_tokens=TOKENS, auth_tokens_file=str(token_file)) as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for metadata in (None, bearer("wrong"), (("authorization", "Basic abc"),), bearer("")):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.SayHello(HelloRequest(), metadata=metadata)
            assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in error.value.details()
        for token in ("all-access", "hello-only", "from-file"):
            reply = await stub.SayHello(HelloRequest(name="t"), metadata=bearer(token))
            assert reply.message == "Hello, t!"
        # a token limited to SayHello may not stream
        with pytest.raises(grpc.aio.AioRpcError) as error:
            _ = [
                r
                async for r in stub.SayHelloStreamReply(
                    HelloRequest(), metadata=bearer("hello-only")
                )
            ]
        assert error.value.code() is grpc.StatusCode.PERMISSION_DENIED
        # health is exempt by default
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_needs_a_token_when_not_exempt():
    async with (
        running(auth_enabled=True, auth_tokens=("t1",), auth_exempt=("reflection",)) as server,
        channel_to(server) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await health.Check(health_pb2.HealthCheckRequest())
        assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED
        reply = await health.Check(health_pb2.HealthCheckRequest(), metadata=bearer("t1"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_fault_percentages():
    async with (
        running(
            fault_enabled=True, fault_status_percent=100.0, fault_status=grpc.StatusCode.ABORTED
        ) as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.SayHello(HelloRequest())
            assert error.value.code() is grpc.StatusCode.ABORTED
        # health is never faulted, so probes keep working
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == 1


async def test_fault_delay_percent_delays_calls():
    async with (
        running(fault_enabled=True, fault_delay=0.5, fault_delay_percent=100.0) as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.SayHello(HelloRequest(), timeout=0.2)
        assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_injected_delay_is_never_short_under_uvloop():
    # uvloop's timers count from the loop's cached clock and may fire early by up to a
    # millisecond; a fault delay must still last at least what was asked.
    uvloop = pytest.importorskip("uvloop")

    async def shortest_overshoot() -> float:
        worst = 1.0
        for _ in range(60):
            sum(range(20_000))  # a busy loop turn makes the cached clock stale
            began = time.perf_counter()
            await sleep_at_least(0.005)
            worst = min(worst, time.perf_counter() - began - 0.005)
        return worst

    assert uvloop.run(shortest_overshoot()) >= 0


async def test_fault_metadata_is_ignored_unless_enabled(channel):
    stub = helloworld_pb2_grpc.GreeterStub(channel)
    reply = await stub.SayHello(
        HelloRequest(name="x"), metadata=(("x-greeter-fault-status", "INTERNAL"),)
    )
    assert reply.message == "Hello, x!"


async def test_bad_fault_metadata_is_invalid_argument():
    async with running(fault_enabled=True) as server, channel_to(server) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for key, value in (("x-greeter-fault-status", "NOPE"), ("x-greeter-fault-delay-ms", "-5")):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.SayHello(HelloRequest(), metadata=((key, value),))
            assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert key in error.value.details()


async def test_access_log_is_one_json_line_per_rpc_without_tokens(caplog):
    from greeter.logs import JsonFormatter

    caplog.set_level(logging.INFO, logger="greeter.access")
    async with (
        running(access_log=True, auth_enabled=True, auth_tokens=("sekrit-token",)) as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        await stub.SayHello(HelloRequest(), metadata=bearer("sekrit-token"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SayHello(HelloRequest(), metadata=bearer("sekrit-wrong"))
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name == "greeter.access"]
    entries = [json.loads(line) for line in lines]
    assert [e["code"] for e in entries] == ["OK", "UNAUTHENTICATED"]
    for entry in entries:
        assert entry["method"] == "/helloworld.Greeter/SayHello"
        assert entry["duration_ms"] >= 0
        assert entry["peer"]
        assert "authority" in entry
    assert "sekrit" not in "\n".join(lines)


async def test_access_log_sampling_keeps_errors(caplog):
    caplog.set_level(logging.INFO, logger="greeter.access")
    async with (
        running(
            access_log=True, access_log_sample=0.0, access_log_budget=0, fault_enabled=True
        ) as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for _ in range(20):
            await stub.SayHello(HelloRequest())
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SayHello(HelloRequest(), metadata=(("x-greeter-fault-status", "INTERNAL"),))
    codes = [r.code for r in caplog.records if r.name == "greeter.access"]
    assert codes == ["INTERNAL"]


async def test_access_log_budget_logs_every_call_of_a_quiet_server(caplog):
    caplog.set_level(logging.INFO, logger="greeter.access")
    async with (
        running(access_log=True, access_log_sample=0.0, access_log_budget=5) as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        await asyncio.wait_for(channel.channel_ready(), 10)
        caplog.clear()
        first = int(time.monotonic())  # the budget refills on each whole second
        for _ in range(30):
            await stub.SayHello(HelloRequest())
        seconds = int(time.monotonic()) - first + 1
    logged = [r for r in caplog.records if r.name == "greeter.access"]
    # 5 a second: each second the calls touched logs its 5, and the rest are dropped
    assert 5 <= len(logged) <= min(29, 5 * seconds)


async def test_access_log_sample_one_logs_everything(caplog):
    caplog.set_level(logging.INFO, logger="greeter.access")
    async with (
        running(access_log=True, access_log_sample=1.0, access_log_budget=0) as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for _ in range(30):
            await stub.SayHello(HelloRequest())
    assert len([r for r in caplog.records if r.name == "greeter.access"]) == 30


def padding(size: int) -> list[tuple[str, str]]:
    """Request metadata of exactly ``size`` bytes as the metadata limit counts it."""
    pads: list[tuple[str, str]] = []
    left = size
    while left:
        key = f"x-pad-{len(pads)}"
        value = "p" * min(1000, left - len(key) - 32)
        if left - len(key) - 32 - len(value) < 50:  # the last field takes what is left
            value = "p" * (left - len(key) - 32)
        pads.append((key, value))
        left -= len(key) + len(value) + 32
    assert metadata_size(pads) == size
    return pads


async def test_metadata_up_to_max_metadata_size_is_served_and_past_it_refused():
    """grpc-core's own limits follow max_metadata_size: 16 KiB of metadata (the default) is
    served every time (grpc-core's default soft limit, 8 KiB, refused most such calls at
    random); past the setting the metadata limit refuses it, past grpc-core's header-list
    limit (the setting + HEADER_ALLOWANCE) grpc-core does, both RESOURCE_EXHAUSTED."""
    async with running() as server, channel_to(server) as channel:
        say = helloworld_pb2_grpc.GreeterStub(channel).SayHello
        limit = server.settings.max_metadata_size
        assert limit == 16 * 1024
        for _ in range(10):  # the soft limit refused at random: every one must pass
            await say(HelloRequest(name="big"), metadata=padding(limit - 200))  # + user-agent
        for size, said in (
            (limit + 1024, "(max_metadata_size)"),
            (limit + HEADER_ALLOWANCE + 1024, "exceeds hard limit"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await say(HelloRequest(), metadata=padding(size))
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, size
            assert said in (error.value.details() or ""), error.value.details()


async def test_a_lower_max_metadata_size_is_grpc_cores_limit_too():
    async with running(max_metadata_size=4096) as server, channel_to(server) as channel:
        say = helloworld_pb2_grpc.GreeterStub(channel).SayHello
        await say(HelloRequest(), metadata=padding(4096 - 200))  # user-agent: the rest
        for size in (6 * 1024, 12 * 1024):  # grpc-core's defaults took 8 KiB, some 12 KiB
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await say(HelloRequest(), metadata=padding(size))
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, size
