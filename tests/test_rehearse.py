"""``greeter rehearse``: real nginx in front of real ``greeter serve`` processes, on 127.0.0.1.

Each test starts its own rehearsal (two clusters of two backends, a canary, nginx with TLS
for grpc.example.com) and talks to it only through the gateway, with real gRPC clients. The
backend-TLS tests run the same fleet with TLS from nginx to the backends (``--backend-tls``).
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

from greeter import certs
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter._proto.grpc.reflection.v1 import reflection_pb2 as v1_pb2
from greeter._proto.grpc.reflection.v1 import reflection_pb2_grpc as v1_grpc
from greeter.client import Target, identity_of, open_channel
from greeter.rehearse import scenarios
from greeter.rehearse.cli import report_lines
from greeter.rehearse.fleet import CANARY_POD, Rehearsal, RehearsalConfig
from greeter.rehearse.nginx import (
    BACKEND_HOST,
    CANARY_BACKEND_HOST,
    HOST,
    BackendTLS,
    Gateway,
    render,
)
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


@pytest.fixture
async def tls_rehearsal(tmp_path: Path) -> AsyncIterator[Rehearsal]:
    """The same fleet with TLS from nginx to the backends (``greeter rehearse --backend-tls``)."""
    require_tool("nginx", "apt-get install -y nginx-light")
    async with Rehearsal(_config(tmp_path, backend_tls=True)) as r:
        yield r


async def _list_services(target: Target) -> None:
    """What `grpcurl -insecure -authority grpc.example.com ADDR list` does, in v1alpha and v1."""
    async with open_channel(target) as channel:
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
    # Cleartext HTTP/2 to the backends unless backend TLS is on.
    assert "grpc_pass grpc://$greeter_upstream;" in conf
    assert "grpcs://" not in conf
    assert "grpc_ssl" not in conf


def test_backend_tls_config_verifies_each_service_by_its_name(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    gateway = Gateway(
        port=8443,
        fleet=["unix:/a.sock"],
        canary=["unix:/c.sock"],
        cert=Path("c"),
        key=Path("k"),
        backend_tls=BackendTLS(ca),
    )
    conf = render(gateway, tmp_path)
    assert "grpc_pass grpcs://$greeter_upstream;" in conf
    assert "grpc_pass grpcs://fleet;" in conf
    assert "grpc_pass grpc://" not in conf
    for line in (
        "grpc_ssl_verify on;",
        f"grpc_ssl_trusted_certificate {ca};",
        "grpc_ssl_server_name on;",
        f"grpc_ssl_name {BACKEND_HOST};",  # location / goes to the fleet only
        "grpc_ssl_name $greeter_backend_name;",  # the canary rule's location
        f'"true" {CANARY_BACKEND_HOST};',
        f"default {BACKEND_HOST};",
        "grpc_ssl_protocols TLSv1.2 TLSv1.3;",
        "grpc_ssl_session_reuse on;",
    ):
        assert line in conf, line


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
    await _list_services(rehearsal.target())


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


# -- TLS from the gateway to the backends -----------------------------------------------------
async def test_backend_tls_through_the_gateway(tls_rehearsal: Rehearsal) -> None:
    r = tls_rehearsal
    conf = (r.workdir / "nginx" / "nginx.conf").read_text()
    assert "grpc_pass grpcs://$greeter_upstream;" in conf
    assert "grpc_ssl_verify on;" in conf
    assert f"grpc_ssl_trusted_certificate {r.fleet_ca};" in conf
    # The backends really serve TLS only: a cleartext call straight to one fails.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _hello(Target(address=r.backends[0].address))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    # Through the gateway: both clusters answer (round robin over four backends), reflection
    # and health too; the canary, another Service with its own certificate, takes marked calls.
    seen = [await _hello(r.target()) for _ in range(8)]
    assert {m["x-greeter-cluster"] for m in seen} == set(r.config.clusters)
    assert CANARY_POD not in {m["x-greeter-pod"] for m in seen}
    await _list_services(r.target())
    async with open_channel(r.target()) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await _hello(r.target(canary=True)))["x-greeter-pod"] == CANARY_POD

    # The canary restarted with a certificate for the right name from another CA: nginx
    # refuses it (no other canary backend, so the call fails: 502, UNAVAILABLE).
    canary = r.canary[0]
    rogue_ca = certs.make_ca(r.workdir / "rogue", "not the fleet CA")
    folder = r.fleet_ca.parent  # overwrite the canary's certificate in place
    certs.make_leaf(folder, "grpc-service-canary", [CANARY_BACKEND_HOST], ca=rogue_ca)
    canary.ca = rogue_ca.cert  # its readiness check trusts the rogue CA
    await r.restart(canary)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _hello(r.target(canary=True))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert r.nginx is not None
    assert "upstream SSL certificate verify error" in r.nginx.error_log(tail=200)
    # The canary was up (its readiness check, against the rogue CA, passed) and the fleet
    # keeps answering: only the unverifiable backend is refused.
    assert (await _hello(r.target()))["x-greeter-cluster"] in r.config.clusters


# -- disruptions under load ------------------------------------------------------------------
@pytest.mark.parametrize("backend_tls", [False, True], ids=["h2c", "backend-tls"])
async def test_rolling_drain_under_load_loses_nothing(tmp_path: Path, backend_tls: bool) -> None:
    require_tool("nginx", "apt-get install -y nginx-light")
    # With backend TLS every call is a new upstream connection with its own handshake (no
    # upstream keep-alive, see docs/rehearsal.md): about ten times nginx's CPU per call, so a
    # lower rate keeps the rate check about stalls, not about a busy 2-core machine.
    rate = 150.0 if backend_tls else 200.0
    async with Rehearsal(_config(tmp_path, backend_tls=backend_tls)) as r:
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


@pytest.mark.parametrize("backend_tls", [False, True], ids=["h2c", "backend-tls"])
async def test_cluster_outage_is_bounded(tmp_path: Path, backend_tls: bool) -> None:
    require_tool("nginx", "apt-get install -y nginx-light")
    rate, after = 200.0, 4.0
    async with Rehearsal(_config(tmp_path, backend_tls=backend_tls)) as r:
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
