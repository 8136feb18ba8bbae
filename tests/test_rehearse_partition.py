"""A cluster cut off by the network (``greeter rehearse --scenario partition``): pods on
addresses of their own, packet-filter rules tagged with their run's PID and gone after every
run (a SIGKILLed one's by the next run), the gateways' settings that keep a partition from
costing a call, and the scenario through both gateways. Needs root and iptables (CI runs as
root); the parts that do not are run everywhere. docs/rehearsal.md, "Partition"."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rehearse_support import descendants, rehearse

from greeter.rehearse import access_log, netfilter
from greeter.rehearse.envoy_config import PER_TRY_TIMEOUT_S, EnvoyGateway, config
from greeter.rehearse.findings import NGINX_PARTITION_MAX_FAILED, OUTAGE_MAX_WINDOW_S
from greeter.rehearse.gateway import IDEMPOTENT_METHODS, QUICK_TIMEOUT_S, Endpoint
from greeter.rehearse.nginx import NginxGateway, render

NO_FILTER = netfilter.problem()
needs_filter = pytest.mark.skipif(bool(NO_FILTER), reason=NO_FILTER)
PARTITION_FOR = "6"  # seconds; the users' default is 20


def _pod_addresses(banner: str) -> list[tuple[str, int]]:
    """The pods' addresses as the banner lists them (``cluster pod 127.B.C.P:50051``)."""
    found = []
    for line in banner.splitlines():
        words = line.split()
        if len(words) == 3 and words[2].endswith(f":{netfilter.GRPC_PORT}"):
            host, _, port = words[2].rpartition(":")
            found.append((host, int(port)))
    return found


def _nothing_left(pid: int, banner: str) -> None:
    """No rule of run ``pid`` is left, and nothing listens on its pods' addresses."""
    assert netfilter.tagged_rules(pid) == []
    addresses = _pod_addresses(banner)
    assert addresses, banner
    for address in addresses:
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.settimeout(2.0)
            s.connect(address)


# -- settings, without a fleet --------------------------------------------------------


def _envoy(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    fleet = [
        Endpoint(netfilter.pod_host(70, i, j) + ":50051", c, f"{c}-greeter-{j}")
        for i, c in enumerate(("cluster-a", "cluster-b"))
        for j in range(2)
    ]
    g = EnvoyGateway(
        port=1, admin_port=2, fleet=fleet, canary=fleet[:1], cert=tmp_path, key=tmp_path,
        access_log=tmp_path / "log", **extra,
    )  # fmt: skip
    return config(g)


def _routes(conf: dict[str, Any]) -> list[dict[str, Any]]:
    manager = conf["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return list(manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"])


def test_envoy_per_try_timeout_only_on_quick_idempotent_calls(tmp_path: Path) -> None:
    routes = _routes(_envoy(tmp_path, route_header="x-cluster"))
    quick = [r for r in routes if r["match"].get("path") in IDEMPOTENT_METHODS]
    others = [r for r in routes if r not in quick]
    # canary, one per cluster (header routing), the fleet
    assert len(quick) == 4
    for route in quick:
        policy = route["route"]["retry_policy"]
        assert policy["per_try_timeout"] == f"{PER_TRY_TIMEOUT_S:.3f}s"
        assert set(policy["retry_on"].split(",")) >= {"reset", "connect-failure", "refused-stream"}
        predicate = policy["retry_host_predicate"][0]["name"]
        assert predicate == "envoy.retry_host_predicates.previous_hosts"
    # Streams, slow calls, everything else: no per-try timeout, no retry once sent.
    for route in others:
        policy = route.get("route", {}).get("retry_policy", {})
        assert "per_try_timeout" not in policy
        assert "reset" not in policy.get("retry_on", "").split(",")
    # each quick route comes before the prefix route it narrows
    first_quick = routes.index(quick[0])
    assert all(routes.index(r) > first_quick for r in others if r["match"].get("prefix") == "/")


def test_envoy_finds_dead_connections_in_seconds(tmp_path: Path) -> None:
    fleet = _envoy(tmp_path)["static_resources"]["clusters"][0]
    options = fleet["typed_extension_protocol_options"]
    h2 = next(iter(options.values()))["explicit_http_config"]["http2_protocol_options"]
    keepalive = h2["connection_keepalive"]
    assert float(keepalive["interval"].rstrip("s")) + float(keepalive["timeout"].rstrip("s")) <= 5
    assert fleet["close_connections_on_host_health_failure"] is True
    assert fleet["connect_timeout"] == "0.500s"
    assert fleet["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "127.70.1.1", "port_value": 50051}
    }


def test_envoy_without_per_try_timeout_retries_only_what_never_reached_a_pod(
    tmp_path: Path,
) -> None:
    routes = _routes(_envoy(tmp_path, per_try_timeout=0.0))
    assert not [r for r in routes if r["match"].get("path")]
    policies = [r["route"]["retry_policy"] for r in routes if "retry_policy" in r.get("route", {})]
    assert policies
    assert {p["retry_on"] for p in policies} == {
        "connect-failure,refused-stream,reset-before-request,resource-exhausted"
    }


def test_standby_retries_move_to_the_other_priority(tmp_path: Path) -> None:
    routes = _routes(_envoy(tmp_path, standby=["cluster-b"]))
    fleet = [r for r in routes if r.get("route", {}).get("cluster") == "fleet"]
    assert fleet
    for route in fleet:
        name = route["route"]["retry_policy"]["retry_priority"]["name"]
        assert name == "envoy.retry_priorities.previous_priorities"


def test_nginx_quick_timeouts_scoped_to_sayhello(tmp_path: Path) -> None:
    g = NginxGateway(
        port=1, fleet=["127.70.1.1:50051"], canary=["127.70.250.1:50051"], cert=tmp_path,
        key=tmp_path,
    )  # fmt: skip
    conf = render(g, tmp_path)
    quick = f"{round(QUICK_TIMEOUT_S * 1000)}ms"
    block = conf.split("location = /helloworld.Greeter/SayHello {", 1)[1].split("}", 1)[0]
    for directive in ("grpc_connect_timeout", "grpc_read_timeout", "grpc_send_timeout"):
        assert f"{directive} {quick};" in block
    assert "grpc_pass grpc://$greeter_upstream;" in block
    # every other path keeps the stream-friendly read timeout
    rest = conf.replace(block, "")
    assert "grpc_read_timeout 3600s;" in rest
    assert f"grpc_read_timeout {quick}" not in rest
    assert "grpc_next_upstream error timeout invalid_header non_idempotent;" in conf


def test_access_log_lines_of_both_gateways() -> None:
    envoy = access_log.parse(
        '[t] "POST /helloworld.Greeter/SayHello HTTP/2" 200 - upstream=127.9.1.1:50051 '
        "cluster=fleet grpc_status=OK flags=- attempts=3 rt=1037ms"
    )
    nginx = access_log.parse(
        't 127.0.0.1 "POST /helloworld.Greeter/SayHello HTTP/2.0" 200 - '
        "upstream=127.9.2.1:50051, 127.9.1.2:50051 upstream_status=504, 200 grpc_status=0 rt=0.5"
    )
    plain = access_log.parse(
        't 127.0.0.1 "POST /helloworld.Greeter/SayHello HTTP/2.0" 200 - '
        "upstream=127.9.1.2:50051 upstream_status=200 grpc_status=0 rt=0.001"
    )
    assert envoy is not None
    assert nginx is not None
    assert plain is not None
    assert (envoy.upstreams, envoy.ok, envoy.retried) == (("127.9.1.1:50051",), True, True)
    assert nginx.upstreams == ("127.9.2.1:50051", "127.9.1.2:50051")
    assert nginx.ok
    assert nginx.retried
    assert plain.ok
    assert not plain.retried
    pods = {"127.9.1.2:50051": "a-1"}
    assert access_log.served_by_pod([nginx, plain], pods) == {"a-1": 2}


def test_address_blocks_do_not_collide() -> None:
    pods = [(0, 0), (0, 1), (1, 0), (1, 1)]
    first = netfilter.claim_block(pods)
    try:
        # The same block again: taken while the first run holds it.
        with pytest.raises(RuntimeError, match="no free loopback address block"):
            netfilter.claim_block(pods, iter([first.block]))
        second = netfilter.claim_block(pods)
        assert second.block != first.block
        second.release()
    finally:
        first.release()
    again = netfilter.claim_block(pods, iter([first.block]))  # freed with its socket
    again.release()
    # A pod a killed run left behind still holds an address: its block is not taken.
    holder = socket.socket()
    holder.bind((netfilter.pod_host(first.block, 1, 1), netfilter.GRPC_PORT))
    try:
        with pytest.raises(RuntimeError):
            netfilter.claim_block(pods, iter([first.block]))
    finally:
        holder.close()


def test_partition_without_a_packet_filter_exits_2_with_the_reason() -> None:
    env = {**os.environ, "PATH": "/nonexistent"}  # no iptables on PATH (nor when not root)
    for flags in (["--scenario", "partition"], ["--scenario", "failover", "--partition"]):
        run = subprocess.run(
            [sys.executable, "-m", "greeter", "rehearse", *flags],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert "partition unavailable: " in lines[0]
    bad = subprocess.run(
        [sys.executable, "-m", "greeter", "rehearse", "--partition"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--partition goes with --scenario failover" in bad.stderr


# -- rules on the machine ----------------------------------------------------------


@needs_filter
def test_rules_carry_the_pid_and_are_gone_after_clear() -> None:
    fw = netfilter.Firewall()
    try:
        fw.cut(["127.71.2.1", "127.71.2.2"])
        fw.refuse_new("127.71.1.1", netfilter.GRPC_PORT)
        mine = netfilter.tagged_rules(os.getpid())
        assert len(mine) == 5
        assert all(f"pid={os.getpid()}" in rule for rule in mine)
        assert sum("-j DROP" in rule for rule in mine) == 4
    finally:
        fw.clear()
    assert netfilter.tagged_rules(os.getpid()) == []


@needs_filter
def test_sweep_deletes_only_the_rules_of_dead_runs() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead, alive = netfilter.Firewall(pid=gone.pid), netfilter.Firewall()
    try:
        dead.cut(["127.72.2.1"])
        alive.cut(["127.72.2.2"])
        assert netfilter.sweep() >= 2
        assert netfilter.tagged_rules(gone.pid) == []
        assert len(netfilter.tagged_rules(os.getpid())) == 2
    finally:
        dead.clear()
        alive.clear()


# -- the scenario through both gateways -------------------------------------------------


def _json_run(*flags: str) -> tuple[subprocess.Popen[str], dict[str, Any], str]:
    proc = rehearse("--scenario", "partition", "--partition-for", PARTITION_FOR, "--json", *flags)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode in (0, 1), err
    return proc, json.loads(out), err


def _events(summary: dict[str, Any]) -> list[str]:
    return [e["event"] for e in summary["events"]]


@needs_filter
def test_envoy_partition_loses_nothing_and_nothing_hangs(tmp_path: Path) -> None:
    page = tmp_path / "partition.html"
    proc, summary, banner = _json_run("--gateway", "envoy", "--html", str(page))
    assert proc.returncode == 0, banner
    assert summary["scenario"] == "partition"
    assert summary["rps"] >= 240
    assert summary["count"] > 2000
    assert summary["failed"] == 0, summary["failure_samples"]
    assert summary["latency_ms"]["max"] < 2000
    assert summary["slowest_bound_ms"] == 2000
    assert _events(summary)[1:3] == ["partition", "heal"]
    assert summary["cluster"] == "cluster-b"
    assert summary["partition_for_s"] == 6
    # cluster-b stopped getting calls during the cut and got them again after the heal
    assert summary["stopped_after_s"] is not None
    assert summary["last_held_sent_s"] < summary["healed_at_s"]
    assert summary["returned_at_s"] > summary["healed_at_s"]
    counts = summary["gateway_counts"]
    assert counts["calls"] == summary["count"], counts
    assert counts["agrees"], counts
    assert counts["retried"] > 0  # the per-try timeout did the saving
    text = page.read_text()
    assert "cut cluster-b" in text
    assert "heal cluster-b" in text
    assert "slow calls" in text
    _nothing_left(proc.pid, banner)


@needs_filter
def test_a_killed_run_leaves_rules_the_next_run_removes() -> None:
    killed = rehearse(
        "--scenario", "partition", "--partition-for", "60", start_new_session=True
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        # the cut is four iptables commands, one after another: wait for all (bounded)
        while len(netfilter.tagged_rules(killed.pid)) < 4 and time.monotonic() < deadline:
            assert killed.poll() is None, killed.communicate()[1]
            time.sleep(0.1)
        assert len(netfilter.tagged_rules(killed.pid)) == 4  # the cut, both ways, 2 pods
        left = descendants(killed.pid)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
    for pid in left:  # what SIGKILL leaves running: the pods and nginx
        with_pid = Path(f"/proc/{pid}")
        if with_pid.exists():
            os.kill(pid, signal.SIGKILL)
    killed.communicate()
    assert netfilter.tagged_rules(killed.pid), "SIGKILL leaves the rules behind"
    # The next run (the nginx partition) sweeps them before it starts.
    proc, summary, banner = _json_run("--gateway", "nginx")
    assert netfilter.tagged_rules(killed.pid) == []
    # ...and runs its own partition within nginx's bounds: no call slower than the bound, and
    # the only calls it may lose are those handed to a cut pod in the instant of the cut.
    assert proc.returncode == 0, banner
    assert summary["failed"] <= NGINX_PARTITION_MAX_FAILED
    for failed in summary["failure_samples"]:
        assert failed["sent_s"] - summary["cut_at_s"] < OUTAGE_MAX_WINDOW_S, failed
    assert summary["latency_ms"]["max"] < summary["slowest_bound_ms"]
    assert _events(summary)[1:3] == ["partition", "heal"]
    assert summary["gateway_counts"]["agrees"], summary["gateway_counts"]
    _nothing_left(proc.pid, banner)


@needs_filter
def test_envoy_failover_by_partition_moves_every_call_to_the_standby() -> None:
    proc = rehearse("--gateway", "envoy", "--scenario", "failover", "--partition", "--json")
    out, banner = proc.communicate(timeout=180)
    assert proc.returncode == 0, banner
    summary = json.loads(out)
    assert summary["fault"] == "cut"
    assert summary["failed"] == 0, summary["failure_samples"]
    assert summary["standby_share_after_kill"] == 1.0
    assert summary["active_share_after_return"] == 1.0
    assert _events(summary)[1:3] == ["partition", "heal"]
    _nothing_left(proc.pid, banner)


@pytest.mark.parametrize("gateway", ["envoy", "nginx"])
def test_quick_timeouts_cut_no_slow_stream(gateway: str) -> None:
    """Pods that hold every call 3 s (their fault injection): a server stream whose first
    message comes after 3 s passes through the gateway whole; SayHello, declared quick and
    idempotent, is given up on (it is the only method that is)."""
    script = f"""
import asyncio, time
import grpc
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.client import open_channel
from greeter.rehearse.fleet import Rehearsal, RehearsalConfig

async def main():
    config = RehearsalConfig(
        port=0, gateway={gateway!r}, canary=False, pods_per_cluster=1, web=False,
        server_args=("--fault-enabled=true", "--fault-delay=3", "--fault-delay-percent=100"),
    )
    async with Rehearsal(config) as r, open_channel(r.target()) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        began = time.perf_counter()
        request = helloworld_pb2.HelloRequest(name="slow")
        replies = [m async for m in stub.SayHelloStreamReply(request, timeout=20)]
        print("stream", len(replies), round(time.perf_counter() - began, 2))
        began = time.perf_counter()
        try:
            await stub.SayHello(request, timeout=20)
            print("unary OK", round(time.perf_counter() - began, 2))
        except grpc.aio.AioRpcError as exc:
            print("unary", exc.code().name, round(time.perf_counter() - began, 2))

asyncio.run(main())
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    count, took = lines["stream"].split()
    assert int(count) == 10
    assert float(took) >= 3.0
    code, took = lines["unary"].split()
    assert code == "UNAVAILABLE"  # given up on: held longer than any try may take
    assert float(took) < 19.0
