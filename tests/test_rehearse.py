"""``greeter rehearse``: real nginx in front of real ``greeter serve`` processes, on 127.0.0.1.

Each test starts its own rehearsal (two clusters of two backends, a canary, nginx with TLS
for grpc.example.com) and talks to it only through the gateway, with real gRPC clients. The
backend-TLS tests run the same fleet with TLS from nginx to the backends (``--backend-tls``);
the policy tests with per-cluster weights and header routing, or a standby cluster.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from greeter import certs
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.cli import main
from greeter.client import Target, open_channel
from greeter.load.stats import clopper_pearson
from greeter.rehearse import findings, report, scenarios
from greeter.rehearse.cli import report_lines
from greeter.rehearse.fleet import CANARY_POD, Rehearsal, RehearsalConfig
from greeter.rehearse.gateway import BACKEND_HOST, CANARY_BACKEND_HOST, HOST, BackendTLS
from greeter.rehearse.nginx import NginxGateway, render
from greeter.rehearse.policy import pod_weights
from greeter.rehearse.traffic import (
    TIMELINE_INTERVAL_S,
    Outcome,
    Traffic,
    TrafficReport,
    load_report,
)
from tests.conftest import ROOT, require_tool
from tests.rehearse_support import calls, check_page, hello, list_services, marked, read_page

TOKEN = "rehearsal-token"
ROUTE_HEADER = "x-cluster"


def _config(tmp_path: Path, **overrides: object) -> RehearsalConfig:
    values: dict[str, object] = {
        "port": 0,
        "drain_delay": 1.0,
        "grace_period": 5.0,
        "workdir": tmp_path / "rehearsal",
    }
    values.update(overrides)
    return RehearsalConfig(**values)  # type: ignore[arg-type]


# One fleet for the tests that only call through it (none changes it), on the module's loop.
IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rehearsal]:
    require_tool("nginx", "apt-get install -y nginx-light")
    tmp_path = tmp_path_factory.mktemp("nginx-rehearsal")
    async with Rehearsal(_config(tmp_path, auth_tokens=(TOKEN,))) as r:
        yield r


@pytest.fixture
async def policy_rehearsal(tmp_path: Path) -> AsyncIterator[Rehearsal]:
    """`greeter rehearse --weights cluster-a=80,cluster-b=20 --route-header x-cluster`."""
    require_tool("nginx", "apt-get install -y nginx-light")
    config = _config(
        tmp_path, weights=(("cluster-a", 80), ("cluster-b", 20)), route_header=ROUTE_HEADER
    )
    async with Rehearsal(config) as r:
        yield r


@pytest.fixture
async def tls_rehearsal(tmp_path: Path) -> AsyncIterator[Rehearsal]:
    """The same fleet with TLS from nginx to the backends (``greeter rehearse --backend-tls``)."""
    require_tool("nginx", "apt-get install -y nginx-light")
    async with Rehearsal(_config(tmp_path, backend_tls=True)) as r:
        yield r


# -- configuration, no processes -------------------------------------------------------------
def test_config_has_the_drain_and_canary_pieces(tmp_path: Path) -> None:
    gateway = NginxGateway(
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
    gateway = NginxGateway(
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
@IN_MODULE_LOOP
async def test_reflection_lists_services_through_the_gateway(rehearsal: Rehearsal) -> None:
    await list_services(rehearsal.target())


@IN_MODULE_LOOP
async def test_calls_health_and_auth_through_the_gateway(rehearsal: Rehearsal) -> None:
    target = rehearsal.target()
    assert (await hello(target))["x-greeter-cluster"] in rehearsal.config.clusters
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
                await hello(who if address == rehearsal.address else plain)
            codes.append(caught.value.code())
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 2


@IN_MODULE_LOOP
async def test_canary_rule_takes_marked_calls_only(rehearsal: Rehearsal) -> None:
    marked = [await hello(rehearsal.target(canary=True)) for _ in range(8)]
    assert {m["x-greeter-pod"] for m in marked} == {CANARY_POD}
    unmarked = [await hello(rehearsal.target()) for _ in range(16)]
    assert CANARY_POD not in {m["x-greeter-pod"] for m in unmarked}
    # Another value of the header is not the canary's.
    other = rehearsal.target(("x-canary", "false"))
    assert (await hello(other))["x-greeter-pod"] != CANARY_POD


@IN_MODULE_LOOP
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
    # nginx passes the backends' server-timing trailer through: every call is split.
    assert report["timed"] == 400
    for part in ("server_ms", "outside_ms"):
        assert report[part]["p50"] is not None
        assert all(row[part] is not None for row in report["by_cluster"].values())


# -- TLS from the gateway to the backends -----------------------------------------------------
async def test_backend_tls_through_the_gateway(tls_rehearsal: Rehearsal) -> None:
    r = tls_rehearsal
    conf = (r.workdir / "nginx" / "nginx.conf").read_text()
    assert "grpc_pass grpcs://$greeter_upstream;" in conf
    assert "grpc_ssl_verify on;" in conf
    assert f"grpc_ssl_trusted_certificate {r.fleet_ca};" in conf
    # The backends really serve TLS only: a cleartext call straight to one fails.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await hello(Target(address=r.backends[0].address))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    # Through the gateway: both clusters answer (round robin over four backends), reflection
    # and health too; the canary, another Service with its own certificate, takes marked calls.
    seen = [await hello(r.target()) for _ in range(8)]
    assert {m["x-greeter-cluster"] for m in seen} == set(r.config.clusters)
    assert CANARY_POD not in {m["x-greeter-pod"] for m in seen}
    await list_services(r.target())
    async with open_channel(r.target()) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await hello(r.target(canary=True)))["x-greeter-pod"] == CANARY_POD

    # The canary restarted with a certificate for the right name from another CA: nginx
    # refuses it (no other canary backend, so the call fails: 502, UNAVAILABLE).
    canary = r.canary[0]
    rogue_ca = certs.make_ca(r.workdir / "rogue", "not the fleet CA")
    folder = r.fleet_ca.parent  # overwrite the canary's certificate in place
    certs.make_leaf(folder, "grpc-service-canary", [CANARY_BACKEND_HOST], ca=rogue_ca)
    canary.ca = rogue_ca.cert  # its readiness check trusts the rogue CA
    await r.restart(canary)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await hello(r.target(canary=True))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert r.nginx is not None
    assert "upstream SSL certificate verify error" in r.nginx.error_log(tail=200)
    # The canary was up (its readiness check, against the rogue CA, passed) and the fleet
    # keeps answering: only the unverifiable backend is refused.
    assert (await hello(r.target()))["x-greeter-cluster"] in r.config.clusters


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
    # The page: the load's timeline (0.5 s buckets) with each SIGTERM and return marked, on
    # the load's clock (its process started 1-3 s after the scenario's clock did).
    assert result.load is not None
    assert result.load["options"]["timeline_interval_s"] == TIMELINE_INTERVAL_S
    pods = [b.pod for b in r.backends]
    labels = [label for pod in pods for label in (f"drain {pod}", f"{pod} back")]
    page = check_page(result, 0, labels)
    assert page.verdict["data-passed"] == "true"
    at = marked(result)
    first = at[f"drain {pods[0]}"]
    for pod in pods:
        # Each backend served calls until the first SIGTERM, none from its own SIGTERM (its
        # endpoint is gone, the gateway opens a connection per call) until it was back. "Back"
        # is when a health check first saw it SERVING, about 0.1 s after it listened (the
        # check's reconnect interval), and the gateway may send it calls in between: the
        # window ends 0.25 s before the marker.
        assert all(calls(result, "by_pod", pod, 0.0, first)), pod
        down = calls(result, "by_pod", pod, at[f"drain {pod}"] + 0.1, at[f"{pod} back"] - 0.25)
        assert down, pod
        assert not any(down), (pod, down)


@pytest.mark.parametrize("backend_tls", [False, True], ids=["h2c", "backend-tls"])
async def test_cluster_outage_is_bounded(tmp_path: Path, backend_tls: bool) -> None:
    require_tool("nginx", "apt-get install -y nginx-light")
    rate, after = 200.0, 4.0
    async with Rehearsal(_config(tmp_path, backend_tls=backend_tls)) as r:
        result = await scenarios.cluster_outage(r, "cluster-b", rps=rate, after=after)
        assert all(b.alive for b in r.backends)  # revived under traffic
    s = result.summary()
    assert s["survivors"] == [], s  # both cluster-b backends were dead during the outage
    # ~6 s of traffic (2 before the kill, 4 after); the in-process probe slows down when the
    # 2 cores are busy, a stalled one falls well short.
    assert s["count"] >= 0.5 * rate * s["duration_s"], s
    assert s["by_cluster"].get("cluster-b", 0) > 0, s  # the victims had traffic before the kill
    assert s["ok_sent_after_dead"] >= 0.4 * rate * after, s  # and the traffic went on after it
    assert s["failed"] <= findings.OUTAGE_MAX_FAILED, s
    # The calls that fail are those already sent to a killed backend: none sent once the
    # victims were gone, none sent later than the window after the SIGKILL. (Judged by when each
    # call was sent; when its error was read depends on the client's pace.)
    assert s["failures_sent_after_dead"] == 0, s
    if s["failed"]:
        assert s["last_failure_sent_after_kill_s"] <= findings.OUTAGE_MAX_WINDOW_S, s
    # The surviving cluster carried the traffic after the kill.
    assert s["by_cluster"]["cluster-a"] > s["by_cluster"].get("cluster-b", 0)
    # cluster-b served calls again once restarted, within nginx's fail_timeout (+1 s).
    assert s["returned_at_s"] is not None, s
    assert s["returned_at_s"] <= s["revived_at_s"] + r.return_bound, s
    # The page: cluster-b's share of the timeline leaves at the kill and comes back.
    labels = ["kill cluster-b", "restart cluster-b", "cluster-b back"]
    check_page(result, findings.OUTAGE_MAX_FAILED, labels)
    at = marked(result)
    assert all(calls(result, "by_cluster", "cluster-b", 0.0, at["kill cluster-b"]))
    down = calls(result, "by_cluster", "cluster-b", at["kill cluster-b"], at["restart cluster-b"])
    assert len(down) >= 2 * after - 1, down
    assert not any(down), down
    assert any(calls(result, "by_cluster", "cluster-b", at["cluster-b back"], math.inf))


def test_outage_report_says_no_failed_calls_when_none_failed() -> None:
    """The human report of an outage without, then with, a failed call (no "Nones"): the
    verdict first, aligned lines, the events on the traffic's clock, the call the gateway
    answered with a 502 labelled as reaching no backend, words in the right number."""
    ok = [Outcome(0.1 * i, "OK", sent=0.1 * i - 0.01, cluster="cluster-a") for i in range(1, 40)]
    lost = Outcome(2.05, "UNAVAILABLE", sent=2.02, details="Received http2 header with status: 502")
    events = [{"at_s": 2.5, "event": "sigkill", "cluster": "cluster-b", "pods": ["b-0", "b-1"]}]
    for outcomes, failed in ((ok, 0), ([*ok, lost], 1)):
        report = TrafficReport(outcomes=sorted(outcomes, key=lambda o: o.at), duration=4.0)
        killed = findings.killed(report, 2.0, 2.01, [])
        result = scenarios.ScenarioResult("outage", report.summary(), events, None, 0.5, killed)
        summary = result.summary()
        lines = report_lines(summary)
        text = "\n".join(lines)
        assert summary["failed"] == failed
        assert "None" not in text, text
        assert "{" not in text, text
        assert "  events         2.000  sigkill" in text, text  # 2.5 on the rehearsal's clock
        assert "cluster cluster-b; pods b-0, b-1" in text, text
        assert "rehearsal clock began 0.500 s earlier" in text, text
        if failed:
            assert lines[0] == "PASSED: 1 failed of 40 calls (allowed 10)", text
            assert "  failed calls   1, answered 2.050-2.050 s; the last sent 0.020 s after" in text
            assert "no backend (gateway 502)   1    2.5%" in text, text
            assert (
                "  failed         sent   2.020 s  answered   2.050 s  UNAVAILABLE  no backend"
                in text
            )
        else:
            assert lines[0] == "PASSED: 0 failed of 39 calls (allowed 10)", text
            assert "  failed calls   none (the SIGKILL at 2.000 s)" in lines, text
        assert report_lines(summary, allowed=0)[0].startswith(
            f"{'FAILED' if failed else 'PASSED'}: "
        )


def test_outage_page_from_a_probes_records() -> None:
    """The page of an outage from made-up probe records (no processes): the probe's calls as
    a load report in 0.5 s buckets, the events moved onto the traffic's clock."""
    traffic = Traffic(Target("127.0.0.1:1"), rps=100.0)
    outcomes = []
    for i in range(600):  # 100/s for 6 s; cluster-b down from 2.0 s to 4.5 s
        sent = i / 100
        b_up = not 2.0 <= sent < 4.5
        cluster = "cluster-b" if i % 2 and b_up else "cluster-a"
        pod = f"{cluster}-{i // 2 % 2}"
        outcomes.append(Outcome(sent + 0.004, "OK", sent=sent, cluster=cluster, pod=pod))
    outcomes += [Outcome(2.012, "UNAVAILABLE", sent=1.995, details="reset") for _ in range(3)]
    traffic.report = TrafficReport(sorted(outcomes, key=lambda o: o.at), duration=6.0)
    began = 0.8  # the probe's first call, on the scenario's clock
    events = [
        {"at_s": began, "event": "traffic running", "rps": 100.0},
        {"at_s": began + 2.0, "event": "sigkill", "cluster": "cluster-b", "pods": ["b0", "b1"]},
        {"at_s": began + 2.01, "event": "killed", "cluster": "cluster-b", "survivors": []},
        {"at_s": began + 3.5, "event": "reviving", "cluster": "cluster-b"},
        {"at_s": began + 4.2, "event": "revived", "cluster": "cluster-b"},
        {"at_s": began + 6.1, "event": "traffic stopped"},
    ]
    facts = findings.OutageFacts(
        killed=findings.killed(traffic.report, 2.0, 2.01, []),
        cluster="cluster-b",
        returned=findings.returned(traffic.report, ["cluster-b"], 3.5, 4.2),
    )
    load = load_report(traffic)
    summary = traffic.report.summary()
    result = scenarios.ScenarioResult("outage", summary, events, load, began, facts)
    assert load["count"] == 603
    assert load["status_codes"] == {"OK": 600, "UNAVAILABLE": 3}
    assert len(load["timeline"]) == 12
    assert [b["count"] for b in load["timeline"]][:4] == [50, 50, 50, 50]
    assert load["timeline"][4]["status_codes"] == {"OK": 50, "UNAVAILABLE": 3}
    assert report.markers(result) == [
        (2.0, "kill cluster-b"), (3.5, "restart cluster-b"), (4.2, "cluster-b back")
    ]  # fmt: skip
    page = check_page(result, 10, ["kill cluster-b", "restart cluster-b", "cluster-b back"])
    assert page.verdict["data-passed"] == "true"
    assert page.series["timeline"] == ["cluster-a", "cluster-b", "(none)"]
    assert sorted(page.series["timeline by pod"]) == [
        "(none)", "cluster-a-0", "cluster-a-1", "cluster-b-0", "cluster-b-1"
    ]  # fmt: skip
    at = marked(result)
    assert calls(result, "by_cluster", "cluster-b", 0.0, at["kill cluster-b"]) == [25] * 4
    assert calls(result, "by_cluster", "cluster-b", 2.0, 4.5) == [0] * 5
    assert calls(result, "by_cluster", "cluster-b", 4.5, math.inf) == [25] * 3
    text = report.to_html(result, 2)  # allowing 2 failed calls: failed
    assert read_page(text).verdict["data-passed"] == "false"
    assert "<strong>FAILED</strong>: 3 failed of 603 calls (allowed 2)" in text
    # The tables' row of calls that named no backend says so ("reset": not a gateway 502).
    assert "<td>no backend named</td>" in text
    assert "<td>(none)</td>" not in text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--html", "{tmp}/page.html"], "--html needs --scenario"),
        (["--scenario", "outage", "--html", "{tmp}/no/page.html"], "page.html: no folder"),
        (["--scenario", "drain", "--html", "{tmp}"], ": is a folder"),
    ],
)
def test_html_needs_a_scenario_and_a_file_it_can_write(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Refused before anything starts: no nginx is needed (a missing one would exit 3).
    args = [flag.format(tmp=tmp_path) for flag in flags]
    code = main(["rehearse", "--nginx", str(tmp_path / "no-nginx"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_outage_from_the_command_line_writes_json_and_the_page(tmp_path: Path) -> None:
    """What a user types: the scenario through `greeter rehearse`, exit 0 when it passed, the
    report alone on stdout with --json (the banner goes to stderr, so stdout can go to jq),
    and the page written."""
    require_tool("nginx", "apt-get install -y nginx-light")
    page = tmp_path / "outage.html"
    command = [sys.executable, "-m", "greeter", "rehearse", "--scenario", "outage"]
    options = ["--port", "0", "--rps", "100", "--json", "--html", str(page)]
    run = subprocess.run(
        [*command, *options],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["scenario"] == "outage", summary
    assert summary["failed"] <= findings.OUTAGE_MAX_FAILED, summary
    assert summary["by_cluster"].get("cluster-b", 0) > 0, summary
    assert re.search(r"^gateway: https://127\.0\.0\.1:\d+ ", run.stderr, re.M), run.stderr
    assert f"greeter rehearse: wrote {page}" in run.stderr
    shown = read_page(page.read_text())
    assert shown.verdict["data-passed"] == "true"
    labels = ["kill cluster-b", "restart cluster-b", "cluster-b back"]
    for chart in ("timeline", "timeline by pod"):
        assert [m["label"] for m in shown.markers[chart]] == labels, shown.markers[chart]


def test_outage_in_the_terminal_reads_like_a_report(tmp_path: Path) -> None:
    """The scenario without --json, as a person runs it: a banner that says the scenario ends
    by itself (no commands to try, no "Ctrl-C stops everything"), then the verdict line first
    and aligned lines, no Python reprs, the events on the traffic's clock (the live lines on
    stderr name the rehearsal's), words in the right number."""
    require_tool("nginx", "apt-get install -y nginx-light")
    command = [sys.executable, "-m", "greeter", "rehearse", "--scenario", "outage"]
    options = ["--port", "0", "--rps", "100", "--pods", "1", "--no-canary", "--no-web"]
    run = subprocess.run(
        [*command, *options], capture_output=True, text=True, timeout=180, cwd=ROOT, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    banner, report_text = run.stdout.split("scenario: outage; it ends by itself", 1)
    assert "try:" not in banner
    assert "Ctrl-C stops everything" not in run.stdout
    lines = report_text.splitlines()[1:]
    assert re.fullmatch(r"PASSED: [\d,]+ failed of [\d,]+ calls \(allowed 10\)", lines[0]), lines
    assert lines[1].startswith("outage: SIGKILL every backend of cluster-b"), lines
    for label in ("traffic", "times", "status codes", "by cluster", "by pod", "events"):
        assert any(line.startswith(f"  {label.ljust(14)} ") for line in lines), (label, lines)
    text = "\n".join(lines)
    assert not re.search(r"[{}]|'\w+': |\b1 (calls|errors)\b|\(none\)", text), text
    assert re.search(r"^  events +[\d.]+  traffic running  rps 100\.0$", text, re.M), text
    assert re.search(r"^rehearsal clock +[\d.]+ s  sigkill", run.stderr, re.M), run.stderr
    if "UNAVAILABLE" in text:  # calls the gateway could not pass on: labelled as such
        assert "no backend (gateway 502)" in text, text


# -- traffic policies: weights, header routing, active/standby -------------------------------
def test_policy_config_weights_header_routing_and_standby(tmp_path: Path) -> None:
    a, b = ["unix:/a0.sock", "unix:/a1.sock"], ["unix:/b0.sock", "unix:/b1.sock"]
    weighted = NginxGateway(
        port=8443,
        fleet=a + b,
        canary=["unix:/c.sock"],
        cert=Path("c"),
        key=Path("k"),
        weights={a[0]: 4, a[1]: 4, b[0]: 1, b[1]: 0},
        route_header=ROUTE_HEADER,
        members={"cluster-a": a, "cluster-b": b},
    )
    conf = render(weighted, tmp_path)
    assert f"server {a[0]} weight=4 max_fails=1 fail_timeout=2s;" in conf
    assert f"server {b[0]} max_fails=1 fail_timeout=2s;" in conf  # weight 1 is nginx's default
    assert f"server {b[1]} max_fails=1 fail_timeout=2s down;" in conf  # share 0
    assert "map $http_x_cluster $greeter_fleet {" in conf
    assert '"cluster-b" member-cluster-b;' in conf
    assert "upstream member-cluster-b {" in conf
    assert "default $greeter_fleet;" in conf  # the canary map falls back to the header's choice
    assert "grpc_pass grpc://$greeter_fleet;" in conf
    # The per-cluster groups are plain round robin: no weights, no backup.
    member_b = conf.split("upstream member-cluster-b {")[1].split("}")[0]
    assert "weight=" not in member_b
    assert "down" not in member_b

    standby = NginxGateway(
        port=8443, fleet=a + b, canary=[], cert=Path("c"), key=Path("k"), backup=b
    )
    conf = render(standby, tmp_path)
    assert f"server {b[0]} max_fails=1 fail_timeout=2s backup;" in conf
    assert f"server {a[0]} max_fails=1 fail_timeout=2s;" in conf
    assert "$greeter_fleet" not in conf  # no header routing: the fleet group as before
    assert "grpc_pass grpc://fleet;" in conf
    # The header as gRPC sends metadata keys: lower case.
    assert RehearsalConfig(route_header="X-Cluster").route_header == ROUTE_HEADER


def test_pod_weights_keep_each_clusters_total() -> None:
    assert pod_weights({"a": 80, "b": 20}, {"a": 2, "b": 2}) == {"a": 4, "b": 1}
    assert pod_weights({"a": 37, "b": 63}, {"a": 3, "b": 2}) == {"a": 74, "b": 189}
    assert pod_weights({"a": 100, "b": 0}, {"a": 2, "b": 3}) == {"a": 1, "b": 0}
    for pods_a in range(1, 6):
        for pods_b in range(1, 6):
            for share in (0, 1, 20, 33, 50, 80, 99, 100):
                shares, pods = {"a": share, "b": 100 - share}, {"a": pods_a, "b": pods_b}
                w = pod_weights(shares, pods)
                # Cluster totals in the ratio of the shares, exactly, in whole weights.
                assert w["a"] * pods_a * shares["b"] == w["b"] * pods_b * shares["a"], (
                    shares,
                    pods,
                )
                assert min(w.values()) >= 0
                assert max(w.values()) >= 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--weights", "cluster-a=80,cluster-c=20"], "cluster-c is not a cluster"),
        (["--weights", "cluster-a=70,cluster-b=20"], "add up to 90, not 100"),
        (["--weights", "cluster-a=100"], "no share for cluster-b"),
        (["--weights", "cluster-a=0,cluster-b=0"], "add up to 0, not 100"),
        (["--weights", "cluster-a=120,cluster-b=-20"], "must be 0-100"),
        (["--weights", "cluster-a:80"], "expected CLUSTER=PERCENT"),
        (["--weights", "cluster-a=eighty,cluster-b=20"], "not a whole percent"),
        (["--route-header", "x_cluster"], "route_header 'x_cluster'"),
        (["--route-header", "x-canary"], "reserved"),
        (["--route-header", "grpc-cluster"], "reserved"),
        (["--standby", "cluster-c"], "cluster-c is not a cluster"),
        (["--standby", "cluster-a", "--standby", "cluster-b"], "at least one cluster"),
        (["--scenario", "failover", "--weights", "cluster-a=50,cluster-b=50"], "exclude"),
        (["--clusters", "Cluster_A,b"], "not a DNS label"),
    ],
)
def test_bad_policies_exit_2_naming_the_setting(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Refused before anything starts: no nginx is needed (a missing one would exit 3).
    code = main(["rehearse", "--nginx", str(tmp_path / "no-nginx"), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err


def _load(r: Rehearsal, *flags: str) -> list[str]:
    """`greeter load` through the rehearsal's gateway, JSON report on stdout."""
    md = [a for k, v in r.target().metadata for a in ("-m", f"{k}:{v}")]
    return [sys.executable, "-m", "greeter", "load", r.address, "--insecure",
            "--authority", HOST, *md, "-c", "8", "--connections", "2", "--procs", "1",
            "-O", "json", "-q", *flags]  # fmt: skip


def _by_cluster(report: dict[str, object]) -> dict[str, int]:
    table = report["by_cluster"]
    assert isinstance(table, dict)
    return {name: int(row["count"]) for name, row in table.items()}


def _log_binomial_tail(n: int, k: int, p: float) -> float:
    """ln P(X >= k) for X ~ Binomial(n, p), summed exactly in log space."""
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        + i * math.log(p) + (n - i) * math.log1p(-p)
        for i in range(k, n + 1)
    ]  # fmt: skip
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


async def test_weighted_split_and_header_routing_through_the_gateway(
    policy_rehearsal: Rehearsal,
) -> None:
    r = policy_rehearsal
    assert r.pod_weights() == {
        "cluster-a-greeter-0": 4, "cluster-a-greeter-1": 4,
        "cluster-b-greeter-0": 1, "cluster-b-greeter-1": 1,
    }  # fmt: skip
    # Unmarked calls and calls routed to cluster-b at the same time: the routed ones have
    # their own upstream group, so they neither leak elsewhere nor disturb the weighted split.
    # Both judged by greeter load's own gates (exit 0 when they hold).
    n, routed_n = 3000, 600
    loads = [
        await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        for command in (
            _load(r, "-n", str(n), "--expect-split", "cluster-a=80,cluster-b=20"),
            _load(
                r,
                "-n",
                str(routed_n),
                "-m",
                f"{ROUTE_HEADER}:cluster-b",
                "--expect-cluster",
                "cluster-b",
            ),
        )
    ]
    reports = []
    for proc in loads:
        out, _ = await asyncio.wait_for(proc.communicate(), 180)
        assert proc.returncode == 0, out
        reports.append(json.loads(out))
    split, to_b = reports
    assert split["status_codes"] == {"OK": n}, split["status_codes"]
    assert split["split"]["decision"] == "pass", split["split"]
    assert to_b["status_codes"] == {"OK": routed_n}, to_b["status_codes"]
    assert to_b["split"]["decision"] == "pass", to_b["split"]
    assert _by_cluster(to_b) == {"cluster-b": routed_n}
    # Over a cycle nginx's smooth weighted round robin (one balancer state) is exact per
    # backend, so the split is 80/20 to within a cycle (10 calls), far inside the gate.
    observed = _by_cluster(split)
    assert observed["cluster-a"] == pytest.approx(0.8 * n, abs=10), observed
    pods = {name: int(row["count"]) for name, row in split["by_pod"].items()}
    assert pods["cluster-a-greeter-0"] == pytest.approx(pods["cluster-a-greeter-1"], abs=10)

    # Power: the gate accepts cluster-a's count k only when 80% lies within its Clopper-Pearson
    # interval (at the report's interval confidence). The smallest such k for these n calls,
    # and the chance that a gateway splitting 50/50 reaches it: below 1e-9 (exactly computed).
    level = float(split["split"]["interval_confidence"])
    k = int(0.8 * n)
    while k > 0 and clopper_pearson(k - 1, n, level)[1] >= 0.8:
        k -= 1
    assert k > n // 2
    assert _log_binomial_tail(n, k, 0.5) < math.log(1e-9), k

    # The same gateway, judged against the wrong split: greeter load exits 1, split "off".
    wrong = await asyncio.create_subprocess_exec(
        *_load(r, "-n", "1000", "--expect-split", "cluster-a=50,cluster-b=50"),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(wrong.communicate(), 180)
    assert wrong.returncode == 1, out
    assert json.loads(out)["split"]["decision"] == "off"

    # Sequential calls: every marked call in its cluster, either way round, in any case.
    for cluster, value in (("cluster-a", "cluster-a"), ("cluster-b", "CLUSTER-B")):
        target = r.target((ROUTE_HEADER, value))
        served = {(await hello(target))["x-greeter-cluster"] for _ in range(12)}
        assert served == {cluster}, (value, served)
    # A value naming no cluster falls through to the weighted fleet (as an ALB forwarding rule
    # whose header condition does not match): any 10 calls in a row reach both clusters.
    unknown = r.target((ROUTE_HEADER, "cluster-z"))
    served = {(await hello(unknown))["x-greeter-cluster"] for _ in range(20)}
    assert served == {"cluster-a", "cluster-b"}
    # The canary rule comes first on helloworld.Greeter, header or not.
    both = r.target((ROUTE_HEADER, "cluster-b"), canary=True)
    assert (await hello(both))["x-greeter-pod"] == CANARY_POD


async def test_failover_to_the_standby_and_back(tmp_path: Path) -> None:
    require_tool("nginx", "apt-get install -y nginx-light")
    rate, after = 200.0, 4.0
    async with Rehearsal(_config(tmp_path, standby=("cluster-b",))) as r:
        conf = (r.workdir / "nginx" / "nginx.conf").read_text()
        for backend in r.cluster("cluster-b"):
            assert f"server {backend.upstream} max_fails=1 fail_timeout=2s backup;" in conf
        result = await scenarios.cluster_failover(r, rps=rate, after=after)
        assert all(b.alive for b in r.backends)  # the active cluster is back
    s = result.summary()
    before, down, returned = (s["phases"][k] for k in ("before_kill", "active_down", "returned"))
    assert s["active"] == ["cluster-a"], s
    assert s["standby"] == ["cluster-b"], s
    assert s["survivors"] == [], s  # both cluster-a backends were dead
    # Active/standby: the standby took nothing while the active cluster was up...
    assert set(before["by_cluster"]) == {"cluster-a"}, before
    assert s["standby_share_before_kill"] == 0.0, s
    # ...every call sent once the active backends were gone, until they were restarted...
    assert s["standby_share_after_kill"] == 1.0, s
    assert down["failed"] == 0, down
    assert down["count"] >= 0.4 * rate * after, down  # the traffic went on
    # ...and the calls that failed were the ones already sent to the killed backends, as in
    # the outage: none sent after they were gone, none later than the window after the kill.
    assert s["failed"] <= findings.FAILOVER_MAX_FAILED, s
    assert s["failures_sent_after_dead"] == 0, s
    if s["failed"]:
        assert s["last_failure_sent_after_kill_s"] <= findings.OUTAGE_MAX_WINDOW_S, s
    # Back: nginx stops using backup servers once an active one is available again, at the
    # latest fail_timeout (+1 s, nginx's clock is in seconds) after they were SERVING.
    assert s["returned_at_s"] is not None, s
    assert s["returned_at_s"] <= s["revived_at_s"] + s["return_bound_s"], s
    assert returned["count"] >= 0.4 * rate * 3.0, returned  # 3 s of traffic after the bound
    assert returned["failed"] == 0, returned
    assert s["active_share_after_return"] == 1.0, s
    assert set(returned["by_cluster"]) == {"cluster-a"}, returned
    # The page: cluster-a's calls until the kill, cluster-b's until cluster-a is back.
    labels = ["kill cluster-a", "restart cluster-a", "cluster-a back"]
    check_page(result, findings.FAILOVER_MAX_FAILED, labels)
    at = marked(result)
    kill, restart, back = (at[label] for label in labels)
    assert all(calls(result, "by_cluster", "cluster-a", 0.0, kill))
    assert not any(calls(result, "by_cluster", "cluster-b", 0.0, kill))
    down = calls(result, "by_cluster", "cluster-a", kill, restart)
    assert len(down) >= 2 * after - 1, down
    assert not any(down), down
    assert all(calls(result, "by_cluster", "cluster-b", kill, restart))
    assert all(calls(result, "by_cluster", "cluster-a", back + s["return_bound_s"], math.inf))


def test_failover_report_names_the_phases_and_shares() -> None:
    """The human report of a failover, from a probe's records (no "None" when all is well)."""
    calls = [
        Outcome(
            0.1 * i + 0.01,
            "OK",
            sent=0.1 * i,
            cluster="cluster-b" if 21 <= i <= 60 else "cluster-a",
        )
        for i in range(1, 80)
    ]
    report = TrafficReport(outcomes=calls, duration=8.0)
    killed = findings.killed(report, 2.0, 2.05, [])
    times = (2.0, 2.05, 6.0, 6.05)
    facts = findings.failover(report, killed, ["cluster-a"], ("cluster-b",), times, 1.0)
    result = scenarios.ScenarioResult("failover", report.summary(), [], facts=facts)
    summary = result.summary()
    text = "\n".join(report_lines(summary))
    assert "None" not in text, text
    assert "standby share  cluster-b: 0.0% before the kill, 100.0% while cluster-a was down" in text
    assert "first call again at 6.100 s, share 100.0% from 7.050 s" in text, text
    assert (
        "before the kill (calls ended 0.000-2.000 s): 19 calls, 0 failed; served: cluster-a 19"
        in text
    ), text
    assert summary["phases"]["active_down"]["by_cluster"] == {"cluster-b": 40}
