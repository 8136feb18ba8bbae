"""``greeter load`` splits every call's latency into the server's own time (its
``server-timing`` trailer) and the rest ("outside"), with every engine (grpc, h2,
gRPC-Web), in every output format, with gates on either part, and "n/a" (never a zero)
when the server sends no trailer."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
from hpack import Decoder, Encoder
from load_support import load_cli

from conftest import free_port, running
from greeter.load import schema
from greeter.load.h2engine import summarize
from greeter.load.report import EXIT_BAD_ARGS, EXIT_FAILED

DELAY_MS = 40  # asked of the server per call: its own time, so "server", not "outside"


async def load(*args: str) -> Any:
    return await asyncio.to_thread(load_cli, *args, "--procs", "1", "-c", "4")


def assert_split(part: dict[str, Any], count: int) -> None:
    """Every call told its server time; server and outside add up to the total's mean."""
    assert part["timed"] == count
    server, outside = part["server_ms"], part["outside_ms"]
    assert server["min"] >= DELAY_MS  # the injected delay is a lower bound, never shorter
    mean = server["mean"] + outside["mean"]
    assert abs(mean - part["latency_ms"]["mean"]) <= 0.01  # rounding of three means
    assert outside["min"] >= 0


async def test_every_engine_reads_the_trailer_and_every_format_shows_the_split(tmp_path: Path):
    delay = f"x-greeter-fault-delay-ms:{DELAY_MS}"
    async with running(web_port=free_port(), fault_enabled=True) as server:
        for address, flags in (
            (f"127.0.0.1:{server.port}", ["--engine", "h2"]),
            (f"127.0.0.1:{server.port}", ["--engine", "grpc"]),
            (f"127.0.0.1:{server.web_port}", ["--protocol", "grpc-web"]),
        ):
            done = await load(address, *flags, "-n", "40", "-m", delay, "-O", "json")
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)
            jsonschema.validate(report, schema())
            assert_split(report, 40)
            assert_split(report["by_cluster"]["cluster-a"], 40)
            assert_split(report["by_pod"]["pod-a"], 40)
            assert report["server_hdr"]["count"] == report["outside_hdr"]["count"] == 40
            rows = [r for r in report["timeline"] if r["count"]]
            assert all(r["outside_ms"]["p50"] is not None for r in rows), flags
            assert sum(sum(n for _, n in r["outside_hdr"]) for r in report["timeline"]) == 40

        # The other formats, from one run: CSV, timeline CSV, HTML; then the terminal.
        address = f"127.0.0.1:{server.port}"
        html_path, timeline_path = tmp_path / "r.html", tmp_path / "t.csv"
        done = await load(address, "-n", "20", "-m", delay, "-O", "csv", "--html",
                          str(html_path), "--timeline-csv", str(timeline_path))  # fmt: skip
        assert done.returncode == 0, done.stderr
        rows = {r["name"]: r for r in csv.DictReader(io.StringIO(done.stdout))}
        assert rows["cluster-a"]["timed"] == "20"
        assert float(rows["cluster-a"]["server_min_ms"]) >= DELAY_MS
        page = await asyncio.to_thread(html_path.read_text, encoding="utf-8")
        assert 'class="latency-split"' in page
        assert 'data-row="cluster-a" data-part="outside"' in page
        text = await asyncio.to_thread(timeline_path.read_text, encoding="utf-8")
        assert any(row["outside_p99_ms"] for row in csv.DictReader(io.StringIO(text)))
        done = await load(address, "-n", "20", "-m", delay)
        assert "Where the latency goes (all 20 calls told their server time):" in done.stdout
        lines = done.stdout.splitlines()
        table = lines.index("By cluster:") + 1
        assert "server p50" in lines[table]
        assert "outside p99" in lines[table]
        assert "n/a" not in lines[table + 1]


async def test_gates_on_either_part_and_n_a_without_the_trailer():
    async with running(fault_enabled=True) as server:
        address = f"127.0.0.1:{server.port}"
        delay = f"x-greeter-fault-delay-ms:{DELAY_MS}"
        # The server's delay makes the server part miss a bound the outside part meets.
        done = await load(address, "-n", "20", "-m", delay, "-O", "json",
                          "--max-latency", f"server.p50={DELAY_MS // 2}ms",
                          "--max-latency", "outside.p99=60s")  # fmt: skip
        assert done.returncode == EXIT_FAILED, done.stderr
        report = json.loads(done.stdout)
        gates = {t["name"]: t for t in report["thresholds"]}
        assert not gates["latency_server_p50"]["passed"]
        assert gates["latency_server_p50"]["value"] >= DELAY_MS
        assert gates["latency_outside_p99"]["passed"]
        done = await load(address, "-n", "5", "--max-latency", "outside.p99=abc")
        assert done.returncode == EXIT_BAD_ARGS
        assert "--max-latency" in done.stderr
        assert "Traceback" not in done.stderr
    async with running(server_timing=False) as server:
        address = f"127.0.0.1:{server.port}"
        done = await load(address, "-n", "10", "--max-latency", "outside.p99=60s")
        assert done.returncode == EXIT_FAILED
        assert "Where the latency goes: n/a" in done.stdout
        assert "latency outside.p99 is n/a" in done.stdout + done.stderr
        done = await load(address, "-n", "10", "-O", "json")
        report = json.loads(done.stdout)
        jsonschema.validate(report, schema())
        assert (report["timed"], report["server_ms"], report["outside_ms"]) == (0, None, None)
        assert report["by_cluster"]["cluster-a"]["outside_ms"] is None


def test_the_h2_engine_reads_a_trailer_however_it_is_encoded():
    # A gateway's HPACK encoder may index or Huffman-code what grpc-core sends plainly: the
    # full decode finds the same value as the fast path does for grpc-core's encoding.
    headers = [("grpc-status", "0"), ("x-greeter-pod", "p"), ("server-timing", "app;dur=1.25")]
    for huffman in (True, False):
        block = Encoder().encode(headers, huffman=huffman)
        decoded = Decoder().decode(block, raw=True)
        assert summarize(decoded)[-1] == 1250
    assert summarize([(b"grpc-status", b"0")])[-1] is None
