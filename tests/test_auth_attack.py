"""Auth under attack, against a spawned ``greeter serve`` with bearer tokens on,
the access log on and logging at debug level: every bad token is
UNAUTHENTICATED, and no token, good or bad, shows up in any log line."""

from __future__ import annotations

import json
import secrets
from typing import Any

import grpc
import pytest
from h2_client import SAY_HELLO, H2Client, grpc_frame, hello

from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

pytestmark = pytest.mark.timeout(90)

GOOD = "good-" + secrets.token_hex(16)
SCOPED = "scoped-" + secrets.token_hex(16)  # may only call SayHelloStreamReply
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _code(stub: helloworld_pb2_grpc.GreeterStub, authorization: str | None) -> grpc.StatusCode:
    metadata = (("authorization", authorization),) if authorization is not None else None
    try:
        stub.SayHello(helloworld_pb2.HelloRequest(name="a"), metadata=metadata, timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_auth_under_attack_rejects_and_never_logs_tokens(spawn_server: Any) -> None:
    server = spawn_server(
        env={
            "GREETER_AUTH_ENABLED": "true",
            "GREETER_AUTH_TOKENS": f"{GOOD},{SCOPED} helloworld.Greeter/SayHelloStreamReply",
            "GREETER_ACCESS_LOG": "true",
            "GREETER_LOG_LEVEL": "debug",
        }
    )
    presented: list[str] = [GOOD, SCOPED]
    with grpc.insecure_channel(server.address) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        # Controls: the good token works, the scoped one is limited to its method.
        assert _code(stub, f"Bearer {GOOD}") == grpc.StatusCode.OK
        assert _code(stub, f"bearer {GOOD}") == grpc.StatusCode.OK  # the scheme is case-blind
        assert _code(stub, f"Bearer {SCOPED}") == grpc.StatusCode.PERMISSION_DENIED

        # Many wrong tokens.
        for _ in range(300):
            wrong = secrets.token_urlsafe(24)
            presented.append(wrong)
            assert _code(stub, f"Bearer {wrong}") == UNAUTHENTICATED
        # Tokens that differ from the good one only at the end.
        near = [
            GOOD[:-1] + ("0" if GOOD[-1] != "0" else "1"),
            GOOD[:-1],
            GOOD + "x",
            GOOD + GOOD[-1],
            SCOPED[:-1] + ("0" if SCOPED[-1] != "0" else "1"),
        ]
        presented += near
        for token in near:
            assert _code(stub, f"Bearer {token}") == UNAUTHENTICATED, token
        # Empty, scheme-only, wrong scheme and oversized values.
        oversized = ["o" * 4097, GOOD + "o" * 5000]
        presented += [t for t in oversized if t != GOOD]
        for value in [
            None,
            "",
            "Bearer",
            "Bearer ",
            "Bearer      ",
            f"Basic {GOOD}",
            GOOD,
            f"Token {GOOD}",
            *(f"Bearer {t}" for t in oversized),
        ]:
            assert _code(stub, value) == UNAUTHENTICATED, (value or "")[:40]
        # 100 KiB is past the metadata size limit, which may refuse it before auth runs.
        huge = "p" * 100_000
        presented.append(huge)
        assert _code(stub, f"Bearer {huge}") in {UNAUTHENTICATED, RESOURCE_EXHAUSTED}

    # Through a raw HTTP/2 client: bytes no gRPC client would send.
    with H2Client(server.port) as raw:
        for value in [f"Bearer {GOOD[:-1]}é", "Bearer \t", f"Bearer {GOOD[:-1]}\x7f"]:
            result = raw.call(SAY_HELLO, grpc_frame(hello()), extra=[("authorization", value)])
            assert result.grpc_status == UNAUTHENTICATED.value[0], repr(value)
        # Two authorization headers: the first one decides.
        two = [("authorization", "Bearer nope-nope"), ("authorization", f"Bearer {GOOD}")]
        assert raw.call(SAY_HELLO, grpc_frame(hello()), extra=two).grpc_status == 16

    server.proc.terminate()
    assert server.proc.wait(timeout=30) == 0
    err = server.output()[1]
    lines = err.splitlines()
    access = [json.loads(line) for line in lines if '"greeter.access"' in line]
    codes = [entry["code"] for entry in access]
    # The access log did see the rejected calls (so it had the chance to leak).
    assert codes.count("UNAUTHENTICATED") >= 300
    assert codes.count("OK") >= 2
    assert len(lines) > len(access)  # debug logging was on too
    for token in presented:
        needle = token[:32]  # a token's first 32 characters are enough to recognise it
        leaked = [line[:120] for line in lines if needle in line]
        assert not leaked, f"token {needle[:8]}... in the log: {leaked[:2]}"
    assert "Bearer" not in err
    assert "bearer " not in err
