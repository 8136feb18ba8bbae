"""The stock helloworld.Greeter over a real channel, including bad input."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from conftest import channel_to, running, until
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

HelloRequest = helloworld_pb2.HelloRequest


async def test_say_hello(channel):
    reply = await helloworld_pb2_grpc.GreeterStub(channel).SayHello(HelloRequest(name="Ada"))
    assert reply.message == "Hello, Ada!"


async def test_say_hello_without_a_name(channel):
    reply = await helloworld_pb2_grpc.GreeterStub(channel).SayHello(HelloRequest())
    assert reply.message == "Hello, world!"


async def test_stream_reply_sends_the_configured_count():
    async with running(stream_count=4) as server, channel_to(server) as channel:
        call = helloworld_pb2_grpc.GreeterStub(channel).SayHelloStreamReply(HelloRequest(name="B"))
        replies = [r.message async for r in call]
    assert replies == [f"Hello, B! ({i}/4)" for i in range(1, 5)]


async def test_stream_count_may_be_asked_for_up_to_the_cap():
    async with running(stream_max=5, stream_count=2) as server, channel_to(server) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        call = stub.SayHelloStreamReply(HelloRequest(), metadata=(("x-greeter-stream-count", "5"),))
        assert len([r async for r in call]) == 5
        for bad in ("6", "-1", "many"):
            call = stub.SayHelloStreamReply(
                HelloRequest(), metadata=(("x-greeter-stream-count", bad),)
            )
            with pytest.raises(grpc.aio.AioRpcError) as error:
                _ = [r async for r in call]
            assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_bidi_answers_each_request(channel):
    names = ["a", "b", "c"]
    call = helloworld_pb2_grpc.GreeterStub(channel).SayHelloBidiStream(
        iter(HelloRequest(name=n) for n in names)
    )
    assert [r.message async for r in call] == [f"Hello, {n}!" for n in names]


async def test_bidi_stream_is_capped():
    async with running(stream_max=3, stream_count=3) as server, channel_to(server) as channel:
        # Write and read in step: a request iterator would keep writing after the server
        # ended the call, and the client would then report its own failed write (INTERNAL).
        call = helloworld_pb2_grpc.GreeterStub(channel).SayHelloBidiStream()
        got = []
        for i in range(3):
            await call.write(HelloRequest(name=str(i)))
            got.append(await call.read())
        await call.write(HelloRequest(name="one too many"))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call.read()
    assert len(got) == 3
    assert error.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_unknown_method_is_unimplemented(channel):
    call = channel.unary_unary("/helloworld.Greeter/SayGoodbye")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(b"")
    assert error.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_malformed_request_body_gets_an_error_status_and_server_lives_on(channel):
    raw = channel.unary_unary("/helloworld.Greeter/SayHello")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await raw(b"\xff\xff\xff\xff garbage")
    assert error.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    reply = await helloworld_pb2_grpc.GreeterStub(channel).SayHello(HelloRequest(name="after"))
    assert reply.message == "Hello, after!"


async def test_message_over_the_size_limit_is_resource_exhausted():
    async with running(max_recv_message_size=1024) as server, channel_to(server) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.SayHello(HelloRequest(name="x" * 4096))
        assert error.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await stub.SayHello(HelloRequest(name="ok"))).message == "Hello, ok!"


async def test_expired_deadline_stops_server_streaming_work():
    async with running(stream_interval=0.05, stream_max=1000) as server, channel_to(server) as ch:
        stub = helloworld_pb2_grpc.GreeterStub(ch)
        await asyncio.wait_for(ch.channel_ready(), 10)  # the deadline is for the stream alone
        call = stub.SayHelloStreamReply(
            HelloRequest(), timeout=1.0, metadata=(("x-greeter-stream-count", "1000"),)
        )
        got = 0
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for _ in call:
                got += 1
        assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0 < got < 100  # 1000 replies, 50 ms apart, would take 50 s
        # the server-side stream was stopped: its metrics say DeadlineExceeded
        labels = ("server_stream", "helloworld.Greeter", "SayHelloStreamReply")
        handled = server.metrics.handled.labels(*labels, "DeadlineExceeded")
        counted = await until(handled._value.get, lambda n: n == 1)
        canceled = server.metrics.handled.labels(*labels, "Canceled")._value.get()
        assert counted == 1, f"counted Canceled {canceled} times instead"


async def test_client_cancel_mid_stream_frees_the_call():
    async with running(stream_interval=0.02) as server, channel_to(server) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        call = stub.SayHelloStreamReply(
            HelloRequest(), metadata=(("x-greeter-stream-count", "1000"),)
        )
        async for _ in call:
            break
        call.cancel()
        labels = ("server_stream", "helloworld.Greeter", "SayHelloStreamReply", "Canceled")
        canceled = server.metrics.handled.labels(*labels)._value.get
        assert await until(canceled, lambda n: n == 1, timeout=2.0) == 1
        reply = await stub.SayHello(HelloRequest(name="still"))
        assert reply.message == "Hello, still!"
