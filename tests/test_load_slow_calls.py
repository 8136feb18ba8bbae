"""``greeter load`` shows calls that hung: a "slow calls" line (count over 1 s, the slowest)
in the terminal, the JSON (``slow_calls``, in the schema) and the HTML page; calls that named
no backend are labelled "no backend", not "(none)"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from load_support import load_cli

from greeter.load import schema
from greeter.load.render import backend_name

Spawn = Any


def test_slow_calls_in_terminal_json_and_page(spawn_server: Spawn, tmp_path: Path) -> None:
    # Every call held 1.2 s by the server's own fault injection: each is slow.
    srv = spawn_server(
        env={
            "GREETER_ACCESS_LOG": "false",
            "GREETER_FAULT_ENABLED": "true",
            "GREETER_FAULT_DELAY": "1.2",
            "GREETER_FAULT_DELAY_PERCENT": "100",
        }
    )
    args = [srv.address, "-n", "4", "-c", "4", "--procs", "1"]
    as_json = load_cli(*args, "-O", "json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    jsonschema.validate(report, schema())
    slow = report["slow_calls"]
    assert slow["over_ms"] == 1000
    assert slow["count"] == 4
    assert 1200 <= slow["slowest_ms"] == report["latency_ms"]["max"]
    text = load_cli(*args)
    assert text.returncode == 0, text.stderr
    assert "  Slow calls:\t4 over 1.00 s, slowest 1." in text.stdout
    page = tmp_path / "load.html"
    assert load_cli(*args, "-O", "html", "-o", str(page)).returncode == 0
    assert "Slow calls: 4 over 1.00 s, slowest 1." in page.read_text()
    # A server that answers at once: none.
    fast = spawn_server(env={"GREETER_ACCESS_LOG": "false"})
    quick = json.loads(load_cli(fast.address, "-n", "20", "--procs", "1", "-O", "json").stdout)
    assert quick["slow_calls"]["count"] == 0
    assert quick["slow_calls"]["slowest_ms"] == quick["latency_ms"]["max"] < 1000


def test_calls_that_named_no_backend_are_labelled_so() -> None:
    assert backend_name("cluster-a", {}) == "cluster-a"
    assert backend_name("(none)", {"error_messages": {}}) == "no backend"
    gateway = {"error_messages": {"UNAVAILABLE: Received http2 header with status: 503": 3}}
    assert backend_name("(none)", gateway) == "no backend (gateway 503)"
