"""``greeter rehearse``: real nginx in front of real ``greeter serve`` processes, on 127.0.0.1.

Each test starts its own rehearsal (two clusters of two backends, a canary, nginx with TLS
for grpc.example.com) and talks to it only through the gateway, with real gRPC clients.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc

from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter._proto.grpc.reflection.v1 import reflection_pb2 as v1_pb2
from greeter._proto.grpc.reflection.v1 import reflection_pb2_grpc as v1_grpc
from greeter.client import Target, identity_of, open_channel
from greeter.rehearse import scenarios
from greeter.rehearse.cli import report_lines
from greeter.rehearse.fleet import CANARY_POD, Rehearsal, RehearsalConfig
from greeter.rehearse.nginx import HOST, Gateway, render
from greeter.rehearse.traffic import Outcome, TrafficReport
from tests.conftest import ROOT, require_tool

TOKEN = "rehearsal-token"
GREETER = helloworld_pb2.DESCRIPTOR.services_by_name["Greeter"].full_name


def _config(tmp_path: Path, **overrides: object) -> RehearsalConfig:
    values: dict[str, object] = {
        "port": 0,
        "drain_delay": 1.0,
        "grace_period": 5.0,
        "workdir": tmp_path / "rehearsal",
    }
    values.update(overrides)
    return RehearsalConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def rehearsal(tmp_path: Path) -> AsyncIterator[Rehearsal]:
    require_tool("nginx", "apt-get install -y nginx-light")
    async with Rehearsal(_config(tmp_path, auth_tokens=(TOKEN,))) as r:
        yield r


async def _hello(target: Target, name: str = "rehearsal") -> dict[str, str]:
    async with open_channel(target) as channel:
        call = helloworld_pb2_grpc.GreeterStub(channel).SayHello(
            helloworld_pb2.HelloRequest(name=name), timeout=10, metadata=target.metadata or None
        )
        reply = await call
        assert reply.message == f"Hello, {name}!"
        return identity_of(await call.initial_metadata(), await call.trailing_metadata())


# -- configuration, no processes -------------------------------------------------------------
def test_config_has_the_drain_and_canary_pieces(tmp_path: Path) -> None:
    gateway = Gateway(
        port=8443,
        fleet=["unix:/a.sock:0"],
        canary=["unix:/c.sock:0"],
        cert=Path("c"),
        key=Path("k"),
    )
    conf = render(gateway, tmp_path)
    assert "listen 127.0.0.1:8443 ssl http2;" in conf
    assert f"server_name {HOST};" in conf
    assert "grpc_next_upstream error timeout invalid_header non_idempotent;" in conf
    assert "map $http_x_canary $greeter_upstream" in conf
    assert '"true" canary;' in conf
    assert "keepalive_requests 10000000;" in conf
    assert "max_fails=1 fail_timeout=2s" in conf
    assert "grpc_read_timeout 3600s;" in conf


def test_missing_nginx_says_how_to_install(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "greeter", "rehearse", "--nginx", str(tmp_path / "no-nginx")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 3
    assert "apt-get install -y nginx-light" in result.stderr


# -- through the gateway ----------------------------------------------------------------------
async def test_reflection_lists_services_through_the_gateway(rehearsal: Rehearsal) -> None:
    """What `grpcurl -insecure -authority grpc.example.com ADDR list` does, in v1alpha and v1."""
    async with open_channel(rehearsal.target()) as channel:
        for stub, request in (
            (v1alpha_grpc.ServerReflectionStub(channel), v1alpha_pb2.ServerReflectionRequest),
            (v1_grpc.ServerReflectionStub(channel), v1_pb2.ServerReflectionRequest),
        ):
            names = set()
            async for reply in stub.ServerReflectionInfo(
                iter([request(list_services="")]), timeout=10
            ):
                names |= {s.name for s in reply.list_services_response.service}
            assert GREETER in names
            assert "grpc.health.v1.Health" in names


async def test_calls_health_and_auth_through_the_gateway(rehearsal: Rehearsal) -> None:
    target = rehearsal.target()
    assert (await _hello(target))["x-greeter-cluster"] in rehearsal.config.clusters
    async with open_channel(target) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        md = target.metadata
        request = helloworld_pb2.HelloRequest(name="s")
        replies = [r.message async for r in stub.SayHelloStreamReply(request, metadata=md)]
        assert len(replies) == 10
        assert replies[-1] == "Hello, s! (10/10)"
        bidi = stub.SayHelloBidiStream(iter([request] * 3), metadata=md)
        assert [r.message async for r in bidi] == ["Hello, s!"] * 3
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING

    # Auth: the gateway passes the token through; the answers match a direct connection.
    anonymous = Target(address=rehearsal.address, cacert=str(rehearsal.cert), authority=HOST)
    forged = Target(**{**anonymous.__dict__, "metadata": (("authorization", "Bearer nope"),)})
    direct = rehearsal.backends[0].address
    for who in (anonymous, forged):
        codes = []
        for address in (rehearsal.address, direct):
            plain = Target(address=address, metadata=who.metadata)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _hello(who if address == rehearsal.address else plain)
            codes.append(caught.value.code())
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 2


async def test_canary_rule_takes_marked_calls_only(rehearsal: Rehearsal) -> None:
    marked = [await _hello(rehearsal.target(canary=True)) for _ in range(8)]
    assert {m["x-greeter-pod"] for m in marked} == {CANARY_POD}
    unmarked = [await _hello(rehearsal.target()) for _ in range(16)]
    assert CANARY_POD not in {m["x-greeter-pod"] for m in unmarked}
    # Another value of the header is not the canary's.
    other = rehearsal.target(("x-canary", "false"))
    assert (await _hello(other))["x-greeter-pod"] != CANARY_POD


async def test_other_host_names_get_the_default_backend(rehearsal: Rehearsal) -> None:
    target = Target(
        address=rehearsal.address,
        cacert=str(rehearsal.cert),
        authority="other.example.com",
        metadata=rehearsal.target().metadata,
    )
    # The certificate is for grpc.example.com: verify against it, but send another :authority.
    async with grpc.aio.secure_channel(
        rehearsal.address,
        grpc.ssl_channel_credentials(rehearsal.cert.read_bytes()),
        options=[
            ("grpc.default_authority", "other.example.com"),
            ("grpc.ssl_target_name_override", HOST),
        ],
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await helloworld_pb2_grpc.GreeterStub(channel).SayHello(
                helloworld_pb2.HelloRequest(), timeout=5, metadata=target.metadata
            )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # HTTP 404


def test_greeter_load_through_the_gateway_sees_both_clusters(rehearsal: Rehearsal) -> None:
    target = rehearsal.target()
    md = [a for k, v in target.metadata for a in ("-m", f"{k}:{v}")]
    result = subprocess.run(
        [sys.executable, "-m", "greeter", "load", rehearsal.address, "--insecure",
         "--authority", HOST, *md, "-c", "8", "--connections", "2", "--procs", "1",
         "-n", "400", "-O", "json", "-q"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status_codes"] == {"OK": 400}
    assert set(report["by_cluster"]) == set(rehearsal.config.clusters)
    for cluster in rehearsal.config.clusters:
        assert report["by_cluster"][cluster]["count"] >= 100  # round robin over 4 backends


# -- disruptions under load ------------------------------------------------------------------
async def test_rolling_drain_under_load_loses_nothing(tmp_path: Path) -> None:
    require_tool("nginx", "apt-get install -y nginx-light")
    rate = 200.0
    async with Rehearsal(_config(tmp_path)) as r:
        result = await scenarios.rolling_drain(r, rps=rate)
        summary = result.summary()
        assert all(b.restarts == 1 for b in r.backends)
    # Sending before the first SIGTERM, still running (interrupted) after the last restart.
    assert summary["covered_all_restarts"], summary
    restarts = [e for e in summary["events"] if e["event"] == "serving again"]
    assert [e["exit_code"] for e in restarts] == [0, 0, 0, 0]  # each drained, not killed
    # Over its own duration (~20 s: four restarts and pauses, at least the four pauses) the load
    # kept its rate; a load that stalls, or stops sending while a backend is down, falls short.
    assert summary["duration_s"] >= 4 * r.config.fail_timeout, summary
    assert summary["count"] >= 0.8 * rate * summary["duration_s"], summary
    assert summary["status_codes"] == {"OK": summary["count"]}, summary
    assert set(summary["by_cluster"]) == set(r.config.clusters)


async def test_cluster_outage_is_bounded(tmp_path: Path) -> None:
    require_tool("nginx", "apt-get install -y nginx-light")
    rate, after = 200.0, 4.0
    async with Rehearsal(_config(tmp_path)) as r:
        result = await scenarios.cluster_outage(r, "cluster-b", rps=rate, after=after)
        assert all(b.alive for b in r.backends)  # revived afterwards
    s = result.summary()
    assert s["survivors"] == [], s  # both cluster-b backends were dead during the outage
    # ~6 s of traffic (2 before the kill, 4 after); the in-process probe slows down when the
    # 2 cores are busy, a stalled one falls well short.
    assert s["count"] >= 0.5 * rate * s["duration_s"], s
    assert s["by_cluster"].get("cluster-b", 0) > 0, s  # the victims had traffic before the kill
    assert s["ok_sent_after_dead"] >= 0.4 * rate * after, s  # and the traffic went on after it
    assert s["failed"] <= scenarios.OUTAGE_MAX_FAILED, s
    # The calls that fail are those already sent to a killed backend: none sent once the
    # victims were gone, none sent later than the window after the SIGKILL. (Judged by when each
    # call was sent; when its error was read depends on the client's pace.)
    assert s["failures_sent_after_dead"] == 0, s
    if s["failed"]:
        assert s["last_failure_sent_after_kill_s"] <= scenarios.OUTAGE_MAX_WINDOW_S, s
    # The surviving cluster carried the traffic after the kill.
    assert s["by_cluster"]["cluster-a"] > s["by_cluster"].get("cluster-b", 0)


def test_outage_report_says_no_failed_calls_when_none_failed() -> None:
    """The human report of an outage without, then with, failed calls (no "Nones")."""
    ok = [Outcome(0.1 * i, "OK", sent=0.1 * i - 0.01, cluster="cluster-a") for i in range(1, 40)]
    for outcomes, failed in ((ok, 0), ([*ok, Outcome(2.05, "UNAVAILABLE", sent=2.02)], 1)):
        report = TrafficReport(outcomes=sorted(outcomes, key=lambda o: o.at), duration=4.0)
        summary = scenarios.ScenarioResult(
            "cluster-outage", scenarios.outage_summary(report, 2.0, 2.01, []), []
        ).summary()
        text = "\n".join(report_lines(summary))
        assert summary["failed"] == failed
        assert "None" not in text, text
        if failed:
            assert "no failed calls" not in text
            assert "failures from 2.05s" in text, text
            assert "last failed call sent 0.02s after the kill" in text, text
        else:
            assert "  no failed calls (kill at 2.0s)" in text.splitlines(), text
