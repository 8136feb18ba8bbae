"""OpenTelemetry traces (docs/tracing.md): one SERVER span per call, exported over OTLP to a
real receiver on loopback (tests/otlp_support.py, the official opentelemetry-proto service),
child of the caller's traceparent; never in the way of a call; off unless configured."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import urllib.request
from dataclasses import replace

import grpc
import jsonschema
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from load_support import load_cli
from otlp_support import CLIENT, SERVER, Received, otlp_http_receiver, otlp_receiver, traceparent
from web_support import SAY_HELLO, hello, request

from conftest import channel_to, free_port, running, until
from greeter import cli
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.client import Target
from greeter.load import LoadConfig, run_load, schema
from greeter.load.merge import merge_reports

OTEL_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED")


def ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


async def say_hello(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = (), timeout: float = 10
) -> grpc.aio.UnaryUnaryCall:
    stub = helloworld_pb2_grpc.GreeterStub(channel)
    call = stub.SayHello(helloworld_pb2.HelloRequest(name="t"), metadata=metadata, timeout=timeout)
    await call
    return call


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean OTEL_* environment for an in-process server (it reads os.environ), with a short
    batch delay so spans leave within the test."""
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    return monkeypatch


async def test_spans_join_the_callers_trace_with_only_the_standard_env(
    spawn_server: object,
) -> None:
    """Only OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME: a call with a traceparent gets a
    SERVER span in that trace, child of the caller's span, with the rpc.* attributes and the
    service and pod as resource attributes; one without gets a root span; gRPC-Web too; the
    access log names the trace; the drain flushes what is queued (the batch delay is 5 s)."""
    async with otlp_receiver() as receiver:
        proc = spawn_server(  # type: ignore[operator]
            "--web-port",
            "0",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_SERVICE_NAME": "greeter-under-test",
                "GREETER_CLUSTER_NAME": "cluster-t",
                "GREETER_POD_NAME": "pod-t",
                "GREETER_ZONE": "zone-t",
                "GREETER_ACCESS_LOG_BUDGET": "100",
            },
        )
        trace_id, parent_id = ids()
        async with grpc.aio.insecure_channel(proc.address) as channel:
            await say_hello(channel, (("traceparent", traceparent(trace_id, parent_id)),))
            await say_hello(channel)
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        code, _, err = await asyncio.to_thread(proc.stop)
        assert code == 0, err
        spans = await until(receiver.spans.snapshot, lambda got: len(got) >= 2)
    ours = [s for s in spans if s.trace_id == trace_id]
    assert len(ours) == 1, spans
    span = ours[0]
    assert span.name == "helloworld.Greeter/SayHello"
    assert span.kind == SERVER
    assert span.parent_span_id == parent_id
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.service"] == "helloworld.Greeter"
    assert span.attributes["rpc.method"] == "SayHello"
    assert span.attributes["rpc.grpc.status_code"] == 0
    assert span.attributes["network.peer.address"] == "127.0.0.1"
    assert span.resource["service.name"] == "greeter-under-test"
    assert span.resource["k8s.pod.name"] == "pod-t"
    assert span.resource["k8s.cluster.name"] == "cluster-t"
    assert span.resource["cloud.availability_zone"] == "zone-t"
    roots = [s for s in spans if s.trace_id != trace_id]
    assert len(roots) == 1, spans
    assert roots[0].parent_span_id == ""
    # The health check made no span (the roots are the one call without a traceparent); the
    # access log names each traced call's trace and span.
    lines = [json.loads(line) for line in err.splitlines()]
    rpcs = [line for line in lines if line.get("msg") == "rpc" and "Greeter" in line["method"]]
    assert {(r["trace_id"], r["span_id"]) for r in rpcs} == {(s.trace_id, s.span_id) for s in spans}
    phases = [line["phase"] for line in lines if line.get("msg") == "shutdown phase done"]
    assert phases == ["not_serving", "drain_delay", "stop", "traces", "metrics"]


async def test_grpc_web_calls_get_spans_too(otel_env: pytest.MonkeyPatch) -> None:
    async with otlp_receiver() as receiver:
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        trace_id, parent_id = ids()
        async with running(web_port=free_port()) as server:
            reply = await request(
                server.web_port, SAY_HELLO, hello(), traceparent=traceparent(trace_id, parent_id)
            )
            assert reply.grpc_status == 0
            spans = await until(
                lambda: receiver.spans.in_trace(trace_id), lambda got: len(got) >= 1
            )
    assert [(s.name, s.parent_span_id) for s in spans] == [
        ("helloworld.Greeter/SayHello", parent_id)
    ]


async def test_parent_based_sampling_follows_the_callers_flag(
    otel_env: pytest.MonkeyPatch,
) -> None:
    """OTEL_TRACES_SAMPLER=parentbased_traceidratio with ratio 0: calls whose caller sampled
    are exported, roots and unsampled callers are not; the metrics' exemplar names the
    sampled call's trace."""
    async with otlp_receiver() as receiver:
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        otel_env.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
        otel_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
        sampled, unsampled = ids(), ids()
        async with running() as server, channel_to(server) as channel:
            await say_hello(channel)
            await say_hello(channel, (("traceparent", traceparent(*unsampled, sampled=False)),))
            await say_hello(channel, (("traceparent", traceparent(*sampled)),))
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.metrics_port}/metrics",
                headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            )
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(request).read())
            await until(receiver.spans.snapshot, lambda got: len(got) >= 1)
        spans = receiver.spans.snapshot()
    assert [s.trace_id for s in spans] == [sampled[0]]
    exemplars = [
        line
        for line in body.decode().splitlines()
        if line.startswith("grpc_server_handling_seconds_bucket") and " # {" in line
    ]
    assert len(exemplars) == 1, exemplars
    assert f'trace_id="{sampled[0]}"' in exemplars[0]


async def test_a_collector_down_or_hanging_never_holds_a_call(
    otel_env: pytest.MonkeyPatch,
) -> None:
    """With the receiver gone every call succeeds; with one that never answers, calls succeed
    too, the bounded queue drops the oldest spans and counts them, and the drain gives the
    flush only what is left of the grace period (the server still stops)."""
    async with otlp_receiver() as gone:
        endpoint = gone.endpoint
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    async with running() as server, channel_to(server) as channel:
        await asyncio.gather(*(say_hello(channel, timeout=5) for _ in range(100)))
        assert server.tracing is not None

    otel_env.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "16")
    otel_env.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    # The hung export must outlast the calls (the default deadline is 10 s): one batch in it.
    otel_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    async with otlp_receiver(hang=True) as hanging:
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", hanging.endpoint)
        async with running(grace_period=0.5) as server, channel_to(server) as channel:
            for _ in range(100):
                await say_hello(channel, timeout=5)
            await until(lambda: hanging.service.calls, lambda calls: calls >= 1)
            dropped = server.metrics.spans_dropped._value.get()  # type: ignore[union-attr]
        # 100 spans, at most one batch (4) in the hung export and 16 queued: the rest dropped
        assert dropped >= 100 - 4 - 16


async def test_off_unless_configured(otel_env: pytest.MonkeyPatch) -> None:
    """No endpoint: no tracing, no exporter thread. OTEL_SDK_DISABLED wins over an endpoint."""
    before = set(threading.enumerate())
    async with otlp_receiver() as receiver:
        for env in (
            {},
            {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SDK_DISABLED": "true"},
        ):
            for key, value in env.items():
                otel_env.setenv(key, value)
            async with running() as server, channel_to(server) as channel:
                await say_hello(channel, (("traceparent", traceparent(*ids())),))
                assert server.tracing is None
                started = set(threading.enumerate()) - before
                assert not [t for t in started if t.name.startswith("OtelBatch")]
        assert receiver.service.calls == 0
        assert receiver.spans.snapshot() == []


async def test_http_protobuf_and_the_flag(otel_env: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf with the endpoint from --otlp-endpoint."""
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with otlp_http_receiver() as (url, spans):
        trace_id, parent_id = ids()
        async with running(otlp_endpoint=url) as server, channel_to(server) as channel:
            await say_hello(channel, (("traceparent", traceparent(trace_id, parent_id)),))
            got = await until(lambda: spans.in_trace(trace_id), lambda got: len(got) >= 1)
    assert [(s.name, s.parent_span_id, s.resource["service.name"]) for s in got] == [
        ("helloworld.Greeter/SayHello", parent_id, "greeter")
    ]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_SDK_DISABLED": "maybe"}, "OTEL_SDK_DISABLED"),
        ({"GREETER_OTLP_ENDPOINT": "collector:4317"}, "GREETER_OTLP_ENDPOINT"),
    ],
)
def test_bad_tracing_env_fails_at_start_up(
    env: dict[str, str],
    named: str,
    otel_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refused before anything starts (cli.main returns without serving), naming the variable."""
    for key, value in env.items():
        otel_env.setenv(key, value)
    assert cli.main(["serve", "--port", "0", "--metrics-port", "0"]) == 2
    assert named in capsys.readouterr().err


async def test_load_trace_sample_names_traces_the_server_exported(
    otel_env: pytest.MonkeyPatch,
) -> None:
    """``greeter load --trace-sample 1 -O json`` (h2 engine, in a child process with the OTEL
    env): every call starts a trace; the report names the slowest, each of which the server
    exported as a SERVER span whose parent is the load tester's CLIENT span; the grpc engine
    and gRPC-Web (in process, at rate 0.5) do the same for the calls they sample; a merge of
    the reports keeps them."""
    async with otlp_receiver() as receiver:
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        async with running(web_port=free_port()) as server:
            address = f"127.0.0.1:{server.port}"
            args = (address, "-n", "20", "-c", "2", "--procs", "1", "--trace-sample", "1")
            done = await asyncio.to_thread(load_cli, *args, "-O", "json")
            assert done.returncode == 0, done.stderr
            cli_report = json.loads(done.stdout)
            assert cli_report["options"]["engine"] == "h2"
            reports = [cli_report]
            for target, protocol, engine in (
                (address, "grpc", "grpc"),
                (f"127.0.0.1:{server.web_port}", "grpc-web", "auto"),
            ):
                config = LoadConfig(
                    Target(target), total=40, concurrency=2, protocol=protocol, engine=engine
                )
                report = await asyncio.to_thread(run_load, replace(config, trace_sample=0.5))
                assert 0 < report["traces"]["calls"] < 40, report["traces"]
                reports.append(report.data)
            named = [call["trace_id"] for r in reports for call in r["traces"]["slowest"]]

            def exported(spans: list[Received]) -> set[str]:
                return {s.trace_id for s in spans if s.kind == SERVER}

            await until(receiver.spans.snapshot, lambda got: set(named) <= exported(got))
        spans = receiver.spans.snapshot()
    assert cli_report["traces"]["calls"] == 20
    assert len(cli_report["traces"]["slowest"]) == 10
    for trace_id in named:
        in_trace = [s for s in spans if s.trace_id == trace_id]
        (server_span,) = [s for s in in_trace if s.kind == SERVER]
        (client_span,) = [s for s in in_trace if s.kind == CLIENT]
        assert server_span.parent_span_id == client_span.span_id
        assert client_span.resource["service.name"] == "greeter-load"
        assert client_span.name == "helloworld.Greeter/SayHello"
    same_target = reports[:2]  # the h2 and grpc engines' runs
    merged = merge_reports([(f"r{i}", r) for i, r in enumerate(same_target)])
    assert merged["traces"]["calls"] == sum(r["traces"]["calls"] for r in same_target)
    slowest = sorted(
        (c for r in same_target for c in r["traces"]["slowest"]), key=lambda c: -c["latency_ms"]
    )
    assert merged["traces"]["slowest"] == slowest[:10]
    jsonschema.validate(merged.data, schema())
    jsonschema.validate(cli_report, schema())
