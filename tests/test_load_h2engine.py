"""The load tester's lean HTTP/2 engine (``--engine h2``) against real Greeter servers on
127.0.0.1: counts, statuses, deadlines, identity, TLS, reconnects after GOAWAY and
restarts, stream-id exhaustion, the server's stream limit, and the same report as grpc."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hpack import Decoder
from load_support import assert_cannot_connect, load_cli

from conftest import free_port, running, until
from greeter.certs import make_ca, make_leaf
from greeter.client import Target
from greeter.load import ConfigError, ConnectError, LoadConfig, h2engine, run_load, schema
from greeter.load.engine import Recorder, record, resolved_engine
from greeter.load.report import EXIT_BAD_ARGS, EXIT_CONNECT
from greeter.server import GreeterServer

Spawn = Any
SAY_HELLO = ("unary", "helloworld.Greeter", "SayHello")


def handled(server: GreeterServer, code: str = "OK", labels: tuple[str, ...] = SAY_HELLO) -> int:
    """Calls the in-process server counts as handled with ``code`` (its Prometheus counter)."""
    assert server.metrics is not None
    return int(server.metrics.handled.labels(*labels, code)._value.get())


async def settled(
    server: GreeterServer, expect: int, code: str = "OK", labels: tuple[str, ...] = SAY_HELLO
) -> int:
    """``handled``, once it reaches ``expect`` or 2 s have passed: the server counts a call
    just after its reply went out, so the client can be a moment ahead."""
    return await until(lambda: handled(server, code, labels), lambda n: n >= expect, timeout=2.0)


def h2(address: str, **overrides: Any) -> LoadConfig:
    values: dict[str, Any] = {
        "target": Target(address),
        "concurrency": 8,
        "connect_timeout": 5,
        "procs": 1,
        "engine": "h2",
    }
    values.update(overrides)
    return LoadConfig(**values)


async def load(config: LoadConfig) -> Any:
    """run_load in a thread, so an in-process server keeps serving on this loop."""
    return await asyncio.to_thread(run_load, config)


# -- the wire format, checked with the hpack decoder ------------------------------------------
def test_request_headers_decode_to_what_grpc_sends() -> None:
    block = h2engine.header_block(
        "/helloworld.Greeter/SayHello",
        "grpc.example.com:443",
        True,
        [("x-canary", "yes"), ("trace-bin", "\x01\x02")],
        2.5,
    )
    decoded = Decoder().decode(block)
    assert decoded == [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/helloworld.Greeter/SayHello"),
        (":authority", "grpc.example.com:443"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", decoded[6][1]),
        ("grpc-timeout", "2500m"),
        ("x-canary", "yes"),
        ("trace-bin", "AQI"),
    ]
    assert decoded[6][1].startswith("greeter-load/")
    # Nothing was indexed: a fresh decoder's dynamic table stays empty.
    decoder = Decoder()
    decoder.decode(block)
    assert len(decoder.header_table.dynamic_entries) == 0
    # Long values use multi-byte HPACK integers.
    long = h2engine.header_block("/p", "a:1", False, [("k", "v" * 300)], None)
    assert Decoder().decode(long)[-1] == ("k", "v" * 300)


def test_grpc_timeout_and_percent_decoding() -> None:
    assert h2engine.grpc_timeout(20) == "20000m"
    assert h2engine.grpc_timeout(0.0001) == "1m"
    assert h2engine.grpc_timeout(200_000) == "200000S"
    assert h2engine._percent_decode(b"caf%C3%A9 50%25 %zz") == "café 50% %zz"


def test_request_frames_split_for_large_requests() -> None:
    block = b"\x83" * 40_000
    request = h2engine.UnaryRequest(block, b"x" * 20_000, None)
    frames = b"\x00\x00\x00\x05".join(request.pieces)
    kinds = []
    pos = 0
    while pos < len(frames):
        length = int.from_bytes(frames[pos : pos + 3], "big")
        assert length <= h2engine.MAX_FRAME
        assert int.from_bytes(frames[pos + 5 : pos + 9], "big") == 5
        kinds.append((frames[pos + 3], frames[pos + 4]))
        pos += 9 + length
    assert pos == len(frames)
    assert kinds == [(1, 0), (9, 0), (9, 4), (0, 0), (0, 1)]  # HEADERS, CONTINUATIONs, DATAs


# -- against real servers ---------------------------------------------------------------------
async def test_counts_statuses_and_identity_match_the_server() -> None:
    async with running(pod_name="pod-x", cluster_name="cluster-x") as server:
        address = f"127.0.0.1:{server.port}"
        report = await load(h2(address, total=600, connections=3))
        assert report["options"]["engine"] == "h2"
        assert report["count"] == report["ok"] == 600 == await settled(server, 600)
        assert report["status_codes"] == {"OK": 600}
        assert report["replies"] == 600
        assert report["by_cluster"]["cluster-x"]["count"] == 600
        assert report["by_pod"]["pod-x"] == {**report["by_pod"]["pod-x"], "count": 600}
        assert report["by_pod"]["pod-x"]["cluster"] == "cluster-x"
        assert report["hdr"]["count"] == sum(bar["count"] for bar in report["histogram"]) == 600
        jsonschema.validate(report.data, schema())

        health = await load(h2(address, call="Check", total=30, request={"service": ""}))
        assert health["status_codes"] == {"OK": 30}
        check = ("unary", "grpc.health.v1.Health", "Check")
        assert await settled(server, 30, labels=check) == 30
        unknown = await load(h2(address, call="Check", total=5, request={"service": "nope"}))
        assert unknown["status_codes"] == {"NOT_FOUND": 5}


async def test_injected_faults_and_deadlines() -> None:
    async with running(fault_enabled=True, pod_name="p") as server:
        address = f"127.0.0.1:{server.port}"
        failing = Target(address, metadata=(("x-greeter-fault-status", "UNAVAILABLE"),))
        report = await load(h2(address, target=failing, total=100))
        assert report["status_codes"] == {"UNAVAILABLE": 100}
        assert report["error_messages"] == {"UNAVAILABLE: injected fault: UNAVAILABLE": 100}
        assert report["by_pod"]["p"]["errors"] == 100  # identity comes in trailers-only replies
        assert await settled(server, 100, "Unavailable") == 100

        slow = Target(address, metadata=(("x-greeter-fault-delay-ms", "1000"),))
        late = await load(h2(address, target=slow, total=8, timeout=0.2))
        assert late["status_codes"] == {"DEADLINE_EXCEEDED": 8}
        # cut at the 200 ms deadline, well before the server's 1 s delay would have ended
        assert 190 <= late["latency_ms"]["min"] <= late["latency_ms"]["max"] < 1000
        assert set(late["error_messages"]) == {"DEADLINE_EXCEEDED: Deadline Exceeded"}

        # Open loop through a delay: latency counts from the due time, as with grpc.
        delayed = Target(address, metadata=(("x-greeter-fault-delay-ms", "100"),))
        queued = await load(h2(address, target=delayed, concurrency=1, rps=20, duration=2.0))
        assert 10 <= queued["count"] <= 21
        assert queued["latency_ms"]["max"] > 700


async def test_respects_the_servers_stream_limit() -> None:
    # The server allows 2 streams per connection; 16 workers share one. Calls beyond the limit
    # wait for a slot instead of being refused. (grpc-core frees a slot a little after the
    # trailers went out, so a call can still be refused now and then: that one is reported
    # UNAVAILABLE, as grpc reports it, and never counted as served.)
    async with running(max_concurrent_streams=2, fault_enabled=True) as server:
        address = f"127.0.0.1:{server.port}"
        report = await load(h2(address, total=200, concurrency=16))
        assert report["count"] == 200
        assert report["ok"] == await settled(server, report["ok"])
        # (not waiting for a slot at all would refuse most of the 200)
        assert report["errors"] <= 50, report["error_messages"]
        refused = "UNAVAILABLE: Received RST_STREAM with error code 7"
        assert set(report["error_messages"]) <= {refused}
        slow = Target(address, metadata=(("x-greeter-fault-delay-ms", "20"),))
        report = await load(h2(address, target=slow, total=40, concurrency=16))
        assert report["errors"] <= 10, report["error_messages"]
        # 2 at a time, 20 ms each: the calls queued for a stream slot.
        assert report["duration_s"] >= 0.35


async def test_new_connection_before_stream_ids_run_out() -> None:
    async with running() as server:
        target = Target(f"127.0.0.1:{server.port}")
        channel = h2engine.H2Channel(target, first_stream_id=h2engine.MAX_STREAM_ID - 20)
        await channel.connect(5)
        payload = b"\n\x05world"
        call = h2engine.make_caller(
            channel, "/helloworld.Greeter/SayHello", payload, (), 5.0, 5.0, record
        )
        rec = Recorder()
        try:
            for _ in range(5):  # 5 rounds of 8 concurrent calls: 11 ids per connection
                await asyncio.gather(*(call(rec, 0.0) for _ in range(8)))
        finally:
            await channel.close()
        assert rec.status == {"OK": 40}
        assert channel.connects >= 4
        assert await settled(server, 40) == 40


async def test_goaway_from_max_connection_age_keeps_calls_succeeding() -> None:
    async with running(max_connection_age=0.5, max_connection_age_grace=5.0) as server:
        address = f"127.0.0.1:{server.port}"
        report = await load(h2(address, duration=3.0, concurrency=8, connections=2))
        assert report["count"] > 100
        assert report["status_codes"] == {"OK": report["count"]}
        assert await settled(server, report["count"]) == report["count"]


async def test_calls_continue_after_the_server_restarts() -> None:
    port = free_port()
    config = h2(f"127.0.0.1:{port}", duration=6.0, concurrency=4, timeout=2.0)
    async with running(port=port, pod_name="before") as first:
        task = asyncio.ensure_future(load(config))
        before = await until(lambda: handled(first), lambda n: n >= 20, timeout=3.0)
    async with running(port=port, pod_name="after") as second:
        report = await task
        after = await settled(second, report["by_pod"].get("after", {}).get("count", 1))
    assert before > 0
    assert after > 0
    assert report["by_pod"]["before"]["count"] >= before
    assert report["by_pod"]["after"]["count"] == after  # every call the new server handled
    # Calls in flight when the first server went away fail; nothing else does.
    assert set(report["status_codes"]) <= {"OK", "UNAVAILABLE", "CANCELLED"}
    assert report["ok"] >= before + after - 8


def test_tls_cacert_authority_insecure_and_mismatches(spawn_server: Spawn, tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    leaf = make_leaf(tmp_path, "server", ["grpc.example.com"], ca)
    tls = spawn_server(
        env={
            "GREETER_TLS_CERT": str(leaf.cert),
            "GREETER_TLS_KEY": str(leaf.key),
            "GREETER_ACCESS_LOG": "false",
            "GREETER_POD_NAME": "tls-pod",
        }
    )
    plain = spawn_server(env={"GREETER_ACCESS_LOG": "false"})
    common = ["-n", "30", "-c", "3", "--procs", "1", "--engine", "h2"]
    good = [*common, "--connect-timeout", "10"]  # these must connect, however busy the machine
    base = [*common, "--connect-timeout", "2"]  # these must fail, and fail fast
    verified = load_cli(
        tls.address,
        "--cacert",
        str(ca.cert),
        "--authority",
        "grpc.example.com",
        *good,
        "-O",
        "json",
    )
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["options"]["engine"] == "h2"
    assert report["options"]["tls"] is True
    assert report["by_pod"]["tls-pod"]["count"] == 30
    insecure = load_cli(tls.address, "--insecure", "--authority", "other.example", *good)
    assert insecure.returncode == 0, insecure.stderr
    for args in (
        [tls.address, "--cacert", str(ca.cert), "--authority", "wrong.example.com"],
        [tls.address, "--cacert", str(ca.cert)],  # the IP address is not in the certificate
        [tls.address],  # plaintext to a TLS port
        [plain.address, "--tls"],  # TLS to a plaintext port
    ):
        assert_cannot_connect(*args, *base)


def test_unreachable_port_exits_3() -> None:
    port = free_port()
    result = load_cli(f"127.0.0.1:{port}", "--engine", "h2", "--connect-timeout", "1", "-n", "5")
    assert result.returncode == EXIT_CONNECT
    assert f"cannot connect to 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ConnectError):
        run_load(h2(f"127.0.0.1:{port}", total=1, connect_timeout=0.5))


def test_engine_choice() -> None:
    plain = LoadConfig(target=Target("127.0.0.1:1"))
    assert resolved_engine(plain) == "h2"
    assert resolved_engine(LoadConfig(target=Target("[::1]:1"), call="Check")) == "h2"
    assert resolved_engine(LoadConfig(target=Target("ipv4:127.0.0.1:1"))) == "h2"
    for grpc_only in (
        LoadConfig(target=Target("dns:///localhost:1")),
        LoadConfig(target=Target("ipv4:127.0.0.1:1,127.0.0.1:2")),
        LoadConfig(target=Target("127.0.0.1:1", lb_policy="round_robin")),
        LoadConfig(target=Target("127.0.0.1:1"), call="SayHelloStreamReply"),
        LoadConfig(target=Target("127.0.0.1:1"), request={"name": "x" * 20_000}),
        LoadConfig(target=Target("127.0.0.1:1"), engine="grpc"),
    ):
        assert resolved_engine(grpc_only) == "grpc", grpc_only
    with pytest.raises(ConfigError, match="--engine"):
        LoadConfig(target=Target("127.0.0.1:1"), call="SayHelloBidiStream", engine="h2")
    with pytest.raises(ConfigError, match="--engine"):
        LoadConfig(target=Target("dns:///localhost:1"), engine="h2")
    bad = load_cli("127.0.0.1:1", "--engine", "h3")
    assert bad.returncode == EXIT_BAD_ARGS


def test_both_engines_give_the_same_report(spawn_server: Spawn) -> None:
    srv = spawn_server(
        env={
            "GREETER_ACCESS_LOG": "false",
            "GREETER_POD_NAME": "p1",
            "GREETER_CLUSTER_NAME": "c1",
            "GREETER_FAULT_ENABLED": "true",
            "GREETER_FAULT_STATUS_PERCENT": "30",
        }
    )
    reports = {}
    for engine in ("grpc", "h2"):
        result = load_cli(
            srv.address, "-n", "300", "-c", "6", "--procs", "2", "--connections", "2",
            "--engine", engine, "-O", "json", "--max-error-rate", "0.9",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        reports[engine] = json.loads(result.stdout)
        jsonschema.validate(reports[engine], schema())
    grpc_report, h2_report = reports["grpc"], reports["h2"]
    assert grpc_report["options"]["engine"] == "grpc"
    assert h2_report["options"]["engine"] == "h2"

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items() if k not in ("buckets", "histogram")}
        return type(value).__name__

    assert shape(h2_report) == {**shape(grpc_report), "options": shape(h2_report["options"])}
    for report in reports.values():
        assert report["count"] == 300
        assert set(report["status_codes"]) == {"OK", "UNAVAILABLE"}
        assert set(report["error_messages"]) == {"UNAVAILABLE: injected fault: UNAVAILABLE"}
        assert set(report["by_pod"]) == {"p1"}
        assert set(report["by_cluster"]) == {"c1"}
        assert report["by_pod"]["p1"]["errors"] == report["errors"]


class _PlainH2Server(asyncio.Protocol):
    """A real HTTP/2 server that is not gRPC (as a gateway's error page would be): it answers
    every request with ``status`` and no grpc-status, or resets it with ``reset``."""

    status = 503
    reset: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        import h2.config
        import h2.connection

        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        import h2.events

        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.StreamEnded):
                if self.reset is not None:
                    self.conn.reset_stream(event.stream_id, self.reset)
                else:
                    headers = [(":status", str(self.status)), ("content-type", "text/plain")]
                    self.conn.send_headers(event.stream_id, headers, end_stream=True)
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.transport.write(self.conn.data_to_send())


@pytest.mark.parametrize(
    ("status", "reset", "code"),
    [
        (503, None, "UNAVAILABLE"),
        (404, None, "UNIMPLEMENTED"),
        (401, None, "UNAUTHENTICATED"),
        (418, None, "UNKNOWN"),
        (200, None, "INTERNAL"),  # 200 without grpc-status
        (200, 7, "UNAVAILABLE"),  # REFUSED_STREAM
        (200, 8, "CANCELLED"),  # CANCEL
    ],
)
async def test_http_status_and_resets_map_like_grpc(
    status: int, reset: int | None, code: str
) -> None:
    server_class = type("Server", (_PlainH2Server,), {"status": status, "reset": reset})
    loop = asyncio.get_running_loop()
    server = await loop.create_server(server_class, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        report = await load(h2(f"127.0.0.1:{port}", total=20, concurrency=4))
    finally:
        server.close()
        await server.wait_closed()
    assert report["status_codes"] == {code: 20}
    assert report["by_pod"]["(none)"]["errors"] == 20
