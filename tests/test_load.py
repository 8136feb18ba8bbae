"""``greeter load`` against real servers on 127.0.0.1: counts, rates, delays, errors,
the spread over backends, several processes, exit codes and the report formats."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from load_support import assert_cannot_connect, load_cli

from conftest import free_port
from greeter.certs import make_ca, make_leaf
from greeter.client import Target
from greeter.load import ConnectError, LoadConfig, run_load, schema
from greeter.load.report import EXIT_BAD_ARGS, EXIT_CONNECT, EXIT_FAILED, EXIT_INTERRUPTED

Spawn = Any


def served(metrics_port: int, method: str = "SayHello") -> int:
    """Calls the server itself counts as handled (its Prometheus endpoint)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    for attempt in range(50):  # the metrics port opens just after the gRPC port
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
            break
        except OSError:
            if attempt == 49:
                raise
            time.sleep(0.1)
    total = 0.0
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{") and f'grpc_method="{method}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def wait_served(metrics_port: int, at_least: int, timeout: float) -> None:
    """Until the server has handled ``at_least`` calls, or ``timeout`` seconds (bounded)."""
    deadline = time.monotonic() + timeout
    while served(metrics_port) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)


def config(address: str, **overrides: Any) -> LoadConfig:
    values: dict[str, Any] = {"target": Target(address), "concurrency": 8, "connect_timeout": 5}
    values.update(overrides)
    return LoadConfig(**values)


def identity_env(cluster: str, pod: str, **extra: str) -> dict[str, str]:
    return {"GREETER_CLUSTER_NAME": cluster, "GREETER_POD_NAME": pod, **extra}


@pytest.fixture
def spawn_server(spawn_server: Spawn) -> Spawn:
    """The shared fixture, with the access log off: nobody reads the server's stderr pipe,
    and a log line per call would fill it and stall the server."""

    def spawn(*args: str, env: dict[str, str] | None = None) -> Any:
        return spawn_server(*args, env={"GREETER_ACCESS_LOG": "false", **(env or {})})

    return spawn


def test_counts_equal_the_calls_the_server_handled(spawn_server: Spawn) -> None:
    srv = spawn_server(env=identity_env("east", "east-1"))
    before = served(srv.metrics_port)
    one = run_load(config(srv.address, total=500, procs=1))
    assert served(srv.metrics_port) - before == 500
    assert one["count"] == one["ok"] == 500
    assert one["status_codes"] == {"OK": 500}
    assert one["by_cluster"]["east"]["count"] == 500
    assert one["by_pod"]["east-1"] == {**one["by_pod"]["east-1"], "count": 500, "share": 1.0}
    assert one["by_pod"]["east-1"]["cluster"] == "east"
    assert sum(bar["count"] for bar in one["histogram"]) == 500
    assert one["hdr"]["count"] == 500
    lat = one["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]

    # --procs 2: two worker processes, merged to exactly the totals of one process.
    two = run_load(config(srv.address, total=500, procs=2, connections=2))
    assert served(srv.metrics_port) - before == 1000
    assert two["options"]["procs"] == 2
    for key in ("count", "ok", "errors", "status_codes"):
        assert two[key] == one[key], key
    assert {k: v["count"] for k, v in two["by_pod"].items()} == {"east-1": 500}
    assert two["hdr"]["count"] == sum(n for _, n in two["hdr"]["buckets"]) == 500


def test_rps_holds_the_asked_rate(spawn_server: Spawn) -> None:
    srv = spawn_server()
    report = run_load(config(srv.address, rps=150, duration=3.0, procs=1, concurrency=32))
    # 450 calls are due in 3 s; none more (the limiter limits), and most of them even on a
    # loaded machine, where a stall near the end drops the calls still due.
    assert 340 <= report["count"] <= 450
    assert 110 <= report["rps"] <= 151
    assert report["errors"] == 0


def test_injected_delay_shows_in_the_percentiles(spawn_server: Spawn) -> None:
    srv = spawn_server(env={"GREETER_FAULT_ENABLED": "true"})
    delayed = Target(srv.address, metadata=(("x-greeter-fault-delay-ms", "100"),))
    closed = run_load(config(srv.address, target=delayed, total=40, procs=1))
    assert closed["latency_ms"]["min"] >= 100
    assert closed["latency_ms"]["p50"] < 400

    # Open loop, one worker, 20/s asked of a server needing 100 ms a call: the calls queue
    # behind each other and, measured from when they were due, their latency grows.
    late = run_load(config(srv.address, target=delayed, concurrency=1, rps=20, duration=2.0))
    assert 10 <= late["count"] <= 21
    assert late["latency_ms"]["max"] > 700, late["latency_ms"]


def test_injected_errors_show_and_trip_max_error_rate(spawn_server: Spawn) -> None:
    srv = spawn_server(
        env=identity_env(
            "west", "west-1", GREETER_FAULT_ENABLED="true", GREETER_FAULT_STATUS_PERCENT="50"
        )
    )
    args = [srv.address, "-n", "400", "-c", "8", "--procs", "1", "-O", "json"]
    result = load_cli(*args, "--max-error-rate", "5%")
    assert result.returncode == EXIT_FAILED, result.stderr
    assert "exceeds --max-error-rate" in result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    codes = report["status_codes"]
    assert set(codes) == {"OK", "UNAVAILABLE"}
    assert sum(codes.values()) == 400
    assert 100 < codes["UNAVAILABLE"] < 300
    assert report["error_messages"] == {
        "UNAVAILABLE: injected fault: UNAVAILABLE": report["errors"]
    }
    assert report["by_pod"]["west-1"]["errors"] == codes["UNAVAILABLE"]
    assert report["thresholds"][0] == {**report["thresholds"][0], "passed": False}
    jsonschema.validate(report, schema())

    assert load_cli(*args, "--max-error-rate", "0.9").returncode == 0
    # A latency bound nobody can meet fails the run too.
    missed = load_cli(*args, "--max-error-rate", "0.9", "--max-latency", "p50=1us")
    assert missed.returncode == EXIT_FAILED
    assert "latency p50" in missed.stderr


def test_the_report_says_when_the_server_refused_calls_past_its_capacity(
    spawn_server: Spawn,
) -> None:
    # At most 2 calls in flight, each held 0.2 s: the others are shed (RESOURCE_EXHAUSTED
    # overloaded: ...), and the report says what that means. (grpc-core's bare CANCELLED, the
    # other refusal it names, is made for real in test_admission.py.)
    srv = spawn_server(
        env={
            "GREETER_ADMISSION_LIMIT": "2",
            "GREETER_FAULT_ENABLED": "true",
            "GREETER_FAULT_DELAY": "0.2",
            "GREETER_FAULT_DELAY_PERCENT": "100",
        }
    )
    result = load_cli(srv.address, "-n", "40", "-c", "8", "--procs", "1")
    assert "Traceback" not in result.stderr
    codes = dict(re.findall(r"\[(\w+)\]\t(\d+) responses", result.stdout))
    assert int(codes["RESOURCE_EXHAUSTED"]) >= 20  # 6 of every 8 at least, as calls end
    line = next(x for x in result.stdout.splitlines() if "the server refused calls" in x)
    assert f"{int(codes['RESOURCE_EXHAUSTED']):,} RESOURCE_EXHAUSTED overloaded" in line
    assert "CANCELLED" not in line
    assert 'docs/performance.md, "Overload"' in line


def test_a_server_that_only_fails(spawn_server: Spawn) -> None:
    srv = spawn_server(env={"GREETER_FAULT_ENABLED": "true", "GREETER_FAULT_STATUS_PERCENT": "100"})
    result = load_cli(srv.address, "-n", "50", "--procs", "1")
    assert result.returncode == EXIT_FAILED
    assert "no call succeeded" in result.stderr
    assert "[UNAVAILABLE]\t50 responses" in result.stdout
    assert "Traceback" not in result.stderr


def test_two_backends_behind_one_target(spawn_server: Spawn) -> None:
    a = spawn_server(env=identity_env("cluster-a", "pod-a"))
    b = spawn_server(env=identity_env("cluster-b", "pod-b"))
    target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
    result = load_cli(
        target, "--lb-policy", "round_robin", "-n", "400", "-c", "4", "--procs", "2", "-O", "json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, schema())
    assert set(report["by_cluster"]) == {"cluster-a", "cluster-b"}
    assert set(report["by_pod"]) == {"pod-a", "pod-b"}
    counts = [row["count"] for row in report["by_pod"].values()]
    assert sum(counts) == 400
    # round robin spreads calls, not just connections (pick-first would give one pod 0)
    assert min(counts) >= 100
    assert served(a.metrics_port) + served(b.metrics_port) == 400


def test_streams_and_health(spawn_server: Spawn) -> None:
    srv = spawn_server(env=identity_env("c", "p"))
    stream = run_load(config(srv.address, call="SayHelloStreamReply", stream_count=5, total=40))
    assert stream["ok"] == 40
    assert stream["replies"] == 200
    assert stream["by_pod"]["p"]["count"] == 40
    bidi = run_load(config(srv.address, call="SayHelloBidiStream", stream_count=3, total=30))
    assert bidi["ok"] == 30
    assert bidi["replies"] == 90
    health = run_load(config(srv.address, call="Check", total=20, request={"service": ""}))
    assert health["status_codes"] == {"OK": 20}
    unknown = run_load(config(srv.address, call="Check", total=5, request={"service": "nope"}))
    assert unknown["status_codes"] == {"NOT_FOUND": 5}


def test_report_formats(spawn_server: Spawn, tmp_path: Path) -> None:
    srv = spawn_server(env=identity_env("c1", "p1"))
    page = tmp_path / "report.html"
    common = [srv.address, "-n", "100", "-c", "4", "--procs", "1"]
    text = load_cli(*common, "--html", str(page), "--percentiles", "50,75,99")
    assert text.returncode == 0, text.stderr
    for line in ("Count:\t\t100", "p75 in", "Response time histogram:", "By cluster:", "By pod:"):
        assert line in text.stdout
    assert re.search(r"p1\s+100\s+100\.0%\s+[\d.]+ ms\s+[\d.]+ ms\s+0", text.stdout)
    html = page.read_text()
    assert "<svg" in html
    assert "p1" in html
    assert "<script" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    out = load_cli(*common, "-O", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert rows[0]["kind"] == "total"
    assert rows[0]["count"] == "100"
    assert {(r["kind"], r["name"], r["count"]) for r in rows[1:]} >= {
        ("cluster", "c1", "100"),
        ("pod", "p1", "100"),
        ("status", "OK", "100"),
    }
    assert "p99.9_ms" in rows[0]


@pytest.mark.parametrize(
    "args",
    [
        ["-c", "0"],
        ["--rps", "-5"],
        ["--no-such-flag"],
        ["-m", "not metadata"],
        ["-z", "ten seconds"],
        ["--call", "Nope"],
        ["--max-latency", "p99"],
        ["--connections", "9", "-c", "2"],
        ["-d", '{"nope": 1}', "-n", "1"],
    ],
)
def test_bad_arguments_exit_2(args: list[str], spawn_server: Spawn) -> None:
    port = free_port()  # nothing listens: bad arguments must be caught before connecting
    result = load_cli(f"127.0.0.1:{port}", "--connect-timeout", "1", *args)
    assert result.returncode == EXIT_BAD_ARGS, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()


def test_unreachable_target_exits_3() -> None:
    port = free_port()
    result = load_cli(f"127.0.0.1:{port}", "--connect-timeout", "1", "-n", "5")
    assert result.returncode == EXIT_CONNECT
    assert f"cannot connect to 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ConnectError):
        run_load(config(f"127.0.0.1:{port}", total=1, connect_timeout=0.5))


def test_tls_mismatch_and_authority(spawn_server: Spawn, tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    leaf = make_leaf(tmp_path, "server", ["grpc.example.com"], ca)
    tls = spawn_server(env={"GREETER_TLS_CERT": str(leaf.cert), "GREETER_TLS_KEY": str(leaf.key)})
    plain = spawn_server()
    common = ["-n", "20", "-c", "2", "--procs", "1"]
    good = [*common, "--connect-timeout", "10"]  # these must connect, however busy the machine
    base = [*common, "--connect-timeout", "2"]  # these must fail, and fail fast
    ok = load_cli(tls.address, "--cacert", str(ca.cert), "--authority", "grpc.example.com", *good)
    assert ok.returncode == 0, ok.stderr
    insecure = load_cli(tls.address, "--insecure", *good)
    assert insecure.returncode == 0, insecure.stderr
    for args in (
        [tls.address, "--cacert", str(ca.cert), "--authority", "wrong.example.com"],
        [tls.address],  # plaintext to a TLS port
        [plain.address, "--tls"],  # TLS to a plaintext port
    ):
        assert_cannot_connect(*args, *base)


@pytest.mark.parametrize("procs", ["1", "2"])
def test_ctrl_c_prints_the_partial_report(spawn_server: Spawn, procs: str) -> None:
    srv = spawn_server(env=identity_env("c", "p"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "greeter",
            "load",
            srv.address,
            "-z",
            "60s",
            "-c",
            "4",
            "--rps",
            "100",
            "--procs",
            procs,
            "-O",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_served(srv.metrics_port, 50, timeout=20)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    assert "interrupted" in err
    report = json.loads(out)
    jsonschema.validate(report, schema())
    assert report["interrupted"] is True
    assert 50 <= report["count"] == report["by_pod"]["p"]["count"]
    assert report["count"] == served(srv.metrics_port)
    assert report["duration_s"] < 30


def test_cli_uses_the_default_procs_and_prints_nothing_live_when_piped(spawn_server: Spawn) -> None:
    srv = spawn_server()
    result = load_cli(srv.address, "-n", "40", "-c", "4", "-O", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["options"]["procs"] == min(4, len(os.sched_getaffinity(0)))
    assert report["count"] == 40
    assert result.stderr == ""


def client_connections(port: int) -> int:
    """Established TCP connections to ``port`` on this machine (from /proc/net)."""
    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    found += 1
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")
def test_connections_spread_workers_over_that_many_connections(spawn_server: Spawn) -> None:
    srv = spawn_server()
    proc = subprocess.Popen(
        [sys.executable, "-m", "greeter", "load", srv.address, "-z", "20s", "--rps", "50",
         "-c", "6", "--connections", "3", "--procs", "1", "-O", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_served(srv.metrics_port, 20, timeout=15)
        assert client_connections(srv.port) == 3
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert json.loads(out)["options"]["connections"] == 3
