"""The standard gRPC interop cases (grpc's doc/interop-test-descriptions.md), by their
standard names and with their standard sizes, against grpc.testing.TestService."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from greeter._proto.grpc.testing import empty_pb2, messages_pb2
from greeter.check.cases import INTEROP, PASS, Failed, Verdict, case
from greeter.check.context import Context, Reply

SERVICE = "/grpc.testing.TestService/"
EMPTY_CALL = SERVICE + "EmptyCall"
UNARY_CALL = SERVICE + "UnaryCall"
STREAMING_INPUT = SERVICE + "StreamingInputCall"
STREAMING_OUTPUT = SERVICE + "StreamingOutputCall"
FULL_DUPLEX = SERVICE + "FullDuplexCall"
UNIMPLEMENTED_CALL = SERVICE + "UnimplementedCall"
UNIMPLEMENTED_SERVICE_CALL = "/grpc.testing.UnimplementedService/UnimplementedCall"

# The interop descriptions' sizes.
LARGE_REQUEST, LARGE_RESPONSE = 271828, 314159
STREAM_REQUESTS = (27182, 8, 1828, 45904)
STREAM_RESPONSES = (31415, 9, 2653, 58979)
ECHO_INITIAL, ECHO_TRAILING = "x-grpc-test-echo-initial", "x-grpc-test-echo-trailing-bin"
INITIAL_VALUE, TRAILING_VALUE = "test_initial_metadata_value", b"\xab\xab\xab"
STATUS_MESSAGE = "test status message"
SPECIAL_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
CALL_TIMEOUT = 10.0

NO_WEB_CLIENT_STREAM = "gRPC-Web has no client streaming"
NO_WEB_BIDI = "gRPC-Web has no bidirectional streaming"
NO_WEB_COMPRESSION = "greeter's gRPC-Web client sends no compressed messages"
ROUTE = {
    "ALB": "a forwarding rule that does not send the path to the gRPC server group",
    "ingress-nginx": "no backend-protocol GRPC annotation (the call is proxied as HTTP/1.1)",
    "Emissary": "a Mapping without grpc: true",
    "Envoy Gateway": "an HTTPRoute/GRPCRoute that does not match grpc.testing.TestService",
}
ROUTE_FIX = "route every gRPC path of the service to the pods over HTTP/2 (h2c or TLS)"


def payload(size: int) -> messages_pb2.Payload:
    return messages_pb2.Payload(type=messages_pb2.COMPRESSABLE, body=bytes(size))


def simple(response_size: int = LARGE_RESPONSE, request_size: int = LARGE_REQUEST) -> Any:
    return messages_pb2.SimpleRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_size=response_size,
        payload=payload(request_size),
    )


def need(reply: Reply, what: str) -> None:
    """FAIL unless the call ended OK."""
    if not reply.ok:
        raise Failed(what, reply.status(), pod=reply.pod)


def body_sizes(reply: Reply) -> list[int]:
    return [len(m.payload.body) for m in reply.messages]


def expect_status(reply: Reply, code: str, message: str, what: str) -> None:
    if reply.code != code or reply.details != message:
        raise Failed(f"{code} {message!r} ({what})", f"{reply.code} {reply.details!r}")


def full_duplex(ctx: Context, timeout: float | None = CALL_TIMEOUT, **kw: Any) -> Any:
    method = ctx.method("stream_stream", FULL_DUPLEX, messages_pb2.StreamingOutputCallResponse)
    return method(timeout=timeout, metadata=ctx.metadata(kw.pop("metadata", ())), **kw)


def streaming_input(ctx: Context, **kw: Any) -> Any:
    method = ctx.method("stream_unary", STREAMING_INPUT, messages_pb2.StreamingInputCallResponse)
    return method(timeout=CALL_TIMEOUT, metadata=ctx.metadata(kw.pop("metadata", ())), **kw)


def duplex_request(request_size: int, response_size: int, **kw: Any) -> Any:
    return messages_pb2.StreamingOutputCallRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_parameters=[messages_pb2.ResponseParameters(size=response_size)],
        payload=payload(request_size),
        **kw,
    )


async def code_of(call: Any) -> str:
    return str((await call.code()).name)


async def expect_code(call: Any, code: str) -> None:
    """FAIL unless the call ended with ``code``."""
    got = await code_of(call)
    if got != code:
        raise Failed(code, got)


@case(
    "empty_unary",
    group=INTEROP,
    proves="a unary call with empty messages both ways (a zero-length gRPC message) arrives",
    breaks=ROUTE,
    fix=ROUTE_FIX,
)
async def empty_unary(ctx: Context) -> Verdict:
    reply = await ctx.unary(EMPTY_CALL, empty_pb2.Empty(), empty_pb2.Empty)
    need(reply, "OK with an empty reply")
    if len(reply.messages) != 1:
        raise Failed("one empty reply", f"{len(reply.messages)} messages")
    return Verdict(PASS, f"OK in {reply.elapsed_s * 1000:.0f} ms", {"pod": reply.pod})


@case(
    "large_unary",
    group=INTEROP,
    proves="a 271828-byte request and a 314159-byte reply cross intact",
    fix="raise the gateway's request body or buffer limit above 300 KiB",
)
async def large_unary(ctx: Context) -> Verdict:
    reply = await ctx.unary(UNARY_CALL, simple(), messages_pb2.SimpleResponse)
    need(reply, f"OK with a {LARGE_RESPONSE}-byte payload")
    got = reply.messages[0].payload.body
    if got != bytes(LARGE_RESPONSE):
        raise Failed(f"{LARGE_RESPONSE} zero bytes", f"{len(got)} bytes")
    return Verdict(PASS, f"{LARGE_REQUEST} B up, {LARGE_RESPONSE} B down")


@case(
    "client_streaming",
    group=INTEROP,
    proves="a client stream of four messages (27182, 8, 1828, 45904 bytes) arrives whole",
    breaks=ROUTE,
    fix=ROUTE_FIX,
    web_skip=NO_WEB_CLIENT_STREAM,
)
async def client_streaming(ctx: Context) -> Verdict:
    requests = [messages_pb2.StreamingInputCallRequest(payload=payload(n)) for n in STREAM_REQUESTS]
    call = streaming_input(ctx)
    for request in requests:
        await call.write(request)
    await call.done_writing()
    try:
        response = await call
    except grpc.aio.AioRpcError as exc:
        raise Failed("OK", f"{exc.code().name}: {exc.details()}") from None
    if response.aggregated_payload_size != sum(STREAM_REQUESTS):
        raise Failed(
            f"aggregated size {sum(STREAM_REQUESTS)}", str(response.aggregated_payload_size)
        )
    return Verdict(PASS, f"aggregated {response.aggregated_payload_size} B")


@case(
    "server_streaming",
    group=INTEROP,
    proves="a server stream of four messages (31415, 9, 2653, 58979 bytes) arrives in order",
    breaks=ROUTE,
    fix=ROUTE_FIX,
)
async def server_streaming(ctx: Context) -> Verdict:
    request = messages_pb2.StreamingOutputCallRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_parameters=[messages_pb2.ResponseParameters(size=n) for n in STREAM_RESPONSES],
    )
    reply = await ctx.server_stream(
        STREAMING_OUTPUT, request, messages_pb2.StreamingOutputCallResponse
    )
    need(reply, "OK after four messages")
    if body_sizes(reply) != list(STREAM_RESPONSES):
        raise Failed(f"sizes {list(STREAM_RESPONSES)}", str(body_sizes(reply)))
    return Verdict(PASS, "4 messages in order")


@case(
    "ping_pong",
    group=INTEROP,
    proves="a full-duplex stream: four requests, each answered before the next is sent",
    fix="proxy gRPC over HTTP/2 end to end, without request buffering",
    web_skip=NO_WEB_BIDI,
)
async def ping_pong(ctx: Context) -> Verdict:
    call = full_duplex(ctx)
    for request_size, response_size in zip(STREAM_REQUESTS, STREAM_RESPONSES, strict=True):
        await call.write(duplex_request(request_size, response_size))
        response = await call.read()
        if response is grpc.aio.EOF:
            raise Failed(f"a {response_size}-byte reply", f"end of stream ({await code_of(call)})")
        if len(response.payload.body) != response_size:
            raise Failed(f"a {response_size}-byte reply", f"{len(response.payload.body)} bytes")
    await call.done_writing()
    if await call.read() is not grpc.aio.EOF:
        raise Failed("end of stream after four replies", "a fifth message")
    await expect_code(call, "OK")
    return Verdict(PASS, "4 requests, 4 replies, in turn")


@case(
    "empty_stream",
    group=INTEROP,
    proves="a full-duplex stream with no messages either way ends OK",
    breaks=ROUTE,
    fix=ROUTE_FIX,
    web_skip=NO_WEB_BIDI,
)
async def empty_stream(ctx: Context) -> Verdict:
    call = full_duplex(ctx)
    await call.done_writing()
    extra = await call.read()
    if extra is not grpc.aio.EOF:
        raise Failed("no reply", "a message")
    await expect_code(call, "OK")
    return Verdict(PASS, "OK, no messages")


@case(
    "cancel_after_begin",
    group=INTEROP,
    proves="a client stream cancelled before any message ends CANCELLED",
    fix="none needed: the client's own cancellation",
    web_skip=NO_WEB_CLIENT_STREAM,
)
async def cancel_after_begin(ctx: Context) -> Verdict:
    call = streaming_input(ctx)
    await asyncio.sleep(0)
    call.cancel()
    await expect_code(call, "CANCELLED")
    return Verdict(PASS, "CANCELLED")


@case(
    "cancel_after_first_response",
    group=INTEROP,
    proves="a full-duplex stream cancelled after its first reply ends CANCELLED",
    fix="proxy gRPC over HTTP/2 end to end, without request buffering",
    web_skip=NO_WEB_BIDI,
)
async def cancel_after_first_response(ctx: Context) -> Verdict:
    call = full_duplex(ctx)
    await call.write(duplex_request(STREAM_REQUESTS[0], STREAM_RESPONSES[0]))
    response = await call.read()
    if response is grpc.aio.EOF:
        raise Failed("a first reply", f"end of stream ({await code_of(call)})")
    call.cancel()
    await expect_code(call, "CANCELLED")
    return Verdict(PASS, "CANCELLED after the first reply")


@case(
    "timeout_on_sleeping_server",
    group=INTEROP,
    proves="a full-duplex call with a 1 ms deadline ends DEADLINE_EXCEEDED",
    fix="none needed: the client's own deadline",
    web_skip=NO_WEB_BIDI,
)
async def timeout_on_sleeping_server(ctx: Context) -> Verdict:
    call = full_duplex(ctx, timeout=0.001)
    # The deadline may pass before the write.
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await call.write(duplex_request(STREAM_REQUESTS[0], STREAM_RESPONSES[0]))
    await expect_code(call, "DEADLINE_EXCEEDED")
    return Verdict(PASS, "DEADLINE_EXCEEDED")


@case(
    "custom_metadata",
    group=INTEROP,
    proves="request metadata reaches the server and is echoed in headers and a -bin trailer "
    "(unary and full-duplex)",
    fix="pass request metadata and response trailers through untouched",
)
async def custom_metadata(ctx: Context) -> Verdict:
    md: list[tuple[str, str | bytes]] = [
        (ECHO_INITIAL, INITIAL_VALUE),
        (ECHO_TRAILING, TRAILING_VALUE),
    ]
    reply = await ctx.unary(
        UNARY_CALL, simple(), messages_pb2.SimpleResponse, timeout=CALL_TIMEOUT, metadata=md
    )
    need(reply, "OK")
    check_echo(reply, "unary")
    if ctx.web:
        return Verdict(PASS, "echoed (unary)")
    call = full_duplex(ctx, metadata=md)
    await call.write(duplex_request(LARGE_REQUEST, LARGE_RESPONSE))
    await call.done_writing()
    messages = [m async for m in call]
    stream = Reply(
        await code_of(call),
        await call.details() or "",
        messages,
        list(await call.initial_metadata() or ()),
        list(await call.trailing_metadata() or ()),
    )
    need(stream, "OK (full-duplex)")
    check_echo(stream, "full-duplex")
    return Verdict(PASS, "echoed (unary and full-duplex)")


def check_echo(reply: Reply, kind: str) -> None:
    initial, trailing = reply.get(ECHO_INITIAL), reply.get(ECHO_TRAILING)
    if initial != INITIAL_VALUE:
        raise Failed(f"{ECHO_INITIAL}: {INITIAL_VALUE} ({kind})", repr(initial))
    if trailing != TRAILING_VALUE:
        raise Failed(f"{ECHO_TRAILING}: {TRAILING_VALUE!r} ({kind})", repr(trailing))


@case(
    "status_code_and_message",
    group=INTEROP,
    proves="a status code and message set by the server reach the client (unary and full-duplex)",
    fix="pass the backend's trailers (grpc-status, grpc-message) through untouched",
)
async def status_code_and_message(ctx: Context) -> Verdict:
    status = messages_pb2.EchoStatus(code=2, message=STATUS_MESSAGE)
    request = messages_pb2.SimpleRequest(response_status=status)
    reply = await ctx.unary(UNARY_CALL, request, messages_pb2.SimpleResponse)
    expect_status(reply, "UNKNOWN", STATUS_MESSAGE, "unary")
    if ctx.web:
        return Verdict(PASS, "UNKNOWN with its message (unary)")
    call = full_duplex(ctx)
    await call.write(messages_pb2.StreamingOutputCallRequest(response_status=status))
    await call.done_writing()
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for _ in call:
            pass
    stream = Reply(await code_of(call), await call.details() or "")
    expect_status(stream, "UNKNOWN", STATUS_MESSAGE, "full-duplex")
    return Verdict(PASS, "UNKNOWN with its message (unary and full-duplex)")


@case(
    "special_status_message",
    group=INTEROP,
    proves="a status message with whitespace and non-ASCII text arrives unchanged "
    "(grpc-message percent-encoding)",
    fix="pass grpc-message through untouched",
)
async def special_status_message(ctx: Context) -> Verdict:
    request = messages_pb2.SimpleRequest(
        response_status=messages_pb2.EchoStatus(code=2, message=SPECIAL_MESSAGE)
    )
    reply = await ctx.unary(UNARY_CALL, request, messages_pb2.SimpleResponse)
    expect_status(reply, "UNKNOWN", SPECIAL_MESSAGE, "unary")
    return Verdict(PASS, "UNKNOWN with the message unchanged")


@case(
    "unimplemented_method",
    group=INTEROP,
    proves="a method the server lacks ends UNIMPLEMENTED (not a gateway's HTTP error)",
    fix="route the whole service path to the pods",
)
async def unimplemented_method(ctx: Context) -> Verdict:
    reply = await ctx.unary(UNIMPLEMENTED_CALL, empty_pb2.Empty(), empty_pb2.Empty)
    if reply.code != "UNIMPLEMENTED":
        raise Failed("UNIMPLEMENTED", reply.status())
    return Verdict(PASS, "UNIMPLEMENTED")


@case(
    "unimplemented_service",
    group=INTEROP,
    proves="a service the server lacks ends UNIMPLEMENTED",
    fix="route the whole service path to the pods (a gateway's HTTP 404 also reads as "
    "UNIMPLEMENTED)",
)
async def unimplemented_service(ctx: Context) -> Verdict:
    reply = await ctx.unary(UNIMPLEMENTED_SERVICE_CALL, empty_pb2.Empty(), empty_pb2.Empty)
    if reply.code != "UNIMPLEMENTED":
        raise Failed("UNIMPLEMENTED", reply.status())
    return Verdict(PASS, "UNIMPLEMENTED")


COMPRESSION_FIX = (
    "leave grpc-encoding and grpc-accept-encoding alone (no HTTP compression or body "
    "rewriting on gRPC routes)"
)


@case(
    "client_compressed_unary",
    group=INTEROP,
    proves="a gzip-compressed request arrives intact (a server that can see the compressed "
    "flag is also asked to refuse an uncompressed one said to be compressed)",
    fix=COMPRESSION_FIX,
    web_skip=NO_WEB_COMPRESSION,
)
async def client_compressed_unary(ctx: Context) -> Verdict:
    probe = simple()
    probe.expect_compressed.value = True
    checked = await ctx.unary(UNARY_CALL, probe, messages_pb2.SimpleResponse)
    if checked.code not in ("INVALID_ARGUMENT", "OK"):
        raise Failed("INVALID_ARGUMENT (or OK) for the uncompressed probe", checked.status())
    compressed = await ctx.unary(
        UNARY_CALL, probe, messages_pb2.SimpleResponse, compression=grpc.Compression.Gzip
    )
    need(compressed, "OK for a compressed request")
    plain = await ctx.unary(UNARY_CALL, simple(), messages_pb2.SimpleResponse)
    need(plain, "OK for an uncompressed request")
    for reply in (compressed, plain):
        if reply.messages[0].payload.body != bytes(LARGE_RESPONSE):
            raise Failed(f"{LARGE_RESPONSE} zero bytes", "another payload")
    if checked.code == "OK":
        # The interop spec's probe: a server that can see the compressed flag refuses an
        # uncompressed message said to be compressed. A grpc-python server cannot see it.
        return Verdict(
            PASS,
            "compressed and uncompressed requests arrived intact (the server does not "
            "check the compressed flag, so the probe proves nothing)",
            {"flag_checked": False},
        )
    return Verdict(PASS, "the server saw the request compressed as sent", {"flag_checked": True})


@case(
    "server_compressed_unary",
    group=INTEROP,
    proves="a reply the server compresses (and one it does not) arrives intact",
    fix=COMPRESSION_FIX,
)
async def server_compressed_unary(ctx: Context) -> Verdict:
    for compressed in (True, False):
        request = simple()
        request.response_compressed.value = compressed
        reply = await ctx.unary(UNARY_CALL, request, messages_pb2.SimpleResponse)
        need(reply, f"OK (response_compressed={compressed})")
        if reply.messages[0].payload.body != bytes(LARGE_RESPONSE):
            raise Failed(f"{LARGE_RESPONSE} zero bytes", "another payload")
    return Verdict(PASS, "compressed and uncompressed replies intact")


@case(
    "client_compressed_streaming",
    group=INTEROP,
    proves="a gzip-compressed client stream arrives as sent",
    fix=COMPRESSION_FIX,
    web_skip=NO_WEB_CLIENT_STREAM,
)
async def client_compressed_streaming(ctx: Context) -> Verdict:
    sizes = (27182, 45904)
    call = streaming_input(ctx, compression=grpc.Compression.Gzip)
    for size in sizes:
        request = messages_pb2.StreamingInputCallRequest(payload=payload(size))
        request.expect_compressed.value = True
        await call.write(request)
    await call.done_writing()
    try:
        response = await call
    except grpc.aio.AioRpcError as exc:
        raise Failed("OK", f"{exc.code().name}: {exc.details()}") from None
    if response.aggregated_payload_size != sum(sizes):
        raise Failed(f"aggregated size {sum(sizes)}", str(response.aggregated_payload_size))
    return Verdict(PASS, f"aggregated {response.aggregated_payload_size} B, compressed")


@case(
    "server_compressed_streaming",
    group=INTEROP,
    proves="a server stream with a compressed and an uncompressed message arrives intact",
    fix=COMPRESSION_FIX,
)
async def server_compressed_streaming(ctx: Context) -> Verdict:
    sizes = (31415, 92653)
    request = messages_pb2.StreamingOutputCallRequest(
        response_type=messages_pb2.COMPRESSABLE,
        response_parameters=[
            messages_pb2.ResponseParameters(
                size=size, compressed=messages_pb2.BoolValue(value=index == 0)
            )
            for index, size in enumerate(sizes)
        ],
    )
    reply = await ctx.server_stream(
        STREAMING_OUTPUT, request, messages_pb2.StreamingOutputCallResponse
    )
    need(reply, "OK after two messages")
    if body_sizes(reply) != list(sizes):
        raise Failed(f"sizes {list(sizes)}", str(body_sizes(reply)))
    return Verdict(PASS, "2 messages (compressed, then not) intact")


async def serves_test_service(ctx: Context) -> tuple[bool, str]:
    """Whether the target serves TestService, found out with an EmptyCall, and how it ended.
    Only UNIMPLEMENTED (no such service here) says no: any other failure (a gateway's 503,
    a missing token) lets the cases run and fail with what they get, rather than SKIP."""
    reply = await ctx.unary(EMPTY_CALL, empty_pb2.Empty(), empty_pb2.Empty, timeout=10.0)
    return reply.code != "UNIMPLEMENTED", reply.status()
