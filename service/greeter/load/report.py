"""The report: one JSON-ready dictionary (documented by ``report.schema.json``) built
from the merged counters, plus the CI verdict (thresholds and exit code)."""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from greeter.client import EXIT_BAD_ARGS as EXIT_BAD_ARGS
from greeter.client import EXIT_CONNECT as EXIT_CONNECT
from greeter.client import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from greeter.load import capacity, split, timeline
from greeter.load.config import LoadConfig, percentile_name
from greeter.load.engine import resolved_engine
from greeter.load.histogram import Histogram, bucket_bounds
from greeter.load.outcome import Outcome

SCHEMA_ID = "greeter-load-report/v1"
# The client commands' one exit-code table (greeter.client.EXIT_CODES). EXIT_FAILED: a
# threshold was missed, --max-error-rate exceeded, the split is off or undecided
# (--expect-split, --expect-cluster), or no call succeeded; EXIT_INTERRUPTED: Ctrl-C, the
# partial report is printed first.
CHART_BARS = 20
# A call slower than this is a "slow call" (hung on a silent backend, retried late): the
# report counts them and names the slowest, so a call that waited out its deadline shows.
SLOW_CALL_MS = 1000.0


def schema() -> dict[str, Any]:
    """The JSON schema of :attr:`Report.data`."""
    text = resources.files("greeter.load").joinpath("report.schema.json").read_text()
    return dict(json.loads(text))


def _ms(us: float) -> float:
    return round(us / 1000, 3)


def latency_stats(hist: Histogram, percentiles: tuple[float, ...]) -> dict[str, float]:
    stats = {"min": _ms(hist.min), "mean": _ms(hist.mean), "max": _ms(hist.max)}
    for p in percentiles:
        stats[percentile_name(p)] = _ms(hist.percentile(p))
    return stats


# The latency split: ``server_ms`` (the replies' server-timing) and ``outside_ms`` (total
# minus server: network, gateways, client), of the ``timed`` calls, whose reply had one.
SPLIT_PARTS = ("server", "outside")


def split_stats(
    server: Histogram, outside: Histogram, percentiles: tuple[float, ...]
) -> dict[str, Any]:
    """``timed``, ``server_ms`` and ``outside_ms`` (null, "n/a", when no reply had it)."""
    timed = server.count
    return {
        "timed": timed,
        "server_ms": latency_stats(server, percentiles) if timed else None,
        "outside_ms": latency_stats(outside, percentiles) if timed else None,
    }


def slow_calls(hist: Histogram) -> dict[str, Any]:
    """Calls slower than SLOW_CALL_MS (counted to the histogram's precision: the buckets
    that start above it) and the slowest one."""
    over_us = SLOW_CALL_MS * 1000
    count = sum(n for index, n in hist.buckets() if bucket_bounds(index)[0] > over_us)
    return {"over_ms": SLOW_CALL_MS, "count": count, "slowest_ms": _ms(hist.max)}


def histogram_bars(hist: Histogram, bars: int = CHART_BARS) -> list[dict[str, Any]]:
    """Up to ``bars`` ranges between min and max, log-spaced (latency tails are long),
    each with its count; every recorded value falls in exactly one range."""
    if not hist.count:
        return []
    low, high = max(hist.min, 1), max(hist.max, 1)
    if high <= low:
        return [{"from_ms": _ms(hist.min), "to_ms": _ms(hist.max), "count": hist.count}]
    ratio = (high / low) ** (1 / bars)
    edges = [low * ratio**i for i in range(bars)] + [float(high)]
    slices = [0] * bars
    for index, n in hist.buckets():
        # A bucket's values are within 0.2% of each other: place it by its midpoint.
        lo, hi = bucket_bounds(index)
        mid = min(max((lo + hi) / 2, low), high)
        slot = min(bars - 1, int(math.log(mid / low) / math.log(ratio)))
        slices[slot] += n
    return [
        {"from_ms": _ms(hist.min if i == 0 else edges[i]), "to_ms": _ms(edges[i + 1]), "count": n}
        for i, n in enumerate(slices)
    ]


@dataclass
class Report:
    data: dict[str, Any]
    failures: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.data["interrupted"]:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failures else EXIT_OK

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=False)


@dataclass
class Group:
    """The calls one cluster (or one pod) served."""

    hist: Histogram
    errors: int
    cluster: str | None  # pods: the cluster they are in
    server: Histogram = field(default_factory=Histogram)
    outside: Histogram = field(default_factory=Histogram)


def _backend_table(
    groups: dict[str, Group], total: int, percentiles: tuple[float, ...]
) -> dict[str, dict[str, Any]]:
    table = {}
    for name, g in sorted(groups.items(), key=lambda kv: (-kv[1].hist.count, kv[0])):
        row: dict[str, Any] = {
            "count": g.hist.count,
            "share": round(g.hist.count / total, 6) if total else 0.0,
            "errors": g.errors,
            "latency_ms": latency_stats(g.hist, percentiles),
            **split_stats(g.server, g.outside, percentiles),
        }
        if g.cluster is not None:
            row["cluster"] = g.cluster
        table[name] = row
    return table


def wall_time(seconds: float) -> str:
    """Unix seconds as ISO 8601 UTC, to the microsecond."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="microseconds")


def options_of(config: LoadConfig) -> dict[str, Any]:
    """The report's ``options``: what ran."""
    target = config.target
    return {
        "concurrency": config.concurrency,
        "connections": config.connections,
        "procs": config.procs,
        "total": config.total,
        "duration_s": config.duration,
        "rps": config.rps,
        "load_schedule": config.schedule,
        "warmup_s": config.warmup,
        "timeout_s": config.timeout,
        "tls": target.secure,
        "authority": target.authority or None,
        "lb_policy": target.lb_policy or None,
        "metadata_keys": sorted({k for k, _ in target.metadata}),
        "engine": resolved_engine(config),
        "timeline_interval_s": config.timeline_interval,
        "start_at": None if config.start_at is None else wall_time(config.start_at),
        "trace_sample": config.trace_sample,
    }


def build_report(
    config: LoadConfig, outcome: Outcome, options: dict[str, Any] | None = None
) -> Report:
    """The report of what ``outcome`` measured, judged by ``config``'s gates; ``options``
    (a merge: the inputs' combined) stands for ``config``'s."""
    rec = outcome.recorder
    duration = outcome.duration
    span = duration if outcome.span is None else outcome.span
    hist = rec.hist
    count = hist.count
    ok = rec.status.get("OK", 0)
    errors = count - ok
    percentiles = tuple(sorted(set(config.percentiles)))
    clusters: dict[str, Group] = {}
    pods: dict[str, Group] = {}
    for (cluster, pod), backend in rec.backends.items():
        for groups, name, of in ((clusters, cluster, None), (pods, pod, cluster)):
            group = groups.setdefault(name, Group(Histogram(), 0, of))
            group.hist.merge(backend.hist)
            group.errors += backend.errors
            group.server.merge(backend.server)
            group.outside.merge(backend.outside)
    data: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "target": config.target.address,
        "call": config.call,
        "started_at": wall_time(outcome.started),
        "ended_at": wall_time(outcome.started + span),
        "start_lag_s": None if outcome.start_lag is None else round(outcome.start_lag, 6),
        "merged_from": outcome.merged_from,
        "options": options_of(config) if options is None else options,
        "interrupted": outcome.interrupted,
        "count": count,
        "ok": ok,
        "errors": errors,
        "error_rate": round(errors / count, 6) if count else 0.0,
        "duration_s": round(duration, 6),
        "rps": round(count / duration, 3) if duration > 0 else 0.0,
        "goodput": round(ok / duration, 3) if duration > 0 else 0.0,
        "replies": rec.replies,
        "latency_ms": latency_stats(hist, percentiles),
        "ok_latency_ms": latency_stats(rec.ok, percentiles) if rec.ok.count else None,
        "failed_latency_ms": latency_stats(rec.failed, percentiles) if rec.failed.count else None,
        "slow_calls": slow_calls(hist),
        **split_stats(rec.server, rec.outside, percentiles),
        "histogram": histogram_bars(hist),
        "status_codes": dict(sorted(rec.status.items(), key=lambda kv: -kv[1])),
        "error_messages": dict(sorted(rec.messages.items(), key=lambda kv: -kv[1])),
        "by_cluster": _backend_table(clusters, count, percentiles),
        "by_pod": _backend_table(pods, count, percentiles),
        "hdr": hist.to_dict(),
        "server_hdr": rec.server.to_dict(),
        "outside_hdr": rec.outside.to_dict(),
        "ok_hdr": rec.ok.to_dict(),
        "failed_hdr": rec.failed.to_dict(),
        "backends": [
            {
                "cluster": cluster,
                "pod": pod,
                "errors": b.errors,
                "hdr": b.hist.to_dict(),
                "server_hdr": b.server.to_dict(),
                "outside_hdr": b.outside.to_dict(),
            }
            for (cluster, pod), b in sorted(rec.backends.items())
        ],
        "timeline": timeline.report(rec.timeline, span, config.timeline_interval),
    }
    found = capacity.section(config, data["timeline"])
    if found is not None:
        data["capacity"] = found
    if rec.sampled.count:
        data["traces"] = rec.sampled.to_report()
    report = Report(data)
    data["thresholds"] = _check(config, report)
    data["passed"] = not report.failures
    return report


def _check(config: LoadConfig, report: Report) -> list[dict[str, Any]]:
    """Apply --max-error-rate and the latency bounds; failures go to ``report.failures``."""
    data = report.data
    checks: list[dict[str, Any]] = []
    if data["count"] and not data["ok"]:
        report.failures.append(
            f"no call succeeded ({data['count']} failed; first: {_top_error(data)})"
        )
    if config.max_error_rate is not None:
        passed = data["error_rate"] <= config.max_error_rate
        checks.append(
            {
                "name": "error_rate",
                "limit": config.max_error_rate,
                "value": data["error_rate"],
                "passed": passed,
            }
        )
        if not passed:
            report.failures.append(
                f"error rate {data['error_rate']:.2%} exceeds --max-error-rate "
                f"{config.max_error_rate:.2%}"
            )
    for t in config.thresholds:
        value = _stat(data, t.scope, t.stat)
        name = "latency_" + t.name.replace(".", "_")  # latency_p99, latency_outside_p99
        passed = bool(data["count"]) and value is not None and value <= t.limit_ms
        checks.append({"name": name, "limit": t.limit_ms, "value": value, "passed": passed})
        if value is None:
            report.failures.append(
                f"latency {t.name} is n/a: no reply carried a server-timing trailer "
                f"(a server that does not send it, or one run with --no-server-timing)"
            )
        elif not passed:
            report.failures.append(f"latency {t.name} {value:g} ms exceeds {t.limit_ms:g} ms")
    checks.extend(_check_split(config, report))
    return checks


def _stat(data: dict[str, Any], scope: str, stat: str) -> float | None:
    """``stat`` (``p99``, ``mean``...) of the total latency, or of its ``server`` or
    ``outside`` part (None when no reply carried a server-timing)."""
    key, hdr = ("latency_ms", "hdr") if scope == "total" else (f"{scope}_ms", f"{scope}_hdr")
    stats = data[key]
    if stats is None:
        return None
    if stat in stats:
        return float(stats[stat])
    return _ms(Histogram.from_dict(data[hdr]).percentile(float(stat[1:])))


def _check_split(config: LoadConfig, report: Report) -> list[dict[str, Any]]:
    """--expect-split / --expect-cluster: the report's ``split`` section, and its entry
    among the thresholds (``split``: the smallest corrected p-value, which must be at
    least 1 - confidence; ``cluster``: the share of successful calls the named cluster
    served, which must be 1)."""
    gate = split.check(config, report.data)
    if gate is None:
        return []
    section, failure = gate
    report.data["split"] = section
    if failure is not None:
        report.failures.append(failure)
    if section["kind"] == "cluster":
        limit, value = 1.0, section["clusters"][0]["share"]
    else:
        limit, value = round(1.0 - config.split_confidence, 12), section["p_value"]
    entry = {"name": section["kind"], "limit": limit, "value": value, "passed": failure is None}
    return [{**entry, "op": ">="}]


def _top_error(data: dict[str, Any]) -> str:
    messages = data["error_messages"]
    return next(iter(messages)) if messages else "unknown"
