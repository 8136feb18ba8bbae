"""``greeter call --protocol grpc-web`` and ``greeter load --protocol grpc-web`` against a
real server's web port: replies, identity, statuses, the load report (by_cluster/by_pod,
the schema), text mode, TLS with --authority, metadata, and bad arguments."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
from load_support import assert_cannot_connect, load_cli

from conftest import free_port, running, until
from greeter.certs import make_ca, make_leaf
from greeter.client import Target
from greeter.load import ConfigError, LoadConfig, run_load, schema
from greeter.load.engine import resolved_engine
from greeter.load.report import EXIT_BAD_ARGS
from greeter.server import GreeterServer

SAY_HELLO = ("unary", "helloworld.Greeter", "SayHello")


def handled(server: GreeterServer, code: str = "OK", labels: tuple[str, ...] = SAY_HELLO) -> int:
    assert server.metrics is not None
    return int(server.metrics.handled.labels(*labels, code)._value.get())


def web_load(address: str, **overrides: Any) -> LoadConfig:
    values: dict[str, Any] = {
        "target": Target(address),
        "concurrency": 4,
        "connect_timeout": 5,
        "procs": 1,
        "protocol": "grpc-web",
    }
    values.update(overrides)
    return LoadConfig(**values)


async def call_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "greeter", "call", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_call_over_grpc_web_binary_and_text():
    async with running(web_port=free_port(), stream_count=2) as server:
        address = f"127.0.0.1:{server.web_port}"
        done = await call_cli(address, "--protocol", "grpc-web", "--name", "Ada")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == "Hello, Ada!"
        assert "cluster=cluster-a, pod=pod-a" in done.stdout
        done = await call_cli(
            address, "--protocol", "grpc-web-text", "--method", "SayHelloStreamReply", "--json",
            "-m", "x-greeter-stream-count:3",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["replies"] == [f"Hello, world! ({i}/3)" for i in (1, 2, 3)]
        assert result["identity"]["x-greeter-pod"] == "pod-a"
        assert result["protocol"] == "grpc-web-text"


async def test_call_reports_the_status_and_bad_arguments():
    async with running(web_port=free_port(), auth_enabled=True, auth_tokens=("t0k",)) as server:
        address = f"127.0.0.1:{server.web_port}"
        refused = await call_cli(address, "--protocol", "grpc-web")
        assert refused.returncode == 1
        assert "UNAUTHENTICATED" in refused.stderr
        ok = await call_cli(address, "--protocol", "grpc-web", "-m", "authorization:Bearer t0k")
        assert ok.returncode == 0, ok.stderr
        bidi = await call_cli(address, "--protocol", "grpc-web", "--method", "SayHelloBidiStream")
        assert bidi.returncode == 2
        assert "unary and server-streaming" in bidi.stderr
    down = await call_cli(f"127.0.0.1:{free_port()}", "--protocol", "grpc-web")
    assert down.returncode == 1
    assert "UNAVAILABLE" in down.stderr
    assert "Traceback" not in down.stderr


async def test_load_report_matches_the_server_counts_and_schema():
    async with running(web_port=free_port(), pod_name="pod-w", cluster_name="cluster-w") as srv:
        config = web_load(f"127.0.0.1:{srv.web_port}", total=300, connections=2)
        assert resolved_engine(config) == "grpc-web"
        report = await asyncio.to_thread(run_load, config)
        assert report["options"]["engine"] == "grpc-web"
        assert report["count"] == report["ok"] == 300
        assert report["replies"] == 300
        assert report["by_cluster"]["cluster-w"]["count"] == 300
        assert report["by_pod"]["pod-w"]["count"] == 300
        assert report["by_pod"]["pod-w"]["cluster"] == "cluster-w"
        jsonschema.validate(report.data, schema())
        counted = await until(lambda: handled(srv), lambda n: n >= 300, timeout=2.0)
        assert counted == 300

        stream = web_load(
            f"127.0.0.1:{srv.web_port}", call="SayHelloStreamReply", total=20, stream_count=3
        )
        streamed = await asyncio.to_thread(run_load, stream)
        assert streamed["status_codes"] == {"OK": 20}
        assert streamed["replies"] == 60

        text = web_load(f"127.0.0.1:{srv.web_port}", total=20, protocol="grpc-web-text")
        assert (await asyncio.to_thread(run_load, text))["status_codes"] == {"OK": 20}


async def test_load_counts_errors_and_deadlines():
    async with running(web_port=free_port(), fault_enabled=True) as srv:
        address = f"127.0.0.1:{srv.web_port}"
        target = Target(address, metadata=(("x-greeter-fault-status", "UNAVAILABLE"),))
        report = await asyncio.to_thread(run_load, web_load(address, target=target, total=12))
        assert report["status_codes"] == {"UNAVAILABLE": 12}
        assert report["by_cluster"]["cluster-a"]["errors"] == 12
        slow = Target(address, metadata=(("x-greeter-fault-delay-ms", "3000"),))
        late = await asyncio.to_thread(
            run_load, web_load(address, target=slow, total=4, timeout=0.2)
        )
        assert late["status_codes"] == {"DEADLINE_EXCEEDED": 4}


async def test_load_over_tls_with_authority(tmp_path):
    ca = make_ca(tmp_path)
    leaf = make_leaf(tmp_path, "server", ["grpc.example.com"], ca)
    async with running(web_port=free_port(), tls_cert=str(leaf.cert), tls_key=str(leaf.key)) as s:
        address = f"127.0.0.1:{s.web_port}"
        done = await asyncio.to_thread(
            load_cli, address, "--protocol", "grpc-web", "--cacert", str(ca.cert),
            "--authority", "grpc.example.com", "-n", "40", "-c", "2", "--procs", "1", "-O", "json",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["status_codes"] == {"OK": 40}
        assert report["by_pod"]["pod-a"]["count"] == 40
        wrong = await asyncio.to_thread(
            load_cli, address, "--protocol", "grpc-web", "--cacert", str(ca.cert),
            "--authority", "evil.example.com", "-n", "4", "--procs", "1",
        )  # fmt: skip
        assert wrong.returncode == 3, wrong.stderr
        assert "cannot connect" in wrong.stderr


def test_load_refuses_what_grpc_web_cannot_carry():
    target = Target("127.0.0.1:1")
    with pytest.raises(ConfigError, match="unary and server-streaming"):
        LoadConfig(target=target, call="SayHelloBidiStream", protocol="grpc-web")
    with pytest.raises(ConfigError, match="--engine"):
        LoadConfig(target=target, protocol="grpc-web", engine="h2")
    with pytest.raises(ConfigError, match="host:port"):
        LoadConfig(target=Target("dns:///x:1"), protocol="grpc-web")
    bad = load_cli("127.0.0.1:1", "--protocol", "grpc-web", "--call", "SayHelloBidiStream")
    assert bad.returncode == EXIT_BAD_ARGS
    assert_cannot_connect(f"127.0.0.1:{free_port()}", "--protocol", "grpc-web", "--procs", "1")
