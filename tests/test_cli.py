"""``greeter call`` and ``greeter health`` as a new user would run them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from conftest import free_port
from greeter.certs import make_leaf


def greeter(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "greeter", *args], capture_output=True, text=True, timeout=timeout
    )


def test_call_prints_reply_and_identity(spawn_server):
    proc = spawn_server(env={"GREETER_CLUSTER_NAME": "east", "GREETER_POD_NAME": "p1"})
    result = greeter("call", proc.address, "--name", "Ada")
    assert result.returncode == 0, result.stderr
    assert "Hello, Ada!" in result.stdout
    assert "cluster=east" in result.stdout
    assert "pod=p1" in result.stdout


def test_call_stream_as_json(spawn_server):
    proc = spawn_server(env={"GREETER_CLUSTER_NAME": "east"})
    result = greeter(
        "call",
        proc.address,
        "--method",
        "SayHelloStreamReply",
        "-m",
        "x-greeter-stream-count:2",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["replies"] == ["Hello, world! (1/2)", "Hello, world! (2/2)"]
    assert body["identity"]["x-greeter-cluster"] == "east"


def test_call_with_tls_insecure_and_authority(spawn_server, tmp_path):
    pair = make_leaf(tmp_path, "tls", ["grpc.example.com"])
    proc = spawn_server(env={"GREETER_TLS_CERT": str(pair.cert), "GREETER_TLS_KEY": str(pair.key)})
    result = greeter("call", proc.address, "--insecure", "--authority", "grpc.example.com")
    assert result.returncode == 0, result.stderr
    result = greeter(
        "call", proc.address, "--cacert", str(pair.cert), "--authority", "grpc.example.com"
    )
    assert result.returncode == 0, result.stderr


def test_call_errors_are_clear():
    result = greeter("call", f"127.0.0.1:{free_port()}", "-t", "2")
    assert result.returncode == 3  # cannot connect: the client commands' one table
    assert "connection refused" in result.stderr
    assert "Traceback" not in result.stderr
    result = greeter("call", "127.0.0.1:1", "-m", "nocolon")
    assert result.returncode == 2
    assert "key:value" in result.stderr


def test_health_exit_codes(spawn_server):
    proc = spawn_server()
    assert greeter("health", proc.address).returncode == 0
    assert greeter("health", proc.address, "--service", "helloworld.Greeter").returncode == 0
    assert greeter("health", proc.address, "--service", "nope").returncode == 3
    ready = greeter("health", proc.address, "--readiness")
    assert (ready.returncode, ready.stdout) == (0, "status: SERVING\n"), ready.stderr
    unknown = greeter("health", proc.address, "--readiness", "--service", "nope")
    assert unknown.returncode == 3
    assert "NOT_FOUND" in unknown.stderr
    assert greeter("health", proc.address, "--bogus-flag").returncode == 1
    unreachable = greeter("health", f"127.0.0.1:{free_port()}", "--connect-timeout", "1")
    assert unreachable.returncode == 2


def test_health_not_serving_while_draining(spawn_server):
    proc = spawn_server(env={"GREETER_DRAIN_DELAY": "10"})
    proc.proc.terminate()
    for _ in range(50):
        result = greeter("health", proc.address, "-t", "2")
        if result.returncode == 4:
            break
    assert result.returncode == 4
    assert "NOT_SERVING" in result.stderr
    # the drain is 10 s long: the readiness path is still answered, with UNAVAILABLE
    ready = greeter("health", proc.address, "--readiness", "-t", "2")
    assert ready.returncode == 4, ready.stderr
    assert "UNAVAILABLE: draining: NOT_SERVING" in ready.stderr


@pytest.mark.parametrize("command", ["serve", "call", "health"])
def test_help_works(command):
    assert greeter(command, "--help").returncode == 0


# ghz users type `--insecure` for plaintext; greeter keeps grpcurl's meaning (TLS, unverified),
# takes ghz's --skipTLS as its alias and --plaintext for no TLS, and explains the mix-up.
PLAINTEXT_MIXUPS = [
    ("call", "--insecure"),
    ("call", "--skipTLS"),
    ("call", "--tls"),
    ("health", "--insecure"),
    ("health", "--tls"),
    ("load", "--insecure"),
    ("load", "--skipTLS"),
    ("load", "--tls"),
]


@pytest.mark.parametrize(("command", "flag"), PLAINTEXT_MIXUPS)
def test_a_tls_flag_against_a_plaintext_server_says_which_flag_to_drop(spawn_server, command, flag):
    proc = spawn_server()
    extra = ["-n", "20", "--connect-timeout", "5"] if command == "load" else []
    extra += ["--connect-timeout", "5"] if command == "health" else []
    result = greeter(command, flag, *extra, proc.address)
    assert result.returncode == {"call": 3, "health": 2, "load": 3}[command], result
    assert "the server speaks plaintext gRPC, not TLS" in result.stderr, result.stderr
    dropped = "--tls" if flag == "--tls" else "--insecure/--skipTLS"
    assert f"drop {dropped} (or pass --plaintext)" in result.stderr
    assert "WRONG_VERSION_NUMBER" not in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("command", ["call", "health", "load"])
def test_plaintext_is_an_explicit_no_tls_flag(spawn_server, command):
    proc = spawn_server(env={"GREETER_CLUSTER_NAME": "east"})
    extra = ["-n", "20"] if command == "load" else []
    result = greeter(command, "--plaintext", *extra, proc.address)
    assert result.returncode == 0, result.stderr
    refused = greeter(command, "--plaintext", "--skipTLS", *extra, proc.address)
    assert refused.returncode == {"call": 2, "health": 1, "load": 2}[command]
    assert "--plaintext and --insecure/--skipTLS contradict each other" in refused.stderr


def test_skiptls_is_insecure_against_a_tls_server(spawn_server, tmp_path):
    pair = make_leaf(tmp_path, "tls", ["grpc.example.com"])
    proc = spawn_server(env={"GREETER_TLS_CERT": str(pair.cert), "GREETER_TLS_KEY": str(pair.key)})
    result = greeter("load", "--skipTLS", "-n", "20", proc.address, "-O", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["count"] == 20


def test_access_log_peers_read_the_same_on_both_ports(spawn_server):
    """A call over IPv6 to the gRPC port and one to the web port: the access log writes both
    peers as ipv6:[::1]:PORT (gRPC's own form is URL-encoded: ipv6:%5B::1%5D:PORT)."""
    web_port = free_port()
    proc = spawn_server(
        env={
            "GREETER_HOST": "[::]",
            "GREETER_WEB_HOST": "[::]",
            "GREETER_WEB_PORT": str(web_port),
            "GREETER_ACCESS_LOG": "true",
        }
    )
    for args in ([f"[::1]:{proc.port}"], [f"[::1]:{web_port}", "--protocol", "grpc-web"]):
        result = greeter("call", *args)
        assert result.returncode == 0, result.stderr

    def peers() -> list[str]:
        lines = proc.output()[1].splitlines()
        return [
            r["peer"]
            for r in map(json.loads, lines)
            if r.get("msg") == "rpc" and r.get("method") == "/helloworld.Greeter/SayHello"
        ]

    # The server writes a call's line just after its reply went out: wait for both (bounded).
    deadline = time.monotonic() + 10
    while len(peers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(peers()) == 2, proc.output()[1]
    for peer in peers():
        assert re.fullmatch(r"ipv6:\[::1\]:\d+", peer), peers()
