"""gRPC-Web through the rehearsal's gateway: real nginx in front of two clusters of real
``greeter serve`` processes with their web ports. ``greeter call/load --protocol
grpc-web`` through it, and headless Chromium opening the page at ``/web/`` and tallying
calls over both clusters (a screenshot is kept, its path printed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from browser_support import chromium, repeat, screenshot, text_of, use_page
from load_support import load_cli

from conftest import require_tool
from greeter._proto import helloworld_pb2
from greeter.client import Target
from greeter.rehearse.fleet import Rehearsal, RehearsalConfig
from greeter.rehearse.gateway import HOST
from greeter.rehearse.nginx import NginxGateway, render
from greeter.web.client import WebChannel

CLUSTERS = ("cluster-a", "cluster-b")


@pytest.fixture
async def rehearsal(tmp_path: Path) -> AsyncIterator[Rehearsal]:
    require_tool("nginx", "apt-get install -y nginx-light")
    config = RehearsalConfig(
        port=0,
        pods_per_cluster=1,
        canary=False,
        drain_delay=0.0,
        grace_period=2.0,
        workdir=tmp_path / "rehearsal",
    )
    async with Rehearsal(config) as r:
        yield r


async def test_call_and_load_over_grpc_web_through_the_gateway(rehearsal: Rehearsal):
    target = Target(rehearsal.address, cacert=str(rehearsal.cert), authority=HOST)
    channel = WebChannel(target)
    try:
        request = helloworld_pb2.HelloRequest(name="gw").SerializeToString()
        seen = set()
        for _ in range(4):
            result = await channel.call("/helloworld.Greeter/SayHello", request, timeout=10)
            assert result.code == "OK", result
            assert helloworld_pb2.HelloReply.FromString(result.messages[0]).message == "Hello, gw!"
            seen.add(result.metadata("x-greeter-cluster"))
        stream = await channel.call(
            "/helloworld.Greeter/SayHelloStreamReply",
            request,
            timeout=10,
            metadata=(("x-greeter-stream-count", "3"),),
        )
        assert stream.code == "OK"
        assert len(stream.messages) == 3
    finally:
        await channel.close()
    assert seen == set(CLUSTERS)  # nginx spreads calls round robin over both clusters
    done = await asyncio.to_thread(
        load_cli, rehearsal.address, "--protocol", "grpc-web", "--cacert", str(rehearsal.cert),
        "--authority", HOST, "-n", "200", "-c", "4", "--procs", "1", "-O", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status_codes"] == {"OK": 200}
    assert set(report["by_cluster"]) == set(CLUSTERS)
    assert sum(c["count"] for c in report["by_cluster"].values()) == 200
    # another host name: the default server's 404, as for gRPC
    other = WebChannel(Target(rehearsal.address, cacert=str(rehearsal.cert), authority="x.test"))
    try:
        refused = await other.call("/helloworld.Greeter/SayHello", request, timeout=10)
    finally:
        await other.close()
    assert refused.code != "OK"


async def test_the_page_through_the_gateway_tallies_both_clusters(rehearsal: Rehearsal, tmp_path):
    url = rehearsal.web_url
    assert url.startswith("https://127.0.0.1:")
    assert url.endswith("/web/")

    def browse() -> tuple[str, str, list[tuple[str, str, int, int]]]:
        with chromium(tmp_path) as driver:
            use_page(driver, url, "gateway", 2)
            cluster, pod = text_of(driver, "cluster"), text_of(driver, "pod")
            rows = repeat(driver, 16)
            screenshot(driver, tmp_path / "grpc-web-gateway.png")
            return cluster, pod, rows

    cluster, pod, rows = await asyncio.to_thread(browse)
    assert cluster in CLUSTERS
    assert pod.startswith(cluster)
    assert {row[0] for row in rows} == set(CLUSTERS)  # the tally covers both clusters
    assert sum(row[2] for row in rows) == 16
    assert all(row[3] == 0 for row in rows)
    # by cluster, then pod: a row keeps its place as the counts change
    assert [row[:2] for row in rows] == sorted(row[:2] for row in rows), rows
    for row_cluster, row_pod, _, _ in rows:
        assert row_pod.startswith(row_cluster)


def test_no_web_route_without_web_ports(tmp_path: Path):
    gateway = NginxGateway(port=1, fleet=["127.0.0.1:2"], canary=[], cert=tmp_path, key=tmp_path)
    assert "/web/" not in render(gateway, tmp_path)
    web = NginxGateway(
        port=1, fleet=["127.0.0.1:2"], canary=[], cert=tmp_path, key=tmp_path,
        web_fleet=["127.0.0.1:3"],
    )  # fmt: skip
    conf = render(web, tmp_path)
    assert "location /web/" in conf
    assert "server 127.0.0.1:3" in conf
    assert "application/grpc-web" in conf
