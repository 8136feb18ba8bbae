"""Merging measurements exactly, in one place: the worker processes of a ``--procs`` run
and ``greeter load merge`` (the ``-O json`` reports of separate runs, on one machine or
many) both go through :func:`combine`.

What adds up exactly: the latency histograms (the HDR bucket counts, with their exact min,
max and sum), the status codes, error messages and replies, every (cluster, pod)'s
histogram and errors, and the timelines, bucket by bucket. Percentiles are then read from
the merged histogram, never averaged. Runs are placed on the wall clock: each timeline is
shifted by its start relative to the earliest start, rounded to whole intervals (runs
started with the same ``--start-at`` line up exactly); the rate is the calls over the
union of the runs' time windows (a gap between runs does not count).

A JSON report carries what this needs (``hdr``, ``backends``, the timeline rows' raw
``hdr`` and ``backends``, ``started_at`` and ``ended_at`` to the microsecond);
:func:`merge_reports` refuses reports that do not measure the same thing: another
target, call, schema or histogram layout, or another timeline interval.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from greeter.client import Target
from greeter.load.config import LoadConfig
from greeter.load.histogram import SUB_BITS, Histogram
from greeter.load.outcome import Outcome, combine, union_length
from greeter.load.recorder import Backend, Recorder
from greeter.load.report import SCHEMA_ID, Report, build_report
from greeter.load.sampled import Sampled
from greeter.load.timeline import MIN_INTERVAL, Timeline

# Outcome, combine and union_length live in greeter.load.outcome; importable from here.
__all__ = ["MergeError", "Outcome", "combine", "merge_reports", "read_reports", "union_length"]

MAX_TIMELINE_BUCKETS = 1_000_000  # a merged timeline longer than this is refused
SUMMED_OPTIONS = ("concurrency", "connections", "procs")
SUMMED_OR_NULL_OPTIONS = ("total", "rps")  # null as soon as one report has none


class MergeError(ValueError):
    """Reports that cannot be merged, or an input that is not a report (exit 2)."""


# -- reports --------------------------------------------------------------------------
def read_reports(sources: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """The JSON documents in each file (``-``: standard input), one or more per source,
    each named for messages (``a.json``, ``stdin#2``)."""
    docs: list[tuple[str, dict[str, Any]]] = []
    for source in sources:
        name = "stdin" if source == "-" else source
        try:
            text = sys.stdin.read() if source == "-" else _read(source)
        except OSError as exc:
            raise MergeError(f"cannot read {source}: {exc.strerror or exc}") from None
        found = list(_documents(text, name))
        if not found:
            raise MergeError(f"{name}: no report in it")
        for index, doc in enumerate(found, 1):
            docs.append((f"{name}#{index}" if len(found) > 1 else name, doc))
    return docs


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _documents(text: str, name: str) -> Iterable[dict[str, Any]]:
    """Whitespace-separated JSON objects (``cat *.json |`` or a file of several)."""
    decoder = json.JSONDecoder()
    at = 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return
        try:
            doc, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise MergeError(f"{name}: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise MergeError(f"{name}: not a greeter load report (a JSON object)")
        yield doc


def _identity(doc: dict[str, Any]) -> dict[str, Any]:
    """What must be equal in reports that merge, by the name the refusal gives it."""
    options = doc["options"]
    return {
        "target": (doc["target"], bool(options["tls"]), options["authority"] or ""),
        "call": doc["call"],
        "histogram layout": (doc["hdr"]["unit"], doc["hdr"]["sub_bucket_bits"]),
        "timeline interval": float(options["timeline_interval_s"]),
    }


def _describe(what: str, value: Any) -> str:
    if what == "target":
        address, tls, authority = value
        return f"{address}" + (" (TLS)" if tls else "") + (f" as {authority}" if authority else "")
    if what == "histogram layout":
        return f"{value[1]} sub-bucket bits in {value[0]}"
    if what == "timeline interval":
        return f"{value:g} s"
    return str(value)


def check(docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Refuse reports that cannot merge: not reports of this schema, without the data a
    merge needs, or measuring something else than the first one."""
    if not docs:
        raise MergeError("no report to merge")
    first_name = docs[0][0]
    expected: dict[str, Any] = {}
    seen: dict[bytes, str] = {}  # each document's digest: the name it came as
    for name, doc in docs:
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).digest()
        if digest in seen:
            raise MergeError(
                f"{name} is the same report as {seen[digest]} (given twice?): each run counts once"
            )
        seen[digest] = name
        schema = doc.get("schema")
        if schema != SCHEMA_ID:
            raise MergeError(
                f"{name}: schema {schema!r} differs from {SCHEMA_ID!r}: "
                "only reports of the same schema version merge"
            )
        try:
            identity = _identity(doc)
            mergeable = "backends" in doc and all("hdr" in row for row in doc["timeline"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MergeError(f"{name}: not a complete greeter load report ({exc!r})") from None
        if not mergeable:
            raise MergeError(
                f"{name}: has no per-backend histograms (written by an older greeter load?): "
                "rerun it with this version to merge it"
            )
        layout = identity["histogram layout"]
        if layout != ("us", SUB_BITS):
            raise MergeError(
                f"{name}: histogram layout differs ({_describe('histogram layout', layout)}; "
                f"this greeter load uses {SUB_BITS} in us)"
            )
        if not expected:
            expected = identity
            continue
        for what, value in identity.items():
            if value != expected[what]:
                raise MergeError(
                    f"{what} differs: {first_name} has {_describe(what, expected[what])}, "
                    f"{name} has {_describe(what, value)}; reports of different "
                    f"{what}s do not merge"
                )


def _epoch(text: str) -> float:
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def outcome_of(name: str, doc: dict[str, Any]) -> Outcome:
    """A checked report, back to what its run measured."""
    try:
        rec = Recorder()
        rec.hist = Histogram.from_dict(doc["hdr"])
        rec.server, rec.outside = _split_of(doc)
        if "ok_hdr" in doc:  # a report from before has no latency of OK calls apart
            rec.ok = Histogram.from_dict(doc["ok_hdr"])
            rec.failed = Histogram.from_dict(doc["failed_hdr"])
        rec.status = {str(k): int(v) for k, v in doc["status_codes"].items()}
        rec.messages = {str(k): int(v) for k, v in doc["error_messages"].items()}
        rec.replies = int(doc["replies"])
        for row in doc["backends"]:
            backend = Backend(Histogram.from_dict(row["hdr"]), int(row["errors"]), *_split_of(row))
            rec.backends[(str(row["cluster"]), str(row["pod"]))] = backend
        interval = float(doc["options"]["timeline_interval_s"])
        rec.timeline = Timeline.from_report(doc["timeline"], interval)
        rec.sampled = Sampled.from_report(doc.get("traces"))
        started = _epoch(doc["started_at"])
        ended = _epoch(doc["ended_at"]) if "ended_at" in doc else started + doc["duration_s"]
        lag = doc.get("start_lag_s")
        return Outcome(
            recorder=rec,
            started=started,
            duration=float(doc["duration_s"]),
            interrupted=bool(doc["interrupted"]),
            span=max(ended - started, 0.0),
            start_lag=None if lag is None else float(lag),
            merged_from=int(doc.get("merged_from", 1)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MergeError(f"{name}: not a complete greeter load report ({exc!r})") from None


def _split_of(part: dict[str, Any]) -> tuple[Histogram, Histogram]:
    """A report's (or a backend row's) server and outside histograms; empty in a report
    from before the split (its calls then count as replies without a server-timing)."""
    if "server_hdr" not in part:
        return Histogram(), Histogram()
    return Histogram.from_dict(part["server_hdr"]), Histogram.from_dict(part["outside_hdr"])


def merged_options(docs: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The ``options`` of the merged report: workers, connections, processes, calls and
    rate added up; metadata keys joined; the rest as the first report has them."""
    all_options = [doc["options"] for _, doc in docs]
    options = dict(all_options[0])
    for key in SUMMED_OPTIONS:
        options[key] = sum(int(o[key]) for o in all_options)
    for key in SUMMED_OR_NULL_OPTIONS:
        values = [o.get(key) for o in all_options]
        options[key] = None if any(v is None for v in values) else sum(values)
    options["metadata_keys"] = sorted({k for o in all_options for k in o["metadata_keys"]})
    starts = {o.get("start_at") for o in all_options}
    options["start_at"] = starts.pop() if len(starts) == 1 else None
    return options


def merge_reports(docs: Sequence[tuple[str, dict[str, Any]]], **gates: Any) -> Report:
    """The report of ``docs`` merged, judged by ``gates`` (LoadConfig fields:
    percentiles, max_error_rate, thresholds, expect_split, expect_cluster,
    split_confidence)."""
    check(docs)
    outcome = combine([outcome_of(name, doc) for name, doc in docs])
    first = docs[0][1]
    interval = float(first["options"]["timeline_interval_s"])
    if (outcome.span or 0.0) / max(interval, MIN_INTERVAL) > MAX_TIMELINE_BUCKETS:
        raise MergeError(
            f"the reports span {outcome.span:.0f} s: more than {MAX_TIMELINE_BUCKETS} "
            f"timeline buckets of {interval:g} s; merge reports of one run"
        )
    options = first["options"]
    target = Target(first["target"], tls=bool(options["tls"]), authority=options["authority"] or "")
    config = LoadConfig(
        target=target, call=first["call"], timeline_interval=interval, procs=1, **gates
    )
    report = build_report(config, outcome, options=merged_options(docs))
    report.data["starts_apart_s"] = round(starts_apart(docs), 6)
    return report


def starts_apart(docs: Sequence[tuple[str, dict[str, Any]]]) -> float:
    """Seconds from the earliest measured start of the runs in ``docs`` to the latest (a
    merged input brings its own runs' spread). Runs given the same absolute ``--start-at``
    start within milliseconds; ``+30s`` counts from each run's own launch, so runs launched
    apart start as far apart."""
    spans = []
    for _, doc in docs:
        first = _epoch(doc["started_at"])
        spans.append((first, first + float(doc.get("starts_apart_s") or 0.0)))
    return max(last for _, last in spans) - min(first for first, _ in spans)
