"""Prometheus metrics scraped over HTTP equal the calls made, per method and code."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import channel_to, running, until
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.metrics import go_code_name

HelloRequest = helloworld_pb2.HelloRequest
GREETER = "helloworld.Greeter"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def labels(method: str, grpc_type: str) -> dict[str, str]:
    return {"grpc_service": GREETER, "grpc_method": method, "grpc_type": grpc_type}


async def test_counts_equal_calls_made_per_code():
    async with (
        running(fault_enabled=True, stream_count=3) as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for _ in range(7):
            await stub.SayHello(HelloRequest(name="m"))
        for status in ("UNAVAILABLE", "UNAVAILABLE", "PERMISSION_DENIED"):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.SayHello(HelloRequest(), metadata=(("x-greeter-fault-status", status),))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.SayHello(
                HelloRequest(), timeout=0.05, metadata=(("x-greeter-fault-delay-ms", "1000"),)
            )
        for _ in range(2):
            _ = [r async for r in stub.SayHelloStreamReply(HelloRequest())]
        _ = [r async for r in stub.SayHelloBidiStream(iter([HelloRequest()] * 4))]
        # the timed-out call is counted once the server has seen its end: wait, bounded
        deadline_exceeded = {"grpc_code": "DeadlineExceeded", **labels("SayHello", "unary")}
        samples = await until(
            lambda: scrape(server.metrics_port),
            lambda got: value(got, "grpc_server_handled_total", **deadline_exceeded) > 0,
            every=0.1,
        )

    unary = labels("SayHello", "unary")
    assert value(samples, "grpc_server_started_total", **unary) == 11
    assert value(samples, "grpc_server_handled_total", grpc_code="OK", **unary) == 7
    assert value(samples, "grpc_server_handled_total", grpc_code="Unavailable", **unary) == 2
    assert value(samples, "grpc_server_handled_total", grpc_code="PermissionDenied", **unary) == 1
    assert value(samples, "grpc_server_handled_total", grpc_code="DeadlineExceeded", **unary) == 1
    assert value(samples, "grpc_server_handling_seconds_count", **unary) == 11
    assert value(samples, "grpc_server_msg_received_total", **unary) == 11
    assert value(samples, "grpc_server_msg_sent_total", **unary) == 7

    stream = labels("SayHelloStreamReply", "server_stream")
    assert value(samples, "grpc_server_handled_total", grpc_code="OK", **stream) == 2
    assert value(samples, "grpc_server_msg_sent_total", **stream) == 6
    assert value(samples, "grpc_server_msg_received_total", **stream) == 2

    bidi = labels("SayHelloBidiStream", "bidi_stream")
    assert value(samples, "grpc_server_handled_total", grpc_code="OK", **bidi) == 1
    assert value(samples, "grpc_server_msg_received_total", **bidi) == 4
    assert value(samples, "grpc_server_msg_sent_total", **bidi) == 4
    # histogram buckets are cumulative and end at the count
    inf = value(samples, "grpc_server_handling_seconds_bucket", le="+Inf", **bidi)
    assert inf == 1


async def test_exceptions_and_malformed_bodies_are_counted():
    async with running() as server, channel_to(server) as channel:
        raw = channel.unary_unary("/helloworld.Greeter/SayHello")
        with pytest.raises(grpc.aio.AioRpcError):
            await raw(b"\xff\xff\xff")
        unary = labels("SayHello", "unary")
        # counted once the server has finished the call, which may be just after the client
        # saw its status: wait, bounded
        samples = await until(
            lambda: scrape(server.metrics_port),
            lambda got: value(got, "grpc_server_handling_seconds_count", **unary) > 0,
            every=0.05,
        )
    assert value(samples, "grpc_server_handled_total", grpc_code="InvalidArgument", **unary) == 1


async def test_process_and_build_info_metrics():
    async with running() as server:
        samples = scrape(server.metrics_port)
    names = {name for name, _ in samples}
    assert "process_resident_memory_bytes" in names
    assert "greeter_build_info" in names
    assert not any(name.endswith("_created") for name in names)


async def test_metrics_port_zero_turns_metrics_off():
    async with running(metrics_port=0) as server:
        assert server.metrics is None
        assert server.metrics_port == 0


def test_code_names_match_go():
    assert go_code_name(grpc.StatusCode.OK) == "OK"
    assert go_code_name(grpc.StatusCode.CANCELLED) == "Canceled"
    assert go_code_name(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"
    assert go_code_name(grpc.StatusCode.UNAUTHENTICATED) == "Unauthenticated"
