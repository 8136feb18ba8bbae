"""The ``server-timing`` trailer: on every reply (unary, streams, refusals, gRPC and
gRPC-Web), readable by a browser, shown by ``greeter call``, and off with the setting."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest
from web_support import SAY_HELLO, STREAM, hello, request

from conftest import channel_to, free_port, running, until
from greeter import timing
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.client import Target
from greeter.rehearse.traffic import Traffic, load_report

TOKEN = [("authorization", "Bearer t0k")]


def server_ms(metadata: object) -> float:
    """The ``app`` duration of the one server-timing entry in ``metadata``, in ms."""
    found = [value for key, value in metadata or () if key == timing.KEY]  # type: ignore[attr-defined]
    assert len(found) == 1, metadata
    assert found[0].startswith("app;dur="), found
    us = timing.server_us(found[0])
    assert us is not None, found
    return us / 1000


def test_the_value_parses_back_and_bad_values_are_none():
    assert timing.value(0.000052) == "app;dur=0.052"
    assert timing.server_us(timing.value(1.5)) == 1_500_000
    assert timing.server_us(b"app;dur=0.052") == 52
    assert timing.server_us('db;dur=3, app;desc="pod";dur=1.25') == 1250
    for bad in ("", "db;dur=3", "app", "app;dur=", "app;dur=-1", "app;dur=nan", "app;dur=x"):
        assert timing.server_us(bad) is None, bad


async def test_every_grpc_reply_carries_it_with_the_identity():
    async with (
        running(
            auth_enabled=True, auth_tokens=("t0k",), fault_enabled=True, stream_count=3
        ) as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        req = helloworld_pb2.HelloRequest(name="t")
        unary = stub.SayHello(req, metadata=TOKEN)
        await unary
        stream = stub.SayHelloStreamReply(req, metadata=TOKEN)
        assert len([r async for r in stream]) == 3
        bidi = stub.SayHelloBidiStream(iter([req, req]), metadata=TOKEN)
        assert len([r async for r in bidi]) == 2
        for call in (unary, stream, bidi):
            trailers = await call.trailing_metadata()
            assert server_ms(trailers) >= 0
            assert ("x-greeter-pod", "pod-a") in tuple(trailers)
        # Refusals are stamped before they are sent: auth, and an injected fault whose
        # delay is the server's own time (the delay is a lower bound, never shorter).
        refusals = {
            grpc.StatusCode.UNAUTHENTICATED: [],
            grpc.StatusCode.UNAVAILABLE: [
                *TOKEN,
                ("x-greeter-fault-delay-ms", "30"),
                ("x-greeter-fault-status", "UNAVAILABLE"),
            ],
            grpc.StatusCode.INVALID_ARGUMENT: [*TOKEN, ("x-greeter-fault-delay-ms", "x")],
        }
        for code, metadata in refusals.items():
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.SayHello(req, metadata=metadata)
            assert failed.value.code() == code
            took = server_ms(failed.value.trailing_metadata())
            if code is grpc.StatusCode.UNAVAILABLE:
                assert took >= 30
        delayed = stub.SayHello(req, metadata=[*TOKEN, ("x-greeter-fault-delay-ms", "30")])
        await delayed
        assert server_ms(await delayed.trailing_metadata()) >= 30


async def test_the_setting_turns_it_off_and_the_identity_stays():
    async with running(server_timing=False) as server, channel_to(server) as channel:
        call = helloworld_pb2_grpc.GreeterStub(channel).SayHello(helloworld_pb2.HelloRequest())
        await call
        trailers = tuple(await call.trailing_metadata())
    assert ("x-greeter-pod", "pod-a") in trailers
    assert not [key for key, _ in trailers if key == timing.KEY]


async def test_grpc_web_replies_carry_it_and_a_browser_may_read_it():
    app = "https://app.example.com"
    async with running(web_port=free_port(), web_cors_origins=(app,), stream_count=2) as server:
        port = server.web_port
        reply = await request(port, SAY_HELLO, hello(), origin=app)
        assert server_ms(reply.trailers.items()) >= 0
        exposed = {h.strip() for h in reply.headers["access-control-expose-headers"].split(",")}
        assert timing.KEY in exposed
        stream = await request(port, STREAM, hello())
        assert len(stream.messages) == 2
        assert server_ms(stream.trailers.items()) >= 0
        # Trailers-only (no message went out): the status, and the timing, in the headers.
        refused = await request(port, STREAM, hello(), x_greeter_stream_count="-1")
        assert refused.headers["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
        assert server_ms(refused.headers.items()) >= 0


async def test_greeter_call_shows_it():
    async with running(web_port=free_port()) as server:
        for address, protocol in (
            (f"127.0.0.1:{server.port}", "grpc"),
            (f"127.0.0.1:{server.web_port}", "grpc-web"),
        ):
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "greeter", "call", address, "--protocol", protocol],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            line = done.stdout.splitlines()[-1]
            assert line.startswith("server-timing: app;dur="), done.stdout
            assert timing.server_us(line.removeprefix("server-timing: ")) is not None


async def test_the_rehearsals_probe_reads_it_into_its_load_report():
    async with running() as server:
        traffic = Traffic(Target(f"127.0.0.1:{server.port}"), rps=200.0, concurrency=4)
        task = asyncio.ensure_future(traffic.run())
        await traffic.running.wait()
        await until(lambda: len(traffic.report.outcomes), lambda n: n >= 20, timeout=30)
        traffic.stop()
        await task
    report = load_report(traffic)
    assert report["timed"] == report["count"] >= 20
    assert report["by_cluster"]["cluster-a"]["outside_ms"]["p50"] is not None
    assert report["server_ms"]["p50"] is not None
