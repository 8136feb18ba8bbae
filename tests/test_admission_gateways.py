"""A call one pod shed, seen through real gateways in front of two real pods.

Pod ``a`` is past capacity on purpose (``admission_limit`` 1, held by a call the fault
injection keeps waiting); pod ``b`` has room. Envoy with the rehearsal's retry policy
(``retry_on`` with ``resource-exhausted``, another host each time) answers every call from
``b``; without it, and through nginx (``grpc_next_upstream`` looks at connections and HTTP
statuses, not at grpc-status), the shed calls reach the client as RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import free_port, require_tool, running, until
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.rehearse import envoy_config
from greeter.rehearse.envoy import find_envoy
from greeter.server import GreeterServer

HOLD = (("x-greeter-fault-delay-ms", "60000"),)
CALLS = 12


async def _wait_listening(port: int, proc: asyncio.subprocess.Process) -> None:
    for _ in range(300):  # bounded: 30 s
        if proc.returncode is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.asynccontextmanager
async def _gateway(argv: list[str], port: int, log: Path) -> AsyncIterator[None]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        await _wait_listening(port, proc)
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _envoy_config(port: int, admin: int, pods: list[int], retries: bool) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster": "pods", "timeout": "0s"}
    if retries:
        route["retry_policy"] = envoy_config._retry_policy()
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "in",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": route}],
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
    upstream = {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in pods
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "in",
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
            "clusters": [
                {
                    "name": "pods",
                    "type": "STATIC",
                    "lb_policy": "ROUND_ROBIN",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": upstream
                    },
                    "load_assignment": {
                        "cluster_name": "pods",
                        "endpoints": [{"lb_endpoints": endpoints}],
                    },
                }
            ],
        },
    }


def _nginx_config(port: int, pods: list[int], prefix: Path) -> str:
    servers = "".join(f"server 127.0.0.1:{p}; " for p in pods)
    temp = " ".join(
        f"{kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    return f"""user root;
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    {temp} uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    upstream pods {{ {servers}keepalive 8; }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://pods;
            grpc_next_upstream error timeout non_idempotent;
        }}
    }}
}}
"""


@contextlib.asynccontextmanager
async def _one_pod_past_capacity() -> AsyncIterator[list[GreeterServer]]:
    """Pods a (admission_limit 1, its one call held) and b."""
    async with (
        running(admission_limit=1, fault_enabled=True, pod_name="a") as a,
        running(pod_name="b") as b,
        grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as direct,
    ):
        held = asyncio.ensure_future(
            helloworld_pb2_grpc.GreeterStub(direct).SayHello(
                helloworld_pb2.HelloRequest(), metadata=HOLD
            )
        )
        assert a.admission is not None
        await until(lambda: a.admission.in_flight, lambda n: n == 1, timeout=10)
        assert a.admission.in_flight == 1
        try:
            yield [a, b]
        finally:
            held.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await held


async def _answers(port: int) -> dict[tuple[str, str | None], int]:
    """(status, pod that answered) -> calls, for CALLS calls one after another."""
    seen: dict[tuple[str, str | None], int] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for i in range(CALLS):
            call = stub.SayHello(helloworld_pb2.HelloRequest(name=str(i)), timeout=10)
            try:
                await call
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name  # and whether the pod's own refusal reached the client
                code += " overloaded" if exc.details().startswith("overloaded: ") else ""
            pod = dict(await call.trailing_metadata() or ()).get("x-greeter-pod")
            key = (code, None if pod is None else str(pod))
            seen[key] = seen.get(key, 0) + 1
    return seen


@pytest.mark.parametrize("retries", [True, False], ids=["retry", "no-retry"])
async def test_envoy_retries_a_shed_call_on_another_pod(tmp_path: Path, retries: bool) -> None:
    envoy = find_envoy()
    async with _one_pod_past_capacity() as pods:
        port, admin = free_port(), free_port()
        path = tmp_path / "envoy.json"
        path.write_text(json.dumps(_envoy_config(port, admin, [p.port for p in pods], retries)))
        argv = [
            envoy,
            "-c",
            str(path),
            "--concurrency",
            "1",
            "--base-id",
            str(admin),
            "-l",
            "error",
        ]
        async with _gateway(argv, port, tmp_path / "envoy.log"):
            seen = await _answers(port)
    if retries:
        assert seen == {("OK", "b"): CALLS}
    else:  # round robin: every other call went to the pod that sheds, and reached the client
        assert seen == {("OK", "b"): CALLS // 2, ("RESOURCE_EXHAUSTED overloaded", "a"): CALLS // 2}


async def test_nginx_passes_a_shed_call_through(tmp_path: Path) -> None:
    nginx = require_tool("nginx", "apt-get install nginx-light")
    async with _one_pod_past_capacity() as pods:
        port = free_port()
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(_nginx_config(port, [p.port for p in pods], prefix))
        argv = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
        async with _gateway(argv, port, tmp_path / "nginx.log"):
            seen = await _answers(port)
    assert seen == {("OK", "b"): CALLS // 2, ("RESOURCE_EXHAUSTED overloaded", "a"): CALLS // 2}
