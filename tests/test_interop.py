"""``greeter serve --interop``: grpc.testing.TestService as grpc's interop spec describes
the server, through the pipeline, within its limits; and the x-greeter-check-id log.

One server for the module (real grpc.aio client over loopback, the gRPC-Web port by raw
HTTP/1.1), with small interop limits so the limit cases are quick to reach.
"""

from __future__ import annotations

import asyncio
import struct
import time
import urllib.parse
import urllib.request

import grpc
import h2_client
import pytest
import pytest_asyncio
import web_support
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import free_port, running
from greeter._proto.grpc.testing import empty_pb2, messages_pb2, test_pb2_grpc
from greeter.interop.checklog import (
    CHECK_ID,
    CHECK_LOOKUP,
    CHECK_SEEN,
    CheckLog,
    Seen,
    valid_id,
)
from greeter.web import codec

pytestmark = pytest.mark.asyncio(loop_scope="module")

M = messages_pb2
MIB = 1024 * 1024
BIG = [("grpc.max_receive_message_length", 32 * MIB), ("grpc.max_send_message_length", 32 * MIB)]
LIMITS = {
    "interop_max_interval": 5.0,
    "interop_max_duration": 8.0,
    "interop_max_messages": 50,
}
SPECIAL = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
TEST = "/grpc.testing.TestService"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with running(interop=True, web_port=free_port(), listeners=1, **LIMITS) as srv:
        yield srv


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=BIG) as channel:
        yield test_pb2_grpc.TestServiceStub(channel)


def params(*sizes: int, interval_us: int = 0) -> list[messages_pb2.ResponseParameters]:
    return [M.ResponseParameters(size=s, interval_us=interval_us) for s in sizes]


async def failure(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    return error.value


async def seen(stub, call_id: str) -> Seen:
    call = stub.EmptyCall(empty_pb2.Empty(), metadata=[(CHECK_LOOKUP, call_id)])
    await call
    return Seen.parse(dict(await call.trailing_metadata())[CHECK_SEEN])


async def seen_ended(stub, call_id: str) -> Seen:
    """The server's after-hook runs just after the client saw the end: ask a few times."""
    for _ in range(100):
        found = await seen(stub, call_id)
        if found.state == "ended":
            return found
        await asyncio.sleep(0.02)
    return found


# -- the interop cases, server side ------------------------------------------------------


async def test_empty_unary_carries_identity_and_timing(stub):
    call = stub.EmptyCall(empty_pb2.Empty())
    assert await call == empty_pb2.Empty()
    trailers = dict(await call.trailing_metadata())
    assert trailers["x-greeter-pod"] == "pod-a"
    assert trailers["server-timing"].startswith("app;dur=")
    assert CHECK_SEEN not in trailers


async def test_large_unary_8_mib_both_ways(stub):
    request = M.SimpleRequest(response_size=8 * MIB, payload=M.Payload(body=bytes(8 * MIB)))
    reply = await stub.UnaryCall(request)
    assert reply.payload.body == bytes(8 * MIB)
    assert (await stub.CacheableUnaryCall(M.SimpleRequest(response_size=3))).payload.body == bytes(
        3
    )


async def test_fill_server_id(stub):
    reply = await stub.UnaryCall(M.SimpleRequest(fill_server_id=True))
    assert reply.server_id == reply.hostname == "pod-a"


async def test_client_streaming_aggregates(stub):
    sizes = [27182, 8, 1828, 45904]  # the interop spec's client_streaming
    requests = [M.StreamingInputCallRequest(payload=M.Payload(body=bytes(n))) for n in sizes]
    reply = await stub.StreamingInputCall(iter(requests))
    assert reply.aggregated_payload_size == sum(sizes)


async def test_server_streaming_sizes_and_interval(stub):
    sizes = [31415, 9, 2653, 58979]  # the interop spec's server_streaming
    began = time.monotonic()
    call = stub.StreamingOutputCall(
        M.StreamingOutputCallRequest(response_parameters=params(*sizes, interval_us=50_000))
    )
    got = [len(r.payload.body) async for r in call]
    assert got == sizes
    assert time.monotonic() - began >= 0.2  # four pauses of 50 ms, each before its reply
    assert dict(await call.initial_metadata())["x-greeter-pod"] == "pod-a"  # a stream's headers


async def test_ping_pong_answers_each_request_before_the_next(stub):
    sizes = [(31415, 27182), (9, 8), (2653, 1828), (58979, 45904)]
    call = stub.FullDuplexCall()
    for reply_size, request_size in sizes:
        await call.write(
            M.StreamingOutputCallRequest(
                response_parameters=params(reply_size), payload=M.Payload(body=bytes(request_size))
            )
        )
        reply = await call.read()  # before the next request is written: no buffering
        assert len(reply.payload.body) == reply_size
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def test_empty_stream(stub):
    call = stub.FullDuplexCall()
    await call.done_writing()
    assert [r async for r in call] == []
    assert await call.code() is grpc.StatusCode.OK


async def test_half_duplex_answers_after_half_close(stub):
    call = stub.HalfDuplexCall()
    await call.write(M.StreamingOutputCallRequest(response_parameters=params(1, 2)))
    await call.write(M.StreamingOutputCallRequest(response_parameters=params(3)))
    await call.done_writing()
    assert [len(r.payload.body) async for r in call] == [1, 2, 3]


ECHO = [("x-grpc-test-echo-initial", "test_initial_metadata_value")]
ECHO_BIN = ("x-grpc-test-echo-trailing-bin", b"\xab\xab\xab")


async def test_custom_metadata_unary(stub):
    call = stub.UnaryCall(M.SimpleRequest(response_size=314159), metadata=[*ECHO, ECHO_BIN])
    assert len((await call).payload.body) == 314159
    assert dict(await call.initial_metadata())["x-grpc-test-echo-initial"] == ECHO[0][1]
    trailers = dict(await call.trailing_metadata())
    assert trailers[ECHO_BIN[0]] == ECHO_BIN[1]
    assert trailers["x-greeter-pod"] == "pod-a"  # the pipeline's trailers are kept beside it
    assert trailers["server-timing"].startswith("app;dur=")


async def test_custom_metadata_full_duplex(stub):
    call = stub.FullDuplexCall(metadata=[*ECHO, ECHO_BIN])
    await call.write(M.StreamingOutputCallRequest(response_parameters=params(314159)))
    await call.done_writing()
    assert [len(r.payload.body) async for r in call] == [314159]
    initial = dict(await call.initial_metadata())
    assert initial["x-grpc-test-echo-initial"] == ECHO[0][1]
    assert initial["x-greeter-pod"] == "pod-a"
    assert dict(await call.trailing_metadata())[ECHO_BIN[0]] == ECHO_BIN[1]


@pytest.mark.parametrize("message", ["test status message", SPECIAL])
async def test_status_code_and_message_unary(stub, message):
    status = M.EchoStatus(code=2, message=message)
    error = await failure(
        stub.UnaryCall(M.SimpleRequest(response_status=status), metadata=[ECHO_BIN])
    )
    assert error.code() is grpc.StatusCode.UNKNOWN
    assert error.details() == message
    trailers = dict(error.trailing_metadata())
    assert trailers[ECHO_BIN[0]] == ECHO_BIN[1]
    assert trailers["x-greeter-pod"] == "pod-a"


async def test_status_code_and_message_streams(stub):
    status = M.EchoStatus(code=9, message=SPECIAL)
    call = stub.FullDuplexCall()
    await call.write(
        M.StreamingOutputCallRequest(response_parameters=params(1), response_status=status)
    )
    await call.done_writing()
    error = await failure(call)
    assert (error.code(), error.details()) == (grpc.StatusCode.FAILED_PRECONDITION, SPECIAL)
    call = stub.StreamingOutputCall(
        M.StreamingOutputCallRequest(response_parameters=params(4, 5), response_status=status)
    )
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as error_info:
        async for reply in call:
            got.append(len(reply.payload.body))
    assert got == [4, 5]  # the replies first, then the status
    assert error_info.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_unimplemented_method_and_service(server, stub):
    error = await failure(stub.UnimplementedCall(empty_pb2.Empty()))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED
    assert dict(error.trailing_metadata())["x-greeter-pod"] == "pod-a"  # through the pipeline
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        other = test_pb2_grpc.UnimplementedServiceStub(channel)
        error = await failure(other.UnimplementedCall(empty_pb2.Empty()))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED


# -- compression, seen on the wire (the compressed flag of each gRPC message) --------------


def _flags(result: h2_client.StreamResult) -> list[int]:
    flags, buf = [], bytes(result.data)
    while len(buf) >= 5:
        flag, size = struct.unpack(">BI", buf[:5])
        flags.append(flag)
        buf = buf[5 + size :]
    return flags


def _raw(port: int, method: str, request: bytes) -> h2_client.StreamResult:
    return h2_client.raw_call(
        port,
        f"{TEST}/{method}",
        h2_client.grpc_frame(request),
        extra=[("grpc-accept-encoding", "identity,deflate,gzip")],
    )


async def test_response_compressed_as_asked(server):
    def unary(compressed: bool) -> list[int]:
        request = M.SimpleRequest(
            response_size=314159, response_compressed=M.BoolValue(value=compressed)
        )
        result = _raw(server.port, "UnaryCall", request.SerializeToString())
        assert result.grpc_status == 0
        return _flags(result)

    assert await asyncio.to_thread(unary, True) == [1]
    assert await asyncio.to_thread(unary, False) == [0]
    request = M.StreamingOutputCallRequest(
        response_parameters=[
            M.ResponseParameters(size=31415, compressed=M.BoolValue(value=True)),
            M.ResponseParameters(size=92653, compressed=M.BoolValue(value=False)),
        ]
    )
    result = await asyncio.to_thread(
        _raw, server.port, "StreamingOutputCall", request.SerializeToString()
    )
    assert result.grpc_status == 0
    assert _flags(result) == [1, 0]


async def test_compressed_requests_are_read(stub):
    request = M.SimpleRequest(
        response_size=10,
        payload=M.Payload(body=bytes(271828)),
        expect_compressed=M.BoolValue(value=True),
    )
    reply = await stub.UnaryCall(request, compression=grpc.Compression.Gzip)
    assert len(reply.payload.body) == 10


# -- limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (
            M.SimpleRequest(response_size=8 * MIB + 1),
            "RESOURCE_EXHAUSTED",
            "interop_max_message_size",
        ),
        (M.SimpleRequest(response_size=-1), "INVALID_ARGUMENT", "negative"),
        (
            M.SimpleRequest(response_status=M.EchoStatus(code=99)),
            "INVALID_ARGUMENT",
            "no gRPC status",
        ),
    ],
)
async def test_unary_limits(stub, request_, code, needle):
    error = await failure(stub.UnaryCall(request_))
    assert error.code().name == code
    assert needle in error.details()


@pytest.mark.parametrize(
    ("parameters", "needle"),
    [
        (params(1, interval_us=5_000_001), "interop_max_interval"),
        (params(*[1] * 51), "interop_max_messages"),
        (params(1, 1, interval_us=4_500_000), "interop_max_duration"),
        (params(8 * MIB + 1), "interop_max_message_size"),
    ],
)
async def test_stream_limits_refuse_before_any_reply(stub, parameters, needle):
    call = stub.StreamingOutputCall(M.StreamingOutputCallRequest(response_parameters=parameters))
    error = await failure(call)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert needle in error.details()


async def test_duplex_limits_end_the_stream_mid_way(stub):
    call = stub.FullDuplexCall()
    for _ in range(25):
        await call.write(M.StreamingOutputCallRequest(response_parameters=params(1)))
        await call.read()
    await call.write(M.StreamingOutputCallRequest(response_parameters=params(*[1] * 26)))
    with pytest.raises(grpc.aio.AioRpcError) as error_info:
        while await call.read() is not grpc.aio.EOF:
            pass
    error = error_info.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "interop_max_messages (50) replies" in error.details()
    requests = [M.StreamingInputCallRequest()] * 51
    error = await failure(stub.StreamingInputCall(iter(requests)))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "interop_max_messages (50) request messages" in error.details()


# -- cancellation, deadlines and the check log ----------------------------------------------


async def test_deadline_ends_the_pause_and_is_recorded(stub):
    call = stub.FullDuplexCall(timeout=0.3, metadata=[(CHECK_ID, "deadline-1")])
    await call.write(
        M.StreamingOutputCallRequest(response_parameters=params(1, interval_us=4_000_000))
    )
    error = await failure(call)
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    found = await seen_ended(stub, "deadline-1")
    assert found.code == "DEADLINE_EXCEEDED"
    assert found.after_ms is not None
    assert found.after_ms < 4000  # the pause did not run out


async def test_cancel_is_recorded_and_running_calls_show(stub):
    call = stub.StreamingOutputCall(
        M.StreamingOutputCallRequest(response_parameters=params(1, 1, interval_us=4_000_000)),
        metadata=[(CHECK_ID, "cancel-1")],
    )
    await call.initial_metadata()  # the server has the call (headers go out at once)
    running_now = await seen(stub, "cancel-1")
    assert running_now.state == "running"
    assert running_now.code == ""
    call.cancel()
    found = await seen_ended(stub, "cancel-1")
    assert (found.state, found.code) == ("ended", "CANCELLED")
    assert found.after_ms is not None
    assert found.after_ms < 4000


async def test_cancel_after_begin_client_stream(stub):
    call = stub.StreamingInputCall(metadata=[(CHECK_ID, "cancel-begin")])
    await call.wait_for_connection()
    for _ in range(100):  # until the server has the call
        if (await seen(stub, "cancel-begin")).state == "running":
            break
        await asyncio.sleep(0.02)
    call.cancel()
    assert await call.code() is grpc.StatusCode.CANCELLED
    # grpc.aio ends the handler's request stream as if the caller had half-closed: the pod
    # answers (into the void) and records OK; docs/interop.md says to cancel during a pause.
    assert (await seen_ended(stub, "cancel-begin")).state == "ended"


async def test_check_lookup_ok_and_unknown(stub):
    await stub.UnaryCall(M.SimpleRequest(), metadata=[(CHECK_ID, "ok-1")])
    found = await seen_ended(stub, "ok-1")
    assert (found.state, found.code) == ("ended", "OK")
    assert (await seen(stub, "never-sent")).format() == "unknown"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 65])
async def test_bad_check_id_is_refused(stub, bad):
    error = await failure(stub.EmptyCall(empty_pb2.Empty(), metadata=[(CHECK_ID, bad)]))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert CHECK_ID in error.details()
    # refused before the handler: its trailers once, stamped once
    trailers = list(error.trailing_metadata())
    assert [k for k, _ in trailers].count("server-timing") == 1
    assert ("x-greeter-pod", "pod-a") in trailers


async def test_seen_format_and_parse():
    for text in ["unknown", "running;after_ms=1500", "ended;code=CANCELLED;after_ms=1003"]:
        assert Seen.parse(text).format() == text
    assert Seen.parse("ended;code=OK;after_ms=5;future=1") == Seen("ended", "OK", 5)
    for bad in ["gone", "ended;code", "running;after_ms=soon"]:
        with pytest.raises(ValueError, match="x-greeter-check-seen"):
            Seen.parse(bad)
    assert valid_id("abc-123_~!")
    assert not valid_id("a b")
    assert not valid_id("x" * 65)


async def test_check_log_is_bounded_by_count_and_age():
    now = [0.0]
    log = CheckLog(capacity=3, max_age=10.0, clock=lambda: now[0])
    entries = {name: log.started(name) for name in "abcd"}
    assert len(log) == 3
    assert log.seen("a").state == "unknown"  # the oldest went first
    now[0] = 5.0
    log.ended("b", entries["b"], "OK")
    assert log.seen("b") == Seen("ended", "OK", 5000)
    assert log.seen("c") == Seen("running", after_ms=5000)
    now[0] = 12.0  # c and d were last updated 12 s ago, b 7 s ago
    assert log.seen("c").state == "unknown"
    assert log.seen("b").state == "ended"
    now[0] = 16.0
    assert log.seen("b").state == "unknown"
    assert len(log) == 0


# -- drain, pipeline, reflection, gRPC-Web ---------------------------------------------------


async def test_drain_cancels_pauses_within_the_grace_period():
    async with (
        running(interop=True, listeners=1, grace_period=0.2) as srv,
        grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel,
    ):
        stub = test_pb2_grpc.TestServiceStub(channel)
        call = stub.StreamingOutputCall(
            M.StreamingOutputCallRequest(response_parameters=params(1, interval_us=60_000_000))
        )
        await call.initial_metadata()
        await srv.drain()  # returns: the 60 s pause was cancelled after the grace period
        assert await call.code() is not grpc.StatusCode.OK


async def test_metrics_count_interop_calls(server, stub):
    await stub.EmptyCall(empty_pb2.Empty())
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    assert 'grpc_service="grpc.testing.TestService"' in text
    assert 'grpc_method="EmptyCall"' in text


async def test_reflection_lists_the_interop_services(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in reflection.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"grpc.testing.TestService", "grpc.testing.UnimplementedService"} <= names


async def test_off_by_default():
    async with (
        running(listeners=1) as srv,
        grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel,
    ):
        error = await failure(test_pb2_grpc.TestServiceStub(channel).EmptyCall(empty_pb2.Empty()))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_unary_through_the_grpc_web_port(server):
    request = M.SimpleRequest(response_size=1000)
    reply = await web_support.request(
        server.web_port,
        f"{TEST}/UnaryCall",
        codec.frame(request.SerializeToString()),
        x_grpc_test_echo_initial="web-initial",
        x_grpc_test_echo_trailing_bin="q6ur",  # base64 of ab ab ab
    )
    assert reply.status == 200
    assert reply.grpc_status == 0
    assert len(M.SimpleResponse.FromString(reply.messages[0]).payload.body) == 1000
    assert reply.headers["x-grpc-test-echo-initial"] == "web-initial"
    assert reply.trailers["x-grpc-test-echo-trailing-bin"].rstrip("=") == "q6ur"
    assert reply.trailers["x-greeter-pod"] == "pod-a"
    failing = M.SimpleRequest(response_status=M.EchoStatus(code=2, message=SPECIAL))
    reply = await web_support.request(
        server.web_port, f"{TEST}/UnaryCall", codec.frame(failing.SerializeToString())
    )
    assert reply.grpc_status == 2
    assert urllib.parse.unquote(reply.trailers["grpc-message"]) == SPECIAL
