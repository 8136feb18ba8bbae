"""``greeter load merge`` and ``--start-at``: reports of separate runs merge exactly (to
what one report of all their samples says, and to what ``--procs`` does), mismatched
reports are refused, and runs given the same ``--start-at`` start together."""

from __future__ import annotations

import datetime
import json
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from load_support import load_cli

from greeter.client import Target
from greeter.load import LoadConfig, recorder, schema
from greeter.load.config import parse_start_at
from greeter.load.engine import Recorder
from greeter.load.histogram import bucket_bounds
from greeter.load.merge import Outcome, merge_reports, union_length
from greeter.load.report import EXIT_BAD_ARGS, EXIT_FAILED, build_report

Spawn = Any
T0 = 1_800_000_000.0  # a wall-clock start for the synthetic runs
TICK = 2.0**-20  # seconds: the synthetic runs' clock step


def identity_env(cluster: str, pod: str) -> dict[str, str]:
    return {"GREETER_ACCESS_LOG": "false", "GREETER_CLUSTER_NAME": cluster, "GREETER_POD_NAME": pod}


def start_cli(*args: str) -> subprocess.Popen[str]:
    """``greeter load ARGS`` started in the background, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "greeter", "load", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def merged_json(*args: str, exit_code: int = 0) -> dict[str, Any]:
    result = load_cli("merge", *args, "-O", "json")
    assert result.returncode == exit_code, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    jsonschema.validate(report, schema())
    return report


def summed_buckets(hdrs: list[dict[str, Any]]) -> Counter[int]:
    total: Counter[int] = Counter()
    for hdr in hdrs:
        for index, n in hdr["buckets"]:
            total[index] += n
    return total


def percentile_ms(buckets: Counter[int], percent: float, low: int, high: int) -> float:
    """The report's percentile rule, written out again: the highest value of the bucket
    holding rank ceil(count x percent / 100), clamped to the exact min and max."""
    count = sum(buckets.values())
    rank = max(1, -(-count * percent // 100))
    seen = 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank:
            return round(max(low, min(high, bucket_bounds(index)[1])) / 1000, 3)
    raise AssertionError("rank beyond the count")


# -- exact: separate processes against a real server -------------------------------------
def test_separate_runs_merge_to_the_sum_of_their_samples(
    spawn_server: Spawn, tmp_path: Path
) -> None:
    a = spawn_server(env=identity_env("cluster-a", "pod-a"))
    b = spawn_server(env=identity_env("cluster-b", "pod-b"))
    target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
    common = [target, "--lb-policy", "round_robin", "-c", "4", "--procs", "1", "-O", "json"]
    files = [tmp_path / f"run{i}.json" for i in range(3)]
    runs = [start_cli(*common, "-n", str(200 + 50 * i), "-o", str(f)) for i, f in enumerate(files)]
    for run in runs:
        code, _, err = finish(run)
        assert code == 0, err
    reports = [json.loads(f.read_text()) for f in files]
    for report in reports:
        jsonschema.validate(report, schema())

    # Two of the reports through stdin, one after the other, as `cat *.json |` gives them.
    stdin = "".join(f.read_text() for f in files[1:])
    result = subprocess.run(
        [sys.executable, "-m", "greeter", "load", "merge", str(files[0]), "-", "-O", "json"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)
    jsonschema.validate(merged, schema())

    # Counts: exactly the sums.
    assert merged["merged_from"] == 3
    assert merged["count"] == sum(r["count"] for r in reports) == 750
    assert merged["status_codes"] == dict(
        sum((Counter(r["status_codes"]) for r in reports), Counter())
    )
    assert merged["replies"] == sum(r["replies"] for r in reports)
    for table in ("by_cluster", "by_pod"):
        expected = sum(
            (Counter({k: v["count"] for k, v in r[table].items()}) for r in reports), Counter()
        )
        assert {k: v["count"] for k, v in merged[table].items()} == dict(expected)
    # The histogram: the bucket counts added up by hand, and the percentiles read from them
    # (not averaged), exactly as the report's rule reads them.
    hdr = merged["hdr"]
    buckets = summed_buckets([r["hdr"] for r in reports])
    assert dict(hdr["buckets"]) == dict(buckets)
    assert hdr["count"] == 750
    assert hdr["sum"] == sum(r["hdr"]["sum"] for r in reports)
    assert hdr["min"] == min(r["hdr"]["min"] for r in reports)
    assert hdr["max"] == max(r["hdr"]["max"] for r in reports)
    # The latency split adds up the same way: every reply carried the server's timing.
    assert merged["timed"] == sum(r["timed"] for r in reports) == 750
    for part in ("server", "outside"):
        theirs = summed_buckets([r[f"{part}_hdr"] for r in reports])
        assert dict(merged[f"{part}_hdr"]["buckets"]) == dict(theirs), part
    for p in (50, 90, 95, 99, 99.9):
        assert merged["latency_ms"][f"p{p:g}"] == percentile_ms(buckets, p, hdr["min"], hdr["max"])
    # Per (cluster, pod): the histograms added up too.
    for row in merged["backends"]:
        theirs = [
            b["hdr"]
            for r in reports
            for b in r["backends"]
            if (b["cluster"], b["pod"]) == (row["cluster"], row["pod"])
        ]
        assert dict(row["hdr"]["buckets"]) == dict(summed_buckets(theirs))
    # The timeline still adds up to the totals, and the window covers every run.
    assert sum(b["count"] for b in merged["timeline"]) == 750
    assert merged["started_at"] == min(r["started_at"] for r in reports)
    assert merged["ended_at"] == max(r["ended_at"] for r in reports)
    assert merged["options"]["concurrency"] == 12
    assert merged["options"]["procs"] == 3

    # --procs 3 merges its processes with the same code: the same totals, the same shape.
    procs = load_cli(target, "--lb-policy", "round_robin", "-c", "12", "--procs", "3",
                     "-n", "750", "-O", "json")  # fmt: skip
    assert procs.returncode == 0, procs.stderr
    one_run = json.loads(procs.stdout)
    jsonschema.validate(one_run, schema())
    assert one_run["merged_from"] == 1
    assert one_run["options"]["procs"] == merged["options"]["procs"]
    assert one_run["options"]["concurrency"] == merged["options"]["concurrency"]
    for key in ("count", "ok", "errors", "status_codes"):
        assert one_run[key] == merged[key], key
    assert sum(r["count"] for r in one_run["by_pod"].values()) == 750
    assert set(one_run) | {"starts_apart_s"} == set(merged)  # a merge says how far apart


# -- exact: the merge of parts equals the report of the whole ----------------------------
def recorded(
    samples: list[tuple[int, int, str, str]], interval: float, monkeypatch: pytest.MonkeyPatch
) -> Recorder:
    """A recorder fed ``samples`` (finish time from the run's start and latency, both in
    TICKs, code, pod) through recorder.record, on a clock that reads the samples' times.
    Times in whole TICKs make the clock arithmetic exact, so a sample's latency is the same
    whatever its run's start. pod-3 sends no server-timing; the others say the server took
    a share of each call that depends on the sample alone."""
    rec = Recorder()
    rec.track(0.0, interval)
    for ticks, latency, code, pod in sorted(samples):
        now = ticks * TICK
        monkeypatch.setattr(recorder, "_perf", lambda now=now: now)
        server = -1 if pod == "pod-3" else int(latency * TICK * 1e6) * (latency % 7) // 10
        recorder.record(
            rec, now - latency * TICK, code, f"cluster-{pod[-1]}", pod, "boom", None, server
        )
    rec.close_timeline()
    return rec


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merged_parts_equal_the_report_of_all_samples(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    interval = 0.5
    # Three runs: two from the same moment, one 4 intervals later; their windows overlap,
    # so the union is the whole span.
    windows = [(0, 3.0), (0, 2.5), (4, 3.0)]  # (start in intervals, length in seconds)
    parts, everything = [], []
    for shift, length in windows:
        samples = [
            (
                rng.randrange(int(length / TICK)),
                int(rng.lognormvariate(7, 1.2) * 1e-6 / TICK),
                rng.choice(["OK", "OK", "OK", "UNAVAILABLE"]),
                rng.choice(["pod-1", "pod-2", "pod-3"]),
            )
            for _ in range(rng.randint(50, 400))
        ]
        parts.append((shift, length, samples))
        moved = int(shift * interval / TICK)
        everything += [(ticks + moved, us, code, pod) for ticks, us, code, pod in samples]
    config = LoadConfig(target=Target("127.0.0.1:1"), timeline_interval=interval)
    docs = []
    for i, (shift, length, samples) in enumerate(parts):
        outcome = Outcome(
            recorded(samples, interval, monkeypatch), T0 + shift * interval, length, False
        )
        report = build_report(config, outcome)
        docs.append((f"part{i}", json.loads(report.to_json())))
    span = max(shift * interval + length for shift, length, _ in parts)
    whole_rec = recorded(everything, interval, monkeypatch)
    whole = build_report(config, Outcome(whole_rec, T0, span, False))
    merged = merge_reports(docs, percentiles=config.percentiles)
    jsonschema.validate(merged.data, schema())
    assert merged["merged_from"] == 3
    assert merged["duration_s"] == whole["duration_s"] == span
    for key, value in whole.data.items():
        if key not in ("options", "merged_from"):
            assert merged[key] == value, key
    assert merged["options"]["concurrency"] == 3 * config.concurrency


SPLIT_FIELDS = ("timed", "server_ms", "outside_ms", "server_hdr", "outside_hdr")


def without_split(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as a greeter load from before the latency split wrote it."""
    old = {k: v for k, v in doc.items() if k not in SPLIT_FIELDS}
    old["backends"] = [
        {k: v for k, v in r.items() if k not in SPLIT_FIELDS} for r in doc["backends"]
    ]
    for table in ("by_cluster", "by_pod"):
        old[table] = {
            name: {k: v for k, v in r.items() if k not in SPLIT_FIELDS}
            for name, r in doc[table].items()
        }
    old["timeline"] = [
        {k: v for k, v in row.items() if k not in ("outside_ms", "outside_hdr")}
        for row in doc["timeline"]
    ]
    return old


def test_reports_from_before_the_split_still_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    interval = 0.5
    config = LoadConfig(target=Target("127.0.0.1:1"), timeline_interval=interval)
    docs = []
    for i in range(2):
        samples = [
            (rng.randrange(int(2.0 / TICK)), int(rng.lognormvariate(7, 1) * 1e-6 / TICK), "OK",
             rng.choice(["pod-1", "pod-3"]))
            for _ in range(200)
        ]  # fmt: skip
        outcome = Outcome(recorded(samples, interval, monkeypatch), T0, 2.0, False)
        docs.append((f"part{i}", json.loads(build_report(config, outcome).to_json())))
    new, old = docs[0][1], without_split(docs[1][1])
    jsonschema.validate(old, schema())  # what an older greeter load wrote is still valid
    merged = merge_reports([("new", new), ("old", old)], percentiles=config.percentiles)
    assert merged["count"] == 400
    # The old report's calls count as calls without a server-timing: the split is exactly
    # the new report's.
    assert merged["timed"] == new["timed"] > 0
    for part in ("server", "outside"):
        assert merged[f"{part}_hdr"] == new[f"{part}_hdr"]
        assert merged[f"{part}_ms"] == new[f"{part}_ms"]
    # Neither side told anything: n/a (null), never zeros.
    both_old = merge_reports([("a", old), ("b", without_split(new))])
    assert both_old["timed"] == 0
    assert both_old["server_ms"] is None
    assert both_old["outside_ms"] is None
    assert all(r["server_ms"] is None for r in both_old["by_cluster"].values())
    assert all(row["outside_ms"] == {"p50": None, "p99": None} for row in both_old["timeline"])


def test_the_rate_counts_the_union_of_the_windows() -> None:
    assert union_length([(0, 10), (2, 5), (20, 25)]) == 15
    assert union_length([(0, 1), (1, 2)]) == 2
    assert union_length([(3, 4)]) == 1


# -- refused ---------------------------------------------------------------------------
def test_mismatched_reports_are_refused(spawn_server: Spawn, tmp_path: Path) -> None:
    a = spawn_server(env=identity_env("c", "a"))
    b = spawn_server(env=identity_env("c", "b"))
    common = ["-n", "20", "-c", "2", "--procs", "1", "-O", "json", "-o"]
    made = {
        "base": [a.address],
        "other_target": [b.address],
        "other_call": [a.address, "--call", "Check", "-d", '{"service": ""}'],
        "other_interval": [a.address, "--timeline-interval", "500ms"],
    }
    runs = {
        name: start_cli(*args, *common, str(tmp_path / f"{name}.json"))
        for name, args in made.items()
    }
    for run in runs.values():
        code, _, err = finish(run)
        assert code == 0, err
    base = tmp_path / "base.json"
    report = json.loads(base.read_text())

    def edited(name: str, change: Any) -> Path:
        doc = json.loads(base.read_text())
        change(doc)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        return path

    v2 = edited("v2", lambda d: d.update(schema="greeter-load-report/v2"))
    layout = edited("layout", lambda d: d["hdr"].update(sub_bucket_bits=8))
    old = edited("old", lambda d: d.pop("backends"))
    cases = [
        (tmp_path / "other_target.json", ["target differs", a.address, b.address]),
        (tmp_path / "other_call.json", ["call differs", "SayHello", "Check"]),
        (tmp_path / "other_interval.json", ["timeline interval differs", "1 s", "0.5 s"]),
        (v2, ["schema", "greeter-load-report/v2"]),
        (layout, ["histogram layout differs", "8"]),
        (old, ["no per-backend histograms", "old.json"]),
    ]
    for other, words in cases:
        result = load_cli("merge", str(base), str(other))
        assert result.returncode == EXIT_BAD_ARGS, (other, result.stderr)
        for word in words:
            assert word in result.stderr, (word, result.stderr)
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
    # The same report twice (by two names, or twice on stdin) would count its calls twice.
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps(report, indent=1))  # another layout, the same report
    twice = (
        ([str(base), str(copy)], None),
        ([str(base), str(base)], None),
        (["-"], base.read_text() * 2),
    )
    for args, stdin in twice:
        result = load_cli("merge", *args, stdin=stdin)
        assert result.returncode == EXIT_BAD_ARGS, result.stderr
        assert "the same report as" in result.stderr
        assert "each run counts once" in result.stderr
        assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["nope.json"], ["cannot read nope.json"]),
        (["-"], ["stdin: no report"]),
        ([], ["FILE"]),
        (["--max-latency", "p99"], ["FILE"]),  # p99 is the flag's value: no file given
        (["nope.json", "--max-latency", "p99"], ["--max-latency: 'p99' must look like"]),
    ],
)
def test_bad_merge_arguments_exit_2(args: list[str], words: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "greeter", "load", "merge", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == EXIT_BAD_ARGS, result.stderr
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr


def test_merge_is_a_command_not_an_address(tmp_path: Path) -> None:
    help_text = load_cli("merge", "--help")
    assert help_text.returncode == 0
    assert "usage: greeter load merge" in help_text.stdout
    assert "FILE" in help_text.stdout
    assert "greeter load merge" in load_cli("--help").stdout
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    bad = load_cli("merge", str(junk))
    assert bad.returncode == EXIT_BAD_ARGS
    assert "junk.json: not JSON" in bad.stderr
    # 'merge' after flags is still the command (tests/test_cli_help.py: a run's flag there).
    late = load_cli("-q", "merge")
    assert late.returncode == EXIT_BAD_ARGS
    assert "greeter load merge: error: the following arguments are required: FILE" in late.stderr


# -- formats and gates ---------------------------------------------------------------------
def test_merged_formats_and_gates(spawn_server: Spawn, tmp_path: Path) -> None:
    srv = spawn_server(env=identity_env("east", "east-1"))
    files = [str(tmp_path / f"{i}.json") for i in range(2)]
    # One after the other, each with +0.2s: a relative --start-at counts from each run's own
    # launch, so these did not start together, and the merge must not say they did.
    for f in files:
        run = [srv.address, "-n", "60", "-c", "3", "--procs", "1", "--start-at", "+0.2s"]
        result = load_cli(*run, "-O", "json", "-o", f)
        assert result.returncode == 0, result.stderr
        notice = r"--start-at \+0.2s is (\S+); to start other runs together with this one, "
        assert re.search(notice + r"give them --start-at \1", result.stderr), result.stderr
    reports = [json.loads(Path(f).read_text()) for f in files]
    starts = [datetime.datetime.fromisoformat(r["started_at"]) for r in reports]
    apart = (starts[1] - starts[0]).total_seconds()
    assert apart > 0.2  # the second run was launched after the first had ended
    page = tmp_path / "merged.html"
    text = load_cli("-q", "merge", *files, "--html", str(page), "--expect-cluster", "east")
    assert text.returncode == 0, text.stderr
    assert f"Starts:\t{apart:.3f} s apart (first run to last)" in text.stdout
    assert "the runs had different --start-at times" in text.stdout
    assert "s late" not in text.stdout
    assert f"warning: the runs' measured starts were {apart:.3f} s apart" in text.stderr
    assert "Merged:\t2 runs" in text.stdout
    assert "Count:\t\t120" in text.stdout
    assert "merged from 2 runs" in page.read_text()
    csv_out = load_cli("merge", *files, "-O", "csv")
    assert csv_out.stdout.splitlines()[1].startswith(f"total,{srv.address},120,")
    off = load_cli("merge", *files, "--expect-cluster", "west", "--max-latency", "p50=0.001ms")
    assert off.returncode == EXIT_FAILED
    assert "greeter load merge: FAILED: latency p50" in off.stderr
    assert "west" in off.stderr
    assert merged_json(*files, "--max-error-rate", "0")["passed"] is True


# -- --start-at ------------------------------------------------------------------------------
def test_runs_given_the_same_start_at_start_together(spawn_server: Spawn, tmp_path: Path) -> None:
    srv = spawn_server(env=identity_env("east", "east-1"))
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=8)
    stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    files = [tmp_path / "first.json", tmp_path / "second.json"]
    args = [
        srv.address,
        "-z",
        "1s",
        "--rps",
        "50",
        "--procs",
        "1",
        "--start-at",
        stamp,
        "-O",
        "json",
    ]
    first = start_cli(*args, "-o", str(files[0]))
    time.sleep(2)  # started 2 s apart: only --start-at can bring them together
    second = start_cli(*args, "-o", str(files[1]))
    for run in (first, second):
        code, _, err = finish(run)
        assert code == 0, err
        assert "warning" not in err
    reports = [json.loads(f.read_text()) for f in files]
    starts = [datetime.datetime.fromisoformat(r["started_at"]) for r in reports]
    assert abs((starts[0] - starts[1]).total_seconds()) < 0.5
    for report, start in zip(reports, starts, strict=True):
        assert report["options"]["start_at"].startswith(stamp[:19])
        assert abs((start - at).total_seconds()) < 0.5
        assert abs(report["start_lag_s"]) < 0.5
        # Every call due in the second is made (none dropped at the end).
        assert 45 <= report["count"] <= 50
    # Two runs at --rps 50 over the same second: twice the rate together.
    merged = merged_json(*map(str, files))
    assert merged["count"] == sum(r["count"] for r in reports)
    assert merged["duration_s"] < max(r["duration_s"] for r in reports) + 0.5
    assert merged["options"]["rps"] == 100
    assert merged["options"]["start_at"] == reports[0]["options"]["start_at"]
    assert merged["starts_apart_s"] < 0.5
    text = load_cli("merge", *map(str, files))
    assert "warning" not in text.stderr or merged["starts_apart_s"] > 0.1, text.stderr
    assert f"Starts:\t{merged['starts_apart_s']:.3f} s apart" in text.stdout
    assert re.search(r"\(--start-at; the latest run \d+\.\d{3} s late\)", text.stdout)


def test_a_start_at_in_the_past_starts_late_and_says_so(spawn_server: Spawn) -> None:
    srv = spawn_server()
    result = load_cli(srv.address, "-n", "10", "-c", "2", "--procs", "1",
                      "--start-at", "2020-01-01T00:00:00Z", "-O", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning: --start-at 2020-01-01T00:00:00" in result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, schema())
    assert report["start_lag_s"] > 365 * 24 * 3600
    assert report["count"] == 10


@pytest.mark.parametrize(
    "value", ["tomorrow", "2026-05-01T12:00:00", "2026-13-01T00:00:00Z", "+-5s", "+48h", "+soon"]
)
def test_a_malformed_start_at_exits_2_naming_the_flag(value: str) -> None:
    result = load_cli("127.0.0.1:1", "-n", "1", "--start-at", value)
    assert result.returncode == EXIT_BAD_ARGS
    assert "--start-at" in result.stderr
    assert "Traceback" not in result.stderr


def test_start_at_forms() -> None:
    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert parse_start_at("+30s", now) == now + 30
    assert parse_start_at("+1m30s", now) == now + 90
    assert parse_start_at("2027-01-15T08:00:00Z", now) == now
    assert parse_start_at("2027-01-15T10:00:00+02:00", now) == now
    assert parse_start_at("2027-01-15t08:00:00.250z", now) == now + 0.25
    assert parse_start_at("2020-01-01T00:00:00Z", now) < now  # late: accepted
    with pytest.raises(ValueError, match="24 h"):
        parse_start_at("2027-01-17T08:00:00Z", now)
