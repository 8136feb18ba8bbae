"""The known ways gateways break gRPC, one case each: what it proves, the setting of each
gateway that breaks it and the fix (docs/check.md's table is made from these)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from greeter._proto.grpc.reflection.v1 import reflection_pb2
from greeter._proto.grpc.testing import messages_pb2
from greeter.check import lookup
from greeter.check.cases import GATEWAY, PASS, Failed, Skipped, Verdict, case
from greeter.check.context import Context, Reply
from greeter.check.interop_cases import (
    ECHO_INITIAL,
    ECHO_TRAILING,
    STREAMING_OUTPUT,
    UNARY_CALL,
    duplex_request,
    full_duplex,
    need,
    payload,
)
from greeter.client import split_host_port, tls_context
from greeter.interop.checklog import CHECK_ECHO

KIB, MIB = 1024, 1024 * 1024
SIZES = tuple(KIB << i for i in range(14))  # 1 KiB, 2 KiB ... 8 MiB
# Refusals above gRPC's default message limit (4 MiB, what pods and clients use unless told
# otherwise) are reported but do not fail the case.
GRPC_DEFAULT_LIMIT = 4 * MIB
LONG_STEPS = (1.0, 5.0, 20.0, 40.0, 60.0)
DEADLINE_S, DEADLINE_CALL_S = 1.0, 3.0
# A 1 s deadline "ends at about 1 s" when the call and the pod's end come within this.
DEADLINE_SLACK_S = 1.5
DUPLEX_ROUNDS, DUPLEX_REPLY_WAIT_S = 5, 5.0
CANCEL_AFTER_S = 30.0  # cancel_reaches_pod's second reply would come this late
FIRST_REPLY_WAIT_S = 10.0  # its first reply comes at once; a gateway holding it fails the case
METADATA_SIZES = (8 * KIB, 16 * KIB)
# What a call's own headers (:path, :authority, content-type, te, user-agent, grpc-timeout...)
# take of a header list, left out of the padding so the total stays at the size named.
OWN_HEADERS = 1 * KIB
PAD_VALUE = 1000  # bytes per padding header: under every per-field limit
FIELD_OVERHEAD = 32  # HTTP/2 counts each header as name + value + 32
STATUS_MESSAGE = "précondition échouée: ✗ 再试 😈"


def steps(max_wait: float) -> list[float]:
    """The waits of the long cases: 1 s, 5 s, 20 s, 40 s, 60 s below --max-wait, then it."""
    return [s for s in LONG_STEPS if s < max_wait] + [max_wait]


def size_text(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


# What gRPC itself says when it refuses a message or a header list over its limits: a
# refusal with one of these, or with the pod's identity trailers, is the pod's own.
GRPC_LIMIT_MESSAGES = ("larger than max", "metadata size exceeds")


def paced(*pauses: float) -> Any:
    """A StreamingOutputCall request: one 1-byte reply after each pause (seconds)."""
    return messages_pb2.StreamingOutputCallRequest(
        response_parameters=[
            messages_pb2.ResponseParameters(size=1, interval_us=int(p * 1e6)) for p in pauses
        ]
    )


async def paced_call(
    ctx: Context, *pauses: float, timeout: float, metadata: list[tuple[str, str]] | None = None
) -> Reply:
    return await ctx.server_stream(
        STREAMING_OUTPUT,
        paced(*pauses),
        messages_pb2.StreamingOutputCallResponse,
        timeout=timeout,
        metadata=metadata or (),
    )


def by_pod(reply: Reply) -> bool:
    """The refusal is the pod's own (its identity trailers, or gRPC's own limit error),
    not something a gateway answered."""
    return reply.ended_by_pod or any(m in reply.details for m in GRPC_LIMIT_MESSAGES)


# -- reflection, health, ALPN -------------------------------------------------------
@case(
    "reflection",
    group=GATEWAY,
    proves="server reflection (a bidirectional stream) answers through the gateway and "
    "lists the services (grpcurl and Postman need it)",
    breaks={
        "Emissary": "a Mapping prefix that leaves out /grpc.reflection.v1.ServerReflection/",
        "Envoy Gateway": "a GRPCRoute without grpc.reflection.v1.ServerReflection",
    },
    fix="route /grpc.reflection.v1.ServerReflection/ (and v1alpha) to the pods",
    web_skip="reflection is a bidirectional stream",
    needs_interop=False,
)
async def reflection(ctx: Context) -> Verdict:
    method = ctx.method(
        "stream_stream",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        reflection_pb2.ServerReflectionResponse,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        responses = [
            r async for r in method(iter([request]), timeout=10.0, metadata=ctx.metadata())
        ]
    except grpc.aio.AioRpcError as exc:
        raise Failed("a list of services", f"{exc.code().name}: {exc.details()}") from None
    names = sorted(
        s.name
        for r in responses
        for s in r.list_services_response.service
        if r.list_services_response
    )
    if not names:
        raise Failed("a list of services", "an empty list")
    if ctx.interop and "grpc.testing.TestService" not in names:
        raise Failed("grpc.testing.TestService listed", ", ".join(names))
    return Verdict(PASS, f"{len(names)} services listed", {"services": names})


@case(
    "health",
    group=GATEWAY,
    proves="grpc.health.v1.Health/Check answers SERVING through the gateway",
    breaks={
        "Emissary": "a Mapping prefix that leaves out /grpc.health.v1.Health/",
        "Envoy Gateway": "a GRPCRoute without grpc.health.v1.Health",
    },
    fix="route /grpc.health.v1.Health/ to the pods",
    needs_interop=False,
)
async def health(ctx: Context) -> Verdict:
    reply = await ctx.unary(
        "/grpc.health.v1.Health/Check",
        health_pb2.HealthCheckRequest(service=""),
        health_pb2.HealthCheckResponse,
    )
    need(reply, "SERVING")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.messages[0].status)
    if status != "SERVING":
        raise Failed("SERVING", status)
    return Verdict(PASS, "SERVING", {"pod": reply.pod})


def _alpn(ctx: Context) -> str | None:
    target = ctx.target
    host, port = split_host_port(target.address)
    context = tls_context(target, verify=not target.insecure)
    context.set_alpn_protocols(["h2", "http/1.1"])
    name = target.authority.split(":")[0] or host
    with (
        socket.create_connection((host, int(port)), timeout=10.0) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        return tls.selected_alpn_protocol()


@case(
    "alpn_h2",
    group=GATEWAY,
    proves="the TLS listener picks h2 when a client offers h2 and http/1.1 (gRPC clients "
    "refuse a TLS connection without it)",
    breaks={
        "ALB": "an HTTPS listener with HTTP/2 turned off (Http2Enabled false)",
        "ingress-nginx": "use-http2: false",
        "Emissary": "alpn_protocols without h2 in the TLSContext",
        "Envoy Gateway": "a ClientTrafficPolicy whose alpnProtocols leave out h2",
    },
    fix="offer h2 in ALPN on the TLS listener",
    web_skip="gRPC-Web runs over HTTP/1.1 and does not need h2",
    needs_interop=False,
)
async def alpn_h2(ctx: Context) -> Verdict:
    if not ctx.target.secure:
        raise Skipped("the target is plaintext (no TLS, no ALPN); pass --tls to check it")
    try:
        chosen = await asyncio.to_thread(_alpn, ctx)
    except (OSError, ssl.SSLError) as exc:
        raise Failed("a TLS handshake", str(exc)) from None
    if chosen != "h2":
        raise Failed("ALPN h2", repr(chosen), alpn=chosen)
    return Verdict(PASS, "h2 selected", {"alpn": chosen})


# -- message sizes ----------------------------------------------------------------------
SIZE_BREAKS = {
    "ingress-nginx": "proxy-body-size (client_max_body_size, 1m by default): 413",
}


async def _step_sizes(ctx: Context, call: Any) -> Verdict:
    """Step the sizes up until one is refused; judge whose refusal it was."""
    largest = 0
    for size in SIZES:
        reply: Reply = await call(size)
        if reply.ok:
            largest = size
            continue
        measured = {
            "largest_passed": largest,
            "first_refused": size,
            "refused_status": reply.status(),
            "refused_by": "pod" if by_pod(reply) else "gateway",
        }
        passed = f"largest passed {size_text(largest)}" if largest else "nothing passed"
        said = f"{size_text(size)} refused with {reply.status()}"
        if by_pod(reply):
            return Verdict(PASS, f"{passed}; {said} by the pod's own limit", measured)
        if size > GRPC_DEFAULT_LIMIT:
            return Verdict(PASS, f"{passed}; {said} (above gRPC's default 4 MiB limit)", measured)
        raise Failed(f"{size_text(size)} to pass", f"{said} ({passed})", **measured)
    return Verdict(PASS, f"largest passed {size_text(largest)}", {"largest_passed": largest})


@case(
    "request_size",
    group=GATEWAY,
    proves="requests from 1 KiB to 8 MiB pass (up to gRPC's 4 MiB default, the pods' "
    "limit); reports the largest that passed and the first refused",
    breaks=SIZE_BREAKS,
    fix="nginx: client_max_body_size (ingress-nginx: the proxy-body-size annotation) of at "
    "least the pods' max_recv_message_size, e.g. 8m",
)
async def request_size(ctx: Context) -> Verdict:
    async def call(size: int) -> Reply:
        request = messages_pb2.SimpleRequest(response_size=1, payload=payload(size))
        return await ctx.unary(UNARY_CALL, request, messages_pb2.SimpleResponse, timeout=30.0)

    return await _step_sizes(ctx, call)


@case(
    "response_size",
    group=GATEWAY,
    proves="replies from 1 KiB to 8 MiB pass (up to gRPC's 4 MiB default); reports the "
    "largest that passed and the first refused",
    fix="raise the gateway's response buffer limit above the pods' max_send_message_size",
)
async def response_size(ctx: Context) -> Verdict:
    async def call(size: int) -> Reply:
        request = messages_pb2.SimpleRequest(response_size=size)
        return await ctx.unary(UNARY_CALL, request, messages_pb2.SimpleResponse, timeout=30.0)

    return await _step_sizes(ctx, call)


# -- long calls ---------------------------------------------------------------------------
LONG_BREAKS = {
    "ALB": "the listener's RequestTimeout (1-180 s, default 60 s: 504) and IdleTimeout",
    "ingress-nginx": "proxy-read-timeout / proxy-send-timeout (grpc_read_timeout, 60 s)",
    "Emissary": "the Mapping's timeout_ms (default 3000) and idle_timeout_ms",
    "Envoy Gateway": "the route timeout (Envoy's 15 s unless set: HTTPRoute timeouts.request, "
    "BackendTrafficPolicy timeout, GRPCRoute stream timeout)",
    "Istio": "a VirtualService timeout on the route",
}
LONG_FIX = (
    "raise the gateway's request/stream and idle timeouts above your longest call "
    "(Envoy: route timeout 0s; Emissary: timeout_ms 0; nginx: grpc_read_timeout 3600s; "
    "ALB: RequestTimeout up to its 180 s and an IdleTimeout above it)"
)


async def _long(ctx: Context, one: Any) -> Verdict:
    """Run ``one(wait)`` for every step at once; the longest that survived, and the first cut."""
    waits = steps(ctx.max_wait)
    replies: list[Reply] = await asyncio.gather(*(one(w) for w in waits))
    survived = [w for w, r in zip(waits, replies, strict=True) if r.ok]
    refused = [(w, r) for w, r in zip(waits, replies, strict=True) if not r.ok and by_pod(r)]
    cut = [(w, r) for w, r in zip(waits, replies, strict=True) if not r.ok and not by_pod(r)]
    measured: dict[str, Any] = {
        "steps_s": waits,
        "longest_survived_s": max(survived) if survived else 0.0,
    }
    longest = f"longest that survived: {max(survived):g} s" if survived else "none survived"
    if cut:
        wait, reply = cut[0]
        measured["cut_at_s"] = round(reply.elapsed_s, 2)
        measured["cut_status"] = reply.status()
        raise Failed(
            f"a call of {wait:g} s to survive",
            f"cut at {reply.elapsed_s:.1f} s with {reply.status()} ({longest})",
            **measured,
        )
    if refused:
        wait, reply = refused[0]
        measured["pod_limit"] = reply.status()
        return Verdict(
            PASS,
            f"{longest}; {wait:g} s refused by the pod's own limit ({reply.status()})",
            measured,
        )
    return Verdict(PASS, longest, measured)


@case(
    "slow_unary",
    group=GATEWAY,
    proves="a call whose reply comes after 1 s, 5 s, 20 s ... up to --max-wait survives "
    "(one request, nothing back until the reply, as a slow unary call); reports the longest",
    breaks=LONG_BREAKS,
    fix=LONG_FIX,
    long=True,
)
async def slow_unary(ctx: Context) -> Verdict:
    async def one(wait: float) -> Reply:
        return await paced_call(ctx, wait, timeout=wait + 30.0)

    return await _long(ctx, one)


@case(
    "stream_gaps",
    group=GATEWAY,
    proves="a server stream that goes quiet between messages for 1 s, 5 s, 20 s ... up to "
    "--max-wait survives (idle and stream timeouts); reports the longest gap",
    breaks=LONG_BREAKS,
    fix=LONG_FIX,
    long=True,
)
async def stream_gaps(ctx: Context) -> Verdict:
    async def one(gap: float) -> Reply:
        reply = await paced_call(ctx, 0.0, gap, timeout=gap + 30.0)
        if reply.ok and len(reply.messages) != 2:
            reply.code, reply.details = "DATA_LOSS", f"{len(reply.messages)} of 2 messages"
        return reply

    return await _long(ctx, one)


@case(
    "deadline_honoured",
    group=GATEWAY,
    proves="a 1 s deadline on a 3 s call ends DEADLINE_EXCEEDED at about 1 s, and the pod "
    "saw the call end then (grpc-timeout or the cancellation reached it)",
    fix="forward grpc-timeout and propagate the client's RST_STREAM to the upstream",
)
async def deadline_honoured(ctx: Context) -> Verdict:
    check_id = lookup.new_id()
    reply = await paced_call(
        ctx, DEADLINE_CALL_S, timeout=DEADLINE_S, metadata=lookup.tag(check_id)
    )
    if reply.code != "DEADLINE_EXCEEDED" or reply.elapsed_s > DEADLINE_S + DEADLINE_SLACK_S:
        raise Failed(
            f"DEADLINE_EXCEEDED at about {DEADLINE_S:g} s",
            f"{reply.status()} at {reply.elapsed_s:.2f} s",
        )
    seen = await lookup.find(ctx, check_id, ended=True)
    measured = {"client_s": round(reply.elapsed_s, 3), "pod": seen.pod, "pod_code": seen.code}
    if seen.state != lookup.ENDED:
        raise Failed("the pod to see the call end", f"still {seen.state} on {seen.pod}", **measured)
    took = seen.duration_s if seen.duration_s is not None else 0.0
    measured["pod_s"] = round(took, 3)
    if took > DEADLINE_S + DEADLINE_SLACK_S:
        raise Failed(
            f"the pod to end the call at about {DEADLINE_S:g} s",
            f"it ran {took:.2f} s and ended {seen.code}",
            **measured,
        )
    return Verdict(
        PASS,
        f"DEADLINE_EXCEEDED at {reply.elapsed_s:.2f} s; the pod {seen.pod or '?'} ended it "
        f"{seen.code} at {took:.2f} s",
        measured,
    )


# -- metadata -------------------------------------------------------------------------------
async def _echo(ctx: Context, extra: list[tuple[str, Any]], token: str) -> Reply:
    request = messages_pb2.SimpleRequest(response_size=1)
    return await ctx.unary(
        UNARY_CALL,
        request,
        messages_pb2.SimpleResponse,
        metadata=[*extra, (ECHO_INITIAL, token)],
    )


@case(
    "metadata_underscore",
    group=GATEWAY,
    proves=f"a metadata key with an underscore ({CHECK_ECHO}) reaches the pod",
    breaks={
        "ingress-nginx": "enable-underscores-in-headers: false (nginx underscores_in_headers "
        "off, the default): the header is silently dropped",
        "Envoy Gateway": "ClientTrafficPolicy headers.withUnderscoresAction: RejectRequest "
        "(its default: the call fails) or DropHeader",
    },
    fix='ingress-nginx: enable-underscores-in-headers: "true" in the controller ConfigMap '
    "(nginx: underscores_in_headers on); Envoy Gateway: withUnderscoresAction: Allow; or "
    "metadata keys with - instead of _",
)
async def metadata_underscore(ctx: Context) -> Verdict:
    token = os.urandom(8).hex()
    reply = await _echo(ctx, [(CHECK_ECHO, token)], token)
    need(reply, "OK")
    got = reply.get(CHECK_ECHO)
    if got != token:
        why = "absent: the header did not reach the pod" if got is None else repr(got)
        raise Failed(f"{CHECK_ECHO}: {token} echoed by the pod", why)
    return Verdict(PASS, f"{CHECK_ECHO} reached the pod and came back")


@case(
    "metadata_bin",
    group=GATEWAY,
    proves="a binary (-bin, base64 on the wire) metadata value reaches the pod and comes "
    "back in the trailers byte for byte",
    fix="pass -bin headers and trailers through untouched",
)
async def metadata_bin(ctx: Context) -> Verdict:
    value = bytes(range(256)) + os.urandom(32)
    reply = await _echo(ctx, [(ECHO_TRAILING, value)], "bin")
    need(reply, "OK")
    got = reply.get(ECHO_TRAILING)
    if got != value:
        raise Failed(f"{len(value)} bytes echoed in {ECHO_TRAILING}", repr(got)[:80])
    return Verdict(PASS, f"{len(value)} bytes echoed")


def _padding(size: int) -> list[tuple[str, str]]:
    """Headers that bring a request's header list to about ``size`` bytes (HTTP/2's count)."""
    left = size - OWN_HEADERS
    pads: list[tuple[str, str]] = []
    index = 0
    while left > FIELD_OVERHEAD + 40:
        key = f"x-greeter-check-pad-{index}"
        value = "p" * min(PAD_VALUE, left - len(key) - FIELD_OVERHEAD)
        pads.append((key, value))
        left -= len(key) + len(value) + FIELD_OVERHEAD
        index += 1
    return pads


@case(
    "metadata_large",
    group=GATEWAY,
    proves="requests with about 8 KiB and 16 KiB of metadata (HTTP/2's header-list count) "
    "reach the pod and are answered",
    breaks={
        "ingress-nginx": "large-client-header-buffers (4 8k: one header over 8 KiB is "
        "refused) and http2-max-header-size (16k, the whole list)",
        "Emissary": "max_request_headers_kb set below 16 (Envoy's default is 60)",
    },
    fix="allow at least 16 KiB of request headers (the pods' max_metadata_size)",
)
async def metadata_large(ctx: Context) -> Verdict:
    passed: list[str] = []
    for size in METADATA_SIZES:
        token = f"large-{size}"
        reply = await _echo(ctx, _padding(size), token)
        if reply.ok and reply.get(ECHO_INITIAL) == token:
            passed.append(size_text(size))
            continue
        why = reply.status() if not reply.ok else "no echo"
        so_far = f"passed: {', '.join(passed)}" if passed else "nothing passed"
        measured = {
            "largest_passed": passed[-1] if passed else "",
            "first_refused": size_text(size),
        }
        if not reply.ok and by_pod(reply):
            measured["refused_by"] = "pod"
            return Verdict(
                PASS,
                f"{so_far}; {size_text(size)} refused by the pod's own limit ({why})",
                measured,
            )
        raise Failed(f"{size_text(size)} of metadata answered", f"{why} ({so_far})", **measured)
    return Verdict(PASS, f"{', '.join(passed)} answered", {"sizes": list(METADATA_SIZES)})


@case(
    "trailers_only_status",
    group=GATEWAY,
    proves="an error before any reply (a trailers-only response) keeps its code and "
    "message, a non-ASCII message included (unary and server streaming)",
    fix="pass trailers-only responses (headers carrying grpc-status, no body) through as they are",
)
async def trailers_only_status(ctx: Context) -> Verdict:
    status = messages_pb2.EchoStatus(code=9, message=STATUS_MESSAGE)
    unary = await ctx.unary(
        UNARY_CALL, messages_pb2.SimpleRequest(response_status=status), messages_pb2.SimpleResponse
    )
    stream = await ctx.server_stream(
        STREAMING_OUTPUT,
        messages_pb2.StreamingOutputCallRequest(response_status=status),
        messages_pb2.StreamingOutputCallResponse,
    )
    for kind, reply in (("unary", unary), ("server streaming", stream)):
        if reply.code != "FAILED_PRECONDITION" or reply.details != STATUS_MESSAGE:
            raise Failed(f"FAILED_PRECONDITION {STATUS_MESSAGE!r} ({kind})", reply.status())
    return Verdict(PASS, "code and message kept (unary and server streaming)")


# -- cancellation, full duplex, compression -----------------------------------------------
@case(
    "cancel_reaches_pod",
    group=GATEWAY,
    proves="a call the client cancels is cancelled at the pod too (the gateway passes the "
    "RST_STREAM on), so the pod stops its work",
    fix="propagate the downstream reset to the upstream stream",
    web_skip="greeter's gRPC-Web client reads whole replies and cannot cancel mid-call",
)
async def cancel_reaches_pod(ctx: Context) -> Verdict:
    check_id = lookup.new_id()
    method = ctx.method("unary_stream", STREAMING_OUTPUT, messages_pb2.StreamingOutputCallResponse)
    # A stream whose second reply is a long way off: cancelled after the first.
    request = paced(0.0, CANCEL_AFTER_S)
    call = method(request, timeout=2 * CANCEL_AFTER_S, metadata=ctx.metadata(lookup.tag(check_id)))
    try:
        first = await asyncio.wait_for(call.read(), FIRST_REPLY_WAIT_S)
    except TimeoutError:
        call.cancel()
        raise Failed("a first reply at once", f"nothing within {FIRST_REPLY_WAIT_S:g} s") from None
    if first is grpc.aio.EOF:
        raise Failed("a first reply", f"end of stream ({(await call.code()).name})")
    # The pod that serves it is known once a lookup finds it running.
    await lookup.find(ctx, check_id, ended=False)
    call.cancel()
    seen = await lookup.find(ctx, check_id, ended=True)
    measured = {"pod": seen.pod, "pod_code": seen.code}
    if seen.state != lookup.ENDED:
        raise Failed(
            "the pod to see the cancellation", f"still {seen.state} on {seen.pod}", **measured
        )
    if seen.code != "CANCELLED":
        raise Failed("the pod to end the call CANCELLED", seen.code, **measured)
    return Verdict(PASS, f"the pod {seen.pod or '?'} saw CANCELLED", measured)


@case(
    "full_duplex",
    group=GATEWAY,
    proves=f"bidirectional streaming is not buffered: each of {DUPLEX_ROUNDS} replies "
    "arrives before the next request is sent, with the request stream still open",
    breaks={
        "Emissary": "the buffer Module (max_request_bytes): whole requests are buffered",
    },
    fix="no request buffering on gRPC routes (nginx: grpc_pass, never proxy_pass)",
    web_skip="gRPC-Web has no bidirectional streaming",
)
async def full_duplex_case(ctx: Context) -> Verdict:
    call = full_duplex(ctx, timeout=60.0)
    rounds = []
    loop = asyncio.get_running_loop()
    for index in range(DUPLEX_ROUNDS):
        sent = loop.time()
        await call.write(duplex_request(8, 8))
        try:
            reply = await asyncio.wait_for(call.read(), DUPLEX_REPLY_WAIT_S)
        except TimeoutError:
            call.cancel()
            raise Failed(
                f"reply {index + 1} while the request stream is open",
                f"nothing within {DUPLEX_REPLY_WAIT_S:g} s (buffered)",
            ) from None
        if reply is grpc.aio.EOF:
            raise Failed(f"reply {index + 1}", f"end of stream ({(await call.code()).name})")
        rounds.append(round((loop.time() - sent) * 1000, 1))
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass
    return Verdict(
        PASS, f"{DUPLEX_ROUNDS} rounds, slowest {max(rounds):.0f} ms", {"round_trip_ms": rounds}
    )


@case(
    "gzip",
    group=GATEWAY,
    proves="grpc-encoding: gzip both ways: a compressed request and a compressed reply "
    "arrive intact",
    fix="leave grpc-encoding and grpc-accept-encoding alone",
    web_skip="greeter's gRPC-Web client sends no compressed messages",
)
async def gzip(ctx: Context) -> Verdict:
    size = 64 * KIB
    request = messages_pb2.SimpleRequest(response_size=size, payload=payload(size))
    request.expect_compressed.value = True
    request.response_compressed.value = True
    reply = await ctx.unary(
        UNARY_CALL, request, messages_pb2.SimpleResponse, compression=grpc.Compression.Gzip
    )
    need(reply, "OK for a gzip request asking a gzip reply")
    if reply.messages[0].payload.body != bytes(size):
        raise Failed(f"{size} zero bytes back", "another payload")
    return Verdict(PASS, f"{size_text(size)} each way, compressed")
