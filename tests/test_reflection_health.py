"""Reflection through real reflection clients (v1 and v1alpha), and health Check/Watch."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc

from conftest import channel_to, running
from greeter._proto.grpc.reflection.v1 import reflection_pb2 as v1_pb2
from greeter._proto.grpc.reflection.v1 import reflection_pb2_grpc as v1_grpc

EXPECTED = {
    "helloworld.Greeter",
    "grpc.health.v1.Health",
    "greeter.v1.Readiness",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
VERSIONS = [(v1_pb2, v1_grpc), (v1alpha_pb2, v1alpha_grpc)]


async def _ask(channel, pb2, grpc_mod, **request):
    stub = grpc_mod.ServerReflectionStub(channel)
    responses = [
        r async for r in stub.ServerReflectionInfo(iter([pb2.ServerReflectionRequest(**request)]))
    ]
    assert len(responses) == 1
    return responses[0]


@pytest.mark.parametrize(("pb2", "grpc_mod"), VERSIONS, ids=["v1", "v1alpha"])
async def test_list_services(channel, pb2, grpc_mod):
    response = await _ask(channel, pb2, grpc_mod, list_services="")
    assert {s.name for s in response.list_services_response.service} == EXPECTED


@pytest.mark.parametrize(("pb2", "grpc_mod"), VERSIONS, ids=["v1", "v1alpha"])
async def test_describe_greeter(channel, pb2, grpc_mod):
    response = await _ask(channel, pb2, grpc_mod, file_containing_symbol="helloworld.Greeter")
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    greeter = next(f for f in files if f.package == "helloworld")
    methods = {m.name for m in greeter.service[0].method}
    assert methods == {"SayHello", "SayHelloStreamReply", "SayHelloBidiStream"}


async def test_reflection_can_be_turned_off():
    async with running(reflection=False) as server, channel_to(server) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _ask(channel, v1_pb2, v1_grpc, list_services="")
        assert error.value.code() is grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("service", ["", "helloworld.Greeter"])
async def test_check_serving(channel, service):
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_unknown_service_is_not_found(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.Such"))
    assert error.value.code() is grpc.StatusCode.NOT_FOUND


async def test_watch_sees_not_serving_on_drain_and_ends():
    # a drain delay long enough for the Check below to land inside it on a busy machine
    async with running(drain_delay=3.0) as server:
        async with channel_to(server) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="helloworld.Greeter"))
            first = await asyncio.wait_for(watch.read(), 5)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            drain = asyncio.create_task(server.drain())
            second = await asyncio.wait_for(watch.read(), 5)
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # Check says the same during the drain delay
            check = await stub.Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # and the Watch stream ends when the server stops, instead of holding the grace
            with pytest.raises(grpc.aio.AioRpcError):
                while await asyncio.wait_for(watch.read(), 5) is not grpc.aio.EOF:
                    pass
            await asyncio.wait_for(drain, 10)
        server.drain = _noop  # already drained; the context manager's drain is a no-op


async def _noop():
    return None


async def test_watch_unknown_service_reports_service_unknown(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="no.Such"))
    first = await asyncio.wait_for(watch.read(), 5)
    assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    watch.cancel()
