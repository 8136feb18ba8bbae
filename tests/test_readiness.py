"""greeter.v1.Readiness/Check: the server's health as a gRPC status code, as an ALB sees it.

ALB's gRPC health checks send an empty request message to one path and judge only the
status code. These tests send exactly that (zero bytes, no serializer) and the generated
stub's request, before and during a real drain, next to grpc.health.v1.Health.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import channel_to, running, until
from greeter._proto.greeter.v1 import readiness_pb2, readiness_pb2_grpc
from greeter._proto.grpc.reflection.v1 import reflection_pb2, reflection_pb2_grpc
from greeter.health import READINESS_SERVICE_NAME

# The path the chart's and gitops' ALB Ingresses name in alb.ingress.kubernetes.io/healthcheck-path.
ALB_PATH = "/greeter.v1.Readiness/Check"
GREETER = "helloworld.Greeter"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
CheckRequest = readiness_pb2.CheckRequest


def empty_check(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    """The call a status-code health checker makes: raw bytes, no (de)serializer."""
    return channel.unary_unary(ALB_PATH, request_serializer=None, response_deserializer=None)


async def code_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """The status code and details a call ended with."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return reply.status


def test_the_path_is_the_one_the_ingresses_name():
    assert f"/{READINESS_SERVICE_NAME}/Check" == ALB_PATH


async def test_empty_request_is_ok_while_serving(channel):
    raw = await empty_check(channel)(b"", timeout=5)
    assert readiness_pb2.CheckResponse.FromString(raw).status == readiness_pb2.CheckResponse.SERVING
    assert await health_status(channel) == SERVING


@pytest.mark.parametrize("service", ["", GREETER])
async def test_stub_is_ok_while_serving(channel, service):
    stub = readiness_pb2_grpc.ReadinessStub(channel)
    reply = await stub.Check(CheckRequest(service=service), timeout=5)
    assert reply.status == readiness_pb2.CheckResponse.SERVING


async def test_unknown_service_is_not_found(channel):
    stub = readiness_pb2_grpc.ReadinessStub(channel)
    code, details = await code_of(stub.Check(CheckRequest(service="no.Such"), timeout=5))
    assert code is grpc.StatusCode.NOT_FOUND
    assert "no.Such" in details
    raw = CheckRequest(service="no.Such").SerializeToString()
    code, _ = await code_of(empty_check(channel)(raw, timeout=5))
    assert code is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "body",
    [b"\x0a\x05ab", b"\xff", b"\x0a\x01\xff"],
    ids=["truncated-field", "truncated-tag", "bad-utf8"],
)
async def test_undecodable_request_is_invalid_argument(channel, body):
    code, details = await code_of(empty_check(channel)(body, timeout=5))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request message" in details
    # and the server goes on answering
    assert await empty_check(channel)(b"", timeout=5) is not None


async def test_reflection_lists_and_describes_it(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask(**request: str) -> reflection_pb2.ServerReflectionResponse:
        replies = [
            r
            async for r in stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(**request)])
            )
        ]
        return replies[0]

    listed = await ask(list_services="")
    assert READINESS_SERVICE_NAME in {s.name for s in listed.list_services_response.service}
    described = await ask(file_containing_symbol=READINESS_SERVICE_NAME)
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    [readiness] = [f for f in files if f.package == "greeter.v1"]
    [service] = readiness.service
    assert [m.name for m in service.method] == ["Check"]


async def test_auth_leaves_it_to_health_checkers():
    """A checker sends no token: with auth on, Readiness is exempt exactly when Health is."""
    exempt = running(auth_enabled=True, auth_tokens=("t1",))
    async with exempt as server, channel_to(server) as channel:
        code, _ = await code_of(empty_check(channel)(b"", timeout=5))
        assert code is grpc.StatusCode.OK
    guarded = running(auth_enabled=True, auth_tokens=("t1",), auth_exempt=("reflection",))
    async with guarded as server, channel_to(server) as channel:
        code, _ = await code_of(empty_check(channel)(b"", timeout=5))
        assert code is grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel)
        code, _ = await code_of(health.Check(health_pb2.HealthCheckRequest(), timeout=5))
        assert code is grpc.StatusCode.UNAUTHENTICATED


def handled(server, code: str) -> float:
    labels = {
        "grpc_type": "unary",
        "grpc_service": READINESS_SERVICE_NAME,
        "grpc_method": "Check",
        "grpc_code": code,
    }
    return server.metrics.registry.get_sample_value("grpc_server_handled_total", labels) or 0.0


async def test_unavailable_during_the_drain_while_health_says_not_serving():
    # a drain delay long enough for every call below to land inside it on a busy machine
    async with running(drain_delay=5.0) as server:
        async with channel_to(server) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = readiness_pb2_grpc.ReadinessStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest())
            assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
            assert (await stub.Check(CheckRequest(), timeout=5)).status == SERVING

            drain = asyncio.create_task(server.drain())
            # the Watch stream sees NOT_SERVING: the drain delay has begun
            assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
            assert await health_status(channel) == NOT_SERVING
            assert await health_status(channel, GREETER) == NOT_SERVING
            code, details = await code_of(empty_check(channel)(b"", timeout=5))
            assert code is grpc.StatusCode.UNAVAILABLE
            assert details == "draining: NOT_SERVING"
            for service in ("", GREETER):
                code, details = await code_of(stub.Check(CheckRequest(service=service), timeout=5))
                assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "draining: NOT_SERVING")
            # an unknown service is still unknown, and Health's List is unchanged
            code, _ = await code_of(stub.Check(CheckRequest(service="no.Such"), timeout=5))
            assert code is grpc.StatusCode.NOT_FOUND
            listed = await health.List(health_pb2.HealthListRequest(), timeout=5)
            assert {k: v.status for k, v in listed.statuses.items()} == {
                "": NOT_SERVING,
                GREETER: NOT_SERVING,
            }
            # the refusals are counted like any call's, with their real code
            counted = await until(lambda: handled(server, "Unavailable"), lambda n: n >= 3)
            assert counted == 3
            assert handled(server, "OK") == 1
            watch.cancel()
            await asyncio.wait_for(drain, 20)
        server.drain = _noop  # already drained; the context manager's drain is a no-op


async def _noop() -> None:
    return None


async def test_sigterm_flips_readiness_with_health(spawn_server):
    """The real SIGTERM path of a ``greeter serve`` process, seen as an ALB would."""
    proc = spawn_server(env={"GREETER_DRAIN_DELAY": "30"})
    async with grpc.aio.insecure_channel(proc.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert (await asyncio.wait_for(watch.read(), 10)).status == SERVING
        raw = await empty_check(channel)(b"", timeout=5)
        assert (
            readiness_pb2.CheckResponse.FromString(raw).status
            == readiness_pb2.CheckResponse.SERVING
        )

        proc.proc.send_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(watch.read(), 10)).status == NOT_SERVING
        # From the moment Health says NOT_SERVING, every empty check fails with UNAVAILABLE,
        # while Health/Check itself still answers OK (with NOT_SERVING in the reply).
        for _ in range(3):
            code, details = await code_of(empty_check(channel)(b"", timeout=5))
            assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "draining: NOT_SERVING")
            assert await health_status(channel) == NOT_SERVING
        # the server is still inside its drain delay, serving
        assert proc.proc.poll() is None
        watch.cancel()
    proc.proc.send_signal(signal.SIGINT)  # a second signal ends the 30 s delay at once
    assert await asyncio.to_thread(proc.proc.wait, 15) == 128 + signal.SIGINT
