"""``greeter load``'s timeline against real servers on 127.0.0.1: present on every run,
buckets ``interval`` apart that add up exactly to the totals (both engines, one process
and ``--procs 2``, two clusters), errors in the buckets where the calls finished, the
timeline CSV and the HTML chart."""

from __future__ import annotations

import csv
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from load_support import load_cli

from conftest import free_port
from greeter.load import schema, timeline
from greeter.load.report import EXIT_BAD_ARGS, EXIT_FAILED
from greeter.load.timeline import Bucket, Timeline

Spawn = Any


def identity_env(cluster: str, pod: str, **extra: str) -> dict[str, str]:
    return {"GREETER_ACCESS_LOG": "false", "GREETER_CLUSTER_NAME": cluster,
            "GREETER_POD_NAME": pod, **extra}  # fmt: skip


def run_json(*args: str, exit_code: int = 0) -> dict[str, Any]:
    result = load_cli(*args, "-O", "json")
    assert result.returncode == exit_code, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    jsonschema.validate(report, schema())
    return report


def summed(timeline: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for bucket in timeline:
        for name, n in bucket[key].items():
            total[name] = total.get(name, 0) + n
    return total


def assert_adds_up(report: dict[str, Any], interval: float) -> None:
    """The timeline's shape, and its buckets summing exactly to the report's totals."""
    timeline = report["timeline"]
    assert report["options"]["timeline_interval_s"] == interval
    assert len(timeline) == max(1, math.ceil(report["duration_s"] / interval - 1e-6))
    for index, bucket in enumerate(timeline):
        assert bucket["t"] == pytest.approx(index * interval)
        assert 0 < bucket["duration_s"] <= interval + 1e-9
        assert bucket["count"] == sum(bucket["status_codes"].values())
        assert bucket["count"] == sum(bucket["by_cluster"].values())
        assert bucket["count"] == sum(bucket["by_pod"].values())
        assert bucket["errors"] == bucket["count"] - bucket["status_codes"].get("OK", 0)
        lat = bucket["latency_ms"]
        if bucket["count"]:
            assert 0 < lat["p50"] <= lat["p99"] <= report["latency_ms"]["max"] * 1.002
        else:
            assert lat == {"p50": None, "p99": None}
    assert sum(b["count"] for b in timeline) == report["count"]
    assert sum(b["errors"] for b in timeline) == report["errors"]
    assert summed(timeline, "status_codes") == report["status_codes"]
    assert summed(timeline, "by_cluster") == {
        k: v["count"] for k, v in report["by_cluster"].items()
    }
    assert summed(timeline, "by_pod") == {k: v["count"] for k, v in report["by_pod"].items()}


@pytest.mark.parametrize("procs", ["1", "2"])
@pytest.mark.parametrize("engine", ["grpc", "h2"])
def test_buckets_add_up_to_the_totals(spawn_server: Spawn, engine: str, procs: str) -> None:
    # A fifth of the calls fail (the server injects UNAVAILABLE at random).
    srv = spawn_server(
        env=identity_env(
            "c1", "p1", GREETER_FAULT_ENABLED="true", GREETER_FAULT_STATUS_PERCENT="20"
        )
    )
    report = run_json(
        srv.address, "-z", "2s", "--rps", "200", "-c", "8", "--procs", procs,
        "--connections", procs, "--engine", engine, "--timeline-interval", "500ms",
        "--max-error-rate", "0.9",
    )  # fmt: skip
    assert report["options"]["engine"] == engine
    assert report["options"]["procs"] == int(procs)
    assert len(report["timeline"]) == 4
    assert_adds_up(report, 0.5)
    assert report["errors"] > 0
    assert set(report["status_codes"]) == {"OK", "UNAVAILABLE"}
    # A bucket with tens of calls at 20 % faults has errors (all but impossible otherwise).
    busy = [b for b in report["timeline"] if b["count"] >= 40]
    assert busy
    assert all(b["errors"] > 0 for b in busy)


def test_two_clusters_over_two_processes(spawn_server: Spawn) -> None:
    a = spawn_server(env=identity_env("cluster-a", "pod-a"))
    b = spawn_server(env=identity_env("cluster-b", "pod-b"))
    report = run_json(
        f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}", "--lb-policy", "round_robin",
        "-n", "600", "-c", "6", "--procs", "2", "--timeline-interval", "100ms",
    )  # fmt: skip
    assert report["count"] == 600
    assert_adds_up(report, 0.1)
    assert set(summed(report["timeline"], "by_cluster")) == {"cluster-a", "cluster-b"}


@pytest.mark.parametrize("engine", ["grpc", "h2"])
def test_errors_land_in_the_buckets_where_the_calls_finished(
    spawn_server: Spawn, engine: str, tmp_path: Path
) -> None:
    srv = spawn_server(env=identity_env("c1", "p1", GREETER_FAULT_ENABLED="true"))
    page, rows = tmp_path / "report.html", tmp_path / "timeline.csv"
    # Every call is held 600 ms, then fails: nothing can finish in the first 0.5 s.
    report = run_json(
        srv.address, "-n", "8", "-c", "4", "--procs", "1", "--engine", engine,
        "-m", "x-greeter-fault-delay-ms:600", "-m", "x-greeter-fault-status:UNAVAILABLE",
        "--timeline-interval", "250ms", "--html", str(page),
        "--timeline-csv", str(rows), exit_code=EXIT_FAILED,  # no call succeeded
    )  # fmt: skip
    assert report["status_codes"] == {"UNAVAILABLE": 8}
    assert_adds_up(report, 0.25)
    timeline = report["timeline"]
    assert len(timeline) >= 3  # at least 1.2 s: two rounds of 600 ms
    assert timeline[0]["count"] == timeline[1]["count"] == 0
    failed = [b for b in timeline if b["errors"]]
    assert failed
    assert all(b["t"] >= 0.5 for b in failed)
    assert all(b["status_codes"] == {"UNAVAILABLE": b["count"]} for b in failed)
    assert all(b["latency_ms"]["p50"] >= 600 for b in failed)

    # The CSV: one row per bucket, the same numbers.
    table = list(csv.DictReader(io.StringIO(rows.read_text())))
    assert len(table) == len(timeline)
    for row, bucket in zip(table, timeline, strict=True):
        assert float(row["t"]) == pytest.approx(bucket["t"])
        assert int(row["count"]) == bucket["count"]
        assert int(row["errors"]) == bucket["errors"]
        assert int(row["status:UNAVAILABLE"]) == bucket["status_codes"].get("UNAVAILABLE", 0)
        assert int(row["cluster:c1"]) == bucket["by_cluster"].get("c1", 0)
        assert int(row["pod:p1"]) == bucket["by_pod"].get("p1", 0)
        assert row["p99_ms"] == ("" if bucket["count"] == 0 else str(bucket["latency_ms"]["p99"]))
        outside = bucket["outside_ms"]["p99"]
        assert row["outside_p99_ms"] == ("" if outside is None else str(outside))

    # The HTML: the timeline chart, with the cluster's area, both latency lines and an error
    # mark for each failed bucket, and still no scripts.
    chart = TimelineChart()
    chart.feed(page.read_text())
    assert chart.found
    assert chart.clusters == ["c1"]
    # The refusals carried the server's timing (the 600 ms delay is the server's): the
    # latency outside the server gets its own two lines.
    assert chart.series == ["p50", "p99", "outside p50", "outside p99"]
    assert chart.error_marks == len(failed)
    assert "<script" not in page.read_text()


class TimelineChart(HTMLParser):
    """What the report's timeline <svg> draws."""

    def __init__(self) -> None:
        super().__init__()
        self.found = False
        self.inside = False
        self.clusters: list[str] = []
        self.series: list[str] = []
        self.error_marks = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and a.get("aria-label") == "timeline":
            self.found = self.inside = True
        if not self.inside:
            return
        if tag == "path" and a.get("class") == "cluster" and a.get("d"):
            self.clusters.append(a.get("data-cluster") or "")
        if tag == "path" and a.get("class") == "latency" and a.get("d"):
            self.series.append(a.get("data-series") or "")
        if tag == "g" and a.get("class") == "errors":
            self.error_marks += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.inside = False


def test_the_shortest_run_has_a_timeline_too(spawn_server: Spawn) -> None:
    srv = spawn_server(env=identity_env("c1", "p1"))
    report = run_json(srv.address, "-n", "1", "-c", "1", "--procs", "1")
    assert report["options"]["timeline_interval_s"] == 1.0  # the default
    assert len(report["timeline"]) == 1
    assert_adds_up(report, 1.0)


@pytest.mark.parametrize(
    ("span", "rows", "last"),
    [
        (2.0, 4, 0.5),
        # --procs 2 started a few µs apart: the sliver past the end joins the last bucket
        (2.000001, 4, 0.5),
        (2.004, 4, 0.5),
        (2.3, 5, 0.3),  # runs merged from starts 0.3 s apart: a real fifth bucket
        (0.2, 1, 0.2),
    ],
)
def test_a_span_a_hair_past_the_intervals_makes_no_sliver_bucket(
    span: float, rows: int, last: float
) -> None:
    recorded = Timeline(0.0, 0.5)
    # one call finished in each whole interval of the span, and one in the part past them
    wanted = math.ceil(span / 0.5 - 1e-9)
    recorded.buckets = [Bucket(status={"OK": 1}) for _ in range(wanted)]
    got = timeline.report(recorded, span, 0.5)
    assert len(got) == rows
    assert got[-1]["duration_s"] == last
    assert sum(row["count"] for row in got) == wanted
    assert sum(row["duration_s"] for row in got) == pytest.approx(min(span, rows * 0.5))


@pytest.mark.parametrize("value", ["0", "5ms", "-1s", "soon", "nan"])
def test_a_bad_interval_exits_2_naming_the_flag(value: str) -> None:
    port = free_port()  # nothing listens: caught before connecting
    result = load_cli(f"127.0.0.1:{port}", "--connect-timeout", "1", f"--timeline-interval={value}")
    assert result.returncode == EXIT_BAD_ARGS, result.stderr
    assert "--timeline-interval" in result.stderr
    assert "Traceback" not in result.stderr
