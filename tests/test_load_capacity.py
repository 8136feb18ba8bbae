"""`greeter load` tells the capacity: goodput beside the rate, the latency of OK calls apart
from failed ones, and, with a step schedule and a gate, the last step that met the gate.

The verdicts are made certain rather than hoped for from the machine's speed: every step of a
slow schedule meets a gate of seconds, none meets one of a microsecond, and the step judge is
also fed timelines written by hand."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from load_support import load_cli

from greeter.client import Target
from greeter.load import LoadConfig, schema
from greeter.load import capacity as cap
from greeter.load.config import parse_threshold
from greeter.load.histogram import bucket_of
from greeter.load.report import EXIT_FAILED

Spawn = Any


@pytest.fixture
def spawn_server(spawn_server: Spawn) -> Spawn:
    def spawn(*args: str, env: dict[str, str] | None = None) -> Any:
        return spawn_server(*args, env={"GREETER_ACCESS_LOG": "false", **(env or {})})

    return spawn


STEPS = ["--load-schedule", "step", "--load-start", "20", "--load-step", "20", "--load-end", "60"]


def test_goodput_and_the_latency_of_ok_and_failed_calls_apart(spawn_server: Spawn) -> None:
    # Half the calls fail at once (an injected status), the others wait 20 ms: the OK calls'
    # latency is then at least 20 ms, the failed ones' well under it.
    srv = spawn_server(
        env={
            "GREETER_FAULT_ENABLED": "true",
            "GREETER_FAULT_STATUS_PERCENT": "50",
            "GREETER_FAULT_DELAY": "0.02",
            "GREETER_FAULT_DELAY_PERCENT": "100",
        }
    )
    result = load_cli(srv.address, "-n", "200", "-c", "8", "--procs", "1", "-O", "json")
    report = json.loads(result.stdout)
    jsonschema.validate(report, schema())
    assert report["goodput"] == pytest.approx(report["ok"] / report["duration_s"], rel=1e-3)
    assert report["goodput"] < report["rps"]
    assert report["ok_hdr"]["count"] == report["ok"]
    assert report["failed_hdr"]["count"] == report["errors"]
    assert report["ok_latency_ms"]["min"] >= 20
    assert report["failed_latency_ms"]["min"] >= 20  # the delay comes before the status
    text = load_cli(srv.address, "-n", "50", "-c", "4", "--procs", "1").stdout
    assert "Goodput:" in text
    assert "Latency of OK and failed calls:" in text
    html = load_cli(srv.address, "-n", "50", "-c", "4", "--procs", "1", "-O", "html").stdout
    assert "OK/s)" in html
    assert "<th>failed</th>" in html


def test_a_step_schedule_with_a_gate_names_the_last_step_that_met_it(spawn_server: Spawn) -> None:
    srv = spawn_server()
    base = [srv.address, *STEPS, "--load-step-duration", "1s", "--procs", "1", "-c", "8"]
    met = load_cli(*base, "--max-latency", "p99=10s", "-O", "json", timeout=90)
    assert met.returncode == 0, met.stderr
    report = json.loads(met.stdout)
    jsonschema.validate(report, schema())
    section = report["capacity"]
    assert section["gate"] == "p99 <= 10000 ms"
    assert [s["rate"] for s in section["steps"]] == [20, 40, 60]
    assert all(s["met"] for s in section["steps"])
    assert section["rate"] == 60
    missed = load_cli(*base, "--max-latency", "p99=1us", timeout=90)
    assert missed.returncode == EXIT_FAILED
    assert "Capacity: no step met p99 <= 0.001 ms" in missed.stdout
    shown = load_cli(*base, "--max-error-rate", "0", timeout=90)
    assert shown.returncode == 0, shown.stderr
    assert "Capacity: 60 calls/s at errors <= 0.00%" in shown.stdout


def _row(t: float, latencies_us: list[int], errors: int = 0) -> dict[str, Any]:
    hdr: dict[int, int] = {}
    for us in latencies_us:
        hdr[bucket_of(us)] = hdr.get(bucket_of(us), 0) + 1
    return {
        "t": t,
        "duration_s": 1.0,
        "count": len(latencies_us),
        "errors": errors,
        "hdr": [[i, n] for i, n in sorted(hdr.items())],
    }


def _config(*gates: str, error_rate: float | None = None, step: float = 2.0) -> LoadConfig:
    return LoadConfig(
        target=Target("127.0.0.1:1"),
        schedule="step",
        load_start=100,
        load_step=100,
        load_end=400,
        load_step_duration=step,
        thresholds=tuple(parse_threshold(g) for g in gates),
        max_error_rate=error_rate,
    )


def test_the_step_judge_stops_at_the_first_step_that_missed():
    fast, slow = [1_000] * 99 + [2_000], [1_000] * 90 + [80_000] * 10
    rows = [
        _row(0, fast), _row(1, fast),  # 100/s: p99 2 ms
        _row(2, fast), _row(3, fast),  # 200/s
        _row(4, slow), _row(5, fast),  # 300/s: p99 80 ms
        _row(6, fast), _row(7, fast),  # 400/s met again: too late, the capacity is 200/s
        _row(8, fast),  # the run ended early in a step: left out
    ]  # fmt: skip
    section = cap.section(_config("p99=50ms"), rows)
    assert section is not None
    assert [s["rate"] for s in section["steps"]] == [100, 200, 300, 400]
    assert [s["met"] for s in section["steps"]] == [True, True, False, True]
    assert section["rate"] == 200
    assert cap.summary_line(section) == "capacity: 200 calls/s at p99 <= 50 ms"
    with_errors = [_row(0, fast), _row(1, fast, errors=50)]
    judged = cap.section(_config(error_rate=0.1), with_errors)
    assert judged is not None
    assert judged["steps"][0]["error_rate"] == 0.25
    assert judged["rate"] is None
    assert cap.summary_line(judged) == "capacity: no step met errors <= 10.00%"
    # no gate, or not a step schedule: no verdict at all
    assert cap.section(_config(), rows) is None
    uneven = _config("p99=50ms", step=1.5)
    note = cap.section(uneven, rows)
    assert note is not None
    assert note["rate"] is None
    assert "not a whole number" in cap.summary_line(note)
