"""Malformed gRPC at the HTTP/2 level, sent with a raw ``h2`` client over a plain
socket to an in-process Greeter on 127.0.0.1.

Every case asserts what the server actually answers (grpc-status, RST_STREAM
code or GOAWAY) and then that an ordinary gRPC call still succeeds. The raw
client blocks, so it runs in a thread while the server runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from h2_client import BIDI, SAY_HELLO, STREAM_REPLY, H2Client, StreamResult, grpc_frame, hello

from conftest import channel_to, running
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.server import GreeterServer, header_list_limit

pytestmark = pytest.mark.timeout(60)

MAX_RECV = 2048
OK, INVALID_ARGUMENT, DEADLINE, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL = 0, 3, 4, 8, 12, 13
H2_INTERNAL_ERROR, H2_CANCEL = 0x2, 0x8


@pytest.fixture
async def server() -> AsyncIterator[GreeterServer]:
    async with running(max_recv_message_size=MAX_RECV, max_connection_idle=1.0) as srv:
        yield srv


async def assert_still_serving(server: GreeterServer) -> None:
    async with channel_to(server) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        reply = await stub.SayHello(helloworld_pb2.HelloRequest(name="after"), timeout=5)
        assert reply.message == "Hello, after!"


async def raw(
    server: GreeterServer, path: str, body: bytes | None, **kwargs: object
) -> StreamResult:
    def go() -> StreamResult:
        with H2Client(server.port, timeout=5.0) as client:
            return client.call(path, body, **kwargs)

    return await asyncio.to_thread(go)


async def test_well_formed_raw_call_is_answered(server: GreeterServer) -> None:
    """The control case: the raw client itself speaks correct gRPC."""
    result = await raw(server, SAY_HELLO, grpc_frame(hello("raw")))
    assert (result.http_status, result.grpc_status) == (200, OK)
    assert result.messages() == [b"\x0a\x0bHello, raw!"]


async def test_length_prefix_longer_than_body_ends_at_the_deadline(server: GreeterServer) -> None:
    """Prefix says 100 bytes, 6 arrive, then END_STREAM. grpc-core keeps waiting for
    the rest (it never answers INTERNAL), so only the call's deadline ends it."""
    body = grpc_frame(hello(), length=100)
    result = await raw(server, SAY_HELLO, body, extra=[("grpc-timeout", "500m")])
    assert result.grpc_status == DEADLINE
    await assert_still_serving(server)


async def test_length_prefix_longer_without_deadline_is_freed_by_rst(
    server: GreeterServer,
) -> None:
    """Without a deadline the half-finished request is held until the client resets it;
    the same connection then carries a normal call."""

    def go() -> tuple[StreamResult, StreamResult]:
        with H2Client(server.port, timeout=5.0) as client:
            sid = client.start(SAY_HELLO, body=grpc_frame(hello(), length=100))
            stuck = client.wait(sid, timeout=1.0)
            client.reset(sid)
            return stuck, client.call(SAY_HELLO, grpc_frame(hello()))

    stuck, after = await asyncio.to_thread(go)
    assert not stuck.done  # nothing came back for the truncated message
    assert after.grpc_status == OK
    await assert_still_serving(server)


async def test_length_prefix_shorter_than_body(server: GreeterServer) -> None:
    """Prefix says 2 bytes of a 4-byte message: the 2 bytes are a truncated field,
    so deserialisation fails: INVALID_ARGUMENT (greeter.malformed), not grpc.aio's UNKNOWN."""
    result = await raw(server, SAY_HELLO, grpc_frame(hello("ab"), length=2))
    assert result.grpc_status == INVALID_ARGUMENT
    assert result.grpc_message.startswith("malformed request message")
    await assert_still_serving(server)


async def test_compressed_flag_without_grpc_encoding(server: GreeterServer) -> None:
    result = await raw(server, SAY_HELLO, grpc_frame(hello(), compressed=True))
    assert result.grpc_status == INTERNAL
    assert "Compression bit set" in result.grpc_message
    await assert_still_serving(server)


async def test_garbage_protobuf(server: GreeterServer) -> None:
    result = await raw(server, SAY_HELLO, grpc_frame(b"\xff\xff\xff\xff\x0f"))
    assert result.grpc_status == INVALID_ARGUMENT
    assert "Error parsing message" in result.grpc_message
    await assert_still_serving(server)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
async def test_wrong_content_type_is_served(
    server: GreeterServer, content_type: str | None
) -> None:
    """The spec says a server SHOULD answer 415; grpc-core ignores content-type and
    serves the call. Asserted so a change in grpc-core shows up here."""
    result = await raw(server, SAY_HELLO, grpc_frame(hello()), content_type=content_type)
    assert (result.http_status, result.grpc_status) == (200, OK)
    await assert_still_serving(server)


@pytest.fixture
async def server_without_idle_limit() -> AsyncIterator[GreeterServer]:
    async with running(max_recv_message_size=MAX_RECV) as srv:
        yield srv


async def test_missing_te_trailers_is_reset(server_without_idle_limit: GreeterServer) -> None:
    """grpc-core resets the stream, but not at once: 0.1 s typically, up to about 1 s
    (p99 0.92 s, max 0.96 s over 300 calls). With the 1 s idle limit of the other cases
    the idle GOAWAY sometimes came first (about 1 call in 100), so this case gets a
    server without one."""
    server = server_without_idle_limit
    result = await raw(server, SAY_HELLO, grpc_frame(hello()), te=None)
    assert result.reset_code == H2_INTERNAL_ERROR
    assert result.grpc_status is None
    await assert_still_serving(server)


@pytest.mark.parametrize(
    "path", ["/helloworld.Greeter/Nope", "/no.such.Service/SayHello", "/", "/helloworld.Greeter"]
)
async def test_unknown_method_is_unimplemented(server: GreeterServer, path: str) -> None:
    result = await raw(server, path, grpc_frame(hello()))
    assert result.grpc_status == UNIMPLEMENTED
    await assert_still_serving(server)


async def test_request_over_max_recv_message_size(server: GreeterServer) -> None:
    name = b"x" * (MAX_RECV + 10)
    payload = b"\x0a" + bytes([0x80 | (len(name) & 0x7F), len(name) >> 7]) + name
    result = await raw(server, SAY_HELLO, grpc_frame(payload))
    assert result.grpc_status == RESOURCE_EXHAUSTED
    assert f"vs. {MAX_RECV}" in result.grpc_message
    await assert_still_serving(server)


async def test_metadata_under_the_header_list_limit_is_served(server: GreeterServer) -> None:
    result = await raw(server, SAY_HELLO, grpc_frame(hello()), extra=[("x-pad", "a" * 7000)])
    assert result.grpc_status == OK


async def test_huge_metadata_past_the_header_list_limit(server: GreeterServer) -> None:
    """4 MiB of metadata, 200 times the advertised SETTINGS_MAX_HEADER_LIST_SIZE
    (max_metadata_size + 4 KiB, 20 KiB). grpc-core 1.85 refused only some of these itself
    with its default limits; the server's metadata-limit hook refuses the rest
    (docs/robustness.md). Every call is refused, and the server keeps serving."""
    advertised: dict[str, int | None] = {}

    def go() -> list[StreamResult]:
        results = []
        for _ in range(4):
            with H2Client(server.port, timeout=10.0) as client:
                client.wait_settings()
                advertised["limit"] = client.conn.remote_settings.max_header_list_size
                big = [("x-pad", "a" * (4 << 20))]
                results.append(client.call(SAY_HELLO, grpc_frame(hello()), extra=big))
        return results

    results = await asyncio.to_thread(go)
    assert advertised["limit"] == header_list_limit(server.settings) == 20 * 1024
    assert {r.grpc_status for r in results} == {RESOURCE_EXHAUSTED}
    await assert_still_serving(server)


async def test_metadata_past_the_header_list_limit_is_always_refused(
    server: GreeterServer,
) -> None:
    results = [
        await raw(server, SAY_HELLO, grpc_frame(hello()), extra=[("x-pad", "a" * 65536)])
        for _ in range(3)
    ]
    assert all(r.grpc_status == RESOURCE_EXHAUSTED or r.reset_code for r in results)


async def test_rst_stream_mid_request(server: GreeterServer) -> None:
    """Half a unary request, half a bidi conversation: both reset by the client, and
    the connection carries on."""

    def go() -> tuple[list[bytes], StreamResult]:
        with H2Client(server.port, timeout=5.0) as client:
            half = client.start(SAY_HELLO, body=grpc_frame(hello())[:3], end_stream=False)
            client.reset(half, H2_CANCEL)
            bidi = client.start(BIDI, body=grpc_frame(hello("one")), end_stream=False)
            deadline = time.monotonic() + 5
            while not client.streams[bidi].messages() and time.monotonic() < deadline:
                client.pump(0.2)
            first = client.streams[bidi].messages()
            client.reset(bidi, H2_CANCEL)
            return first, client.call(STREAM_REPLY, grpc_frame(hello()))

    first, after = await asyncio.to_thread(go)
    assert first == [b"\x0a\x0bHello, one!"]
    assert after.grpc_status == OK
    assert len(after.messages()) == 10
    await assert_still_serving(server)


async def test_preface_then_silence_is_closed_by_idle_timeout(server: GreeterServer) -> None:
    """A client that sends only the preface and SETTINGS gets a GOAWAY once
    max_connection_idle (1 s here) passes; calls meanwhile are unaffected."""

    def go() -> tuple[bool, tuple[int, bytes] | None, float]:
        began = time.monotonic()
        with H2Client(server.port, timeout=5.0) as client:
            closed = client.wait_closed(8.0)
            goaway = client.goaway
            info = None
            if goaway is not None:
                info = (int(goaway.error_code or 0), bytes(goaway.additional_data or b""))
            return closed, info, time.monotonic() - began

    silent = asyncio.create_task(asyncio.to_thread(go))
    await asyncio.sleep(0.2)
    await assert_still_serving(server)
    closed, goaway, took = await silent
    assert closed
    # grpc-core says INTERNAL_ERROR (not NO_ERROR) with "connection idle" as debug data.
    assert goaway == (H2_INTERNAL_ERROR, b"connection idle")
    assert 0.8 < took < 6


async def test_tcp_connection_without_preface_is_closed(server: GreeterServer) -> None:
    """Not even the preface: the server sends its SETTINGS, then gives up on the
    connection (GOAWAY, then close) instead of holding it forever."""

    def go() -> tuple[bytes, float]:
        began = time.monotonic()
        received = b""
        with socket.create_connection(("127.0.0.1", server.port), timeout=8.0) as sock:
            while time.monotonic() - began < 8:
                try:
                    chunk = sock.recv(4096)
                except OSError:
                    break
                if not chunk:
                    break
                received += chunk
                if _has_goaway(received):
                    break
        return received, time.monotonic() - began

    received, took = await asyncio.to_thread(go)
    assert _has_goaway(received)
    assert took < 8
    await assert_still_serving(server)


def _has_goaway(data: bytes) -> bool:
    """Walk the HTTP/2 frames in ``data``; True if one is a GOAWAY (type 7)."""
    offset = 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        if data[offset + 3] == 0x7:
            return True
        offset += 9 + length
    return False
