"""``greeter load ADDRESS [flags]``: the command line over :func:`greeter.load.run_load`;
``greeter load merge FILE...``: -O json reports of several runs, merged exactly.

Flags follow ghz where they mean the same thing (-c -n -z --rps --connections
--load-schedule -t --connect-timeout --insecure --cacert --authority -m -O -o).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from greeter.client import TargetError, target_from_args
from greeter.load import merge, render
from greeter.load.config import (
    CALLS,
    DEFAULT_PERCENTILES,
    ENGINES,
    PROTOCOLS,
    SCHEDULES,
    ConfigError,
    LoadConfig,
    call_name,
    default_procs,
    parse_confidence,
    parse_duration,
    parse_split,
    parse_start_at,
    parse_threshold,
)
from greeter.load.engine import ConnectError
from greeter.load.report import EXIT_BAD_ARGS, EXIT_CONNECT, EXIT_FAILED, Report
from greeter.load.runner import run_load
from greeter.load.timeline import DEFAULT_INTERVAL

FORMATS = ("summary", "json", "csv", "html")
EPILOG = """exit codes: 0 ok; 1 a threshold missed, --max-error-rate exceeded, the split
off or undecided (--expect-split, --expect-cluster) or no call succeeded; 2 bad
arguments; 3 could not connect; 130 interrupted (the partial report is printed first).
See docs/load.md. To merge the -O json reports of several runs (e.g. one per machine):
greeter load merge FILE... (see greeter load merge --help)."""
MERGE_DESCRIPTION = """Merge the -O json reports of several greeter load runs (one per machine,
pod or process) into one report, exactly: counts and histograms add up, percentiles come
from the merged histogram, the rate from the union of the runs' time windows, timelines
line up on the wall clock. Reports of another target, call, schema version, histogram
layout or timeline interval are refused (exit 2)."""
MERGE_EPILOG = """exit codes: 0 ok; 1 a gate failed (as for greeter load); 2 bad arguments,
an unreadable input, or reports that do not merge; 130 some report was interrupted.
See docs/load.md, "Merging reports"."""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    """``0.01`` or ``1%`` → 0.01."""
    raw = text.strip()
    try:
        return float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction or a percentage") from None


def _percentiles(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p.strip().lstrip("p")) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 50,90,99,99.9") from None


def _call(text: str) -> str:
    try:
        return call_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _start_at(text: str) -> float:
    try:
        return parse_start_at(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"-d is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('-d must be a JSON object, e.g. \'{"name":"Bob"}\'')
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "load",
        help="load test the Greeter and show which cluster and pod served each call",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=EPILOG,
    )
    parser.exit_code = EXIT_BAD_ARGS
    add_arguments(parser)
    parser.set_defaults(func=main)
    merging = type(parser)(
        prog=f"{parser.prog} merge", description=MERGE_DESCRIPTION, epilog=MERGE_EPILOG
    )
    merging.exit_code = EXIT_BAD_ARGS
    add_merge_arguments(merging)
    merging.set_defaults(func=merge_main)
    parser.nested["merge"] = merging


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="-O json reports (- : standard input; a file may hold several, one after another)",
    )
    _add_report_arguments(parser.add_argument_group("report"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from greeter.client import add_target_arguments

    add_target_arguments(parser)
    calls = parser.add_argument_group("calls")
    calls.add_argument(
        "--call",
        type=_call,
        default="SayHello",
        help=f"{', '.join(CALLS)} (or the full name, e.g. helloworld.Greeter.SayHello)",
    )
    calls.add_argument(
        "-d",
        "--data",
        type=_json_object,
        default=None,
        help='the request as JSON, e.g. \'{"name":"Bob"}\'',
    )
    calls.add_argument("--name", default=None, help="shorthand for -d '{\"name\": NAME}'")
    calls.add_argument(
        "--stream-count",
        type=int,
        default=None,
        help="replies asked of SayHelloStreamReply; messages sent per bidi call",
    )
    shape = parser.add_argument_group("load shape")
    shape.add_argument("-c", "--concurrency", type=int, default=50, help="workers (default 50)")
    shape.add_argument(
        "-n", "--total", type=int, default=None, help="calls to make (default 200 without -z)"
    )
    shape.add_argument(
        "-z",
        "--duration",
        type=_duration,
        default=None,
        help="run this long, e.g. 30s, 2m (with -n: whichever comes first)",
    )
    shape.add_argument(
        "--rps",
        type=float,
        default=None,
        help="open-loop rate, calls per second (latency from the intended send)",
    )
    shape.add_argument(
        "--load-schedule",
        choices=SCHEDULES,
        default="const",
        help="const (--rps), step or line (like ghz)",
    )
    shape.add_argument("--load-start", type=float, default=None, help="schedule's first rps")
    shape.add_argument("--load-end", type=float, default=None, help="schedule's last rps")
    shape.add_argument(
        "--load-step",
        type=float,
        default=0.0,
        help="rps added per step (step) or per second (line)",
    )
    shape.add_argument(
        "--load-step-duration", type=_duration, default=0.0, help="how long each step lasts (step)"
    )
    shape.add_argument(
        "--connections",
        type=int,
        default=1,
        help="HTTP/2 connections to spread workers over (default 1)",
    )
    shape.add_argument(
        "--procs", type=int, default=None, help="worker processes (default: one per core)"
    )
    shape.add_argument(
        "--warmup",
        type=_duration,
        default=0.0,
        help="run this long before measuring (not reported)",
    )
    shape.add_argument(
        "-t", "--timeout", type=_duration, default=20.0, help="per-call deadline (default 20s)"
    )
    shape.add_argument(
        "--connect-timeout", type=_duration, default=10.0, help="time to connect (default 10s)"
    )
    shape.add_argument(
        "--start-at",
        type=_start_at,
        default=None,
        metavar="TIME",
        help="start the measured load at this moment, after connecting and warming up: an "
        "RFC 3339 time (2026-05-01T12:00:00Z) or +30s; runs given the same time start "
        "together, so N runs at --rps R give N x R (late: starts at once, says so)",
    )
    out = parser.add_argument_group("report")
    _add_report_arguments(out)
    out.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    out.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    out.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="client engine: h2 (lean HTTP/2, unary calls to one address), grpc, or auto "
        "(h2 where it applies; default)",
    )
    out.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="grpc",
        help="grpc (default), or gRPC-Web over HTTP/1.1 to a web port or gateway "
        "(grpc-web-text: its base64 form); runs the grpc-web engine",
    )
    out.add_argument(
        "--timeline-interval",
        type=_duration,
        default=DEFAULT_INTERVAL,
        help="length of each timeline bucket, e.g. 1s (default), 500ms; at least 10ms",
    )


def _add_report_arguments(out: Any) -> None:
    """Output and gates: the same for a run and for a merge."""
    out.add_argument("-O", "--format", choices=FORMATS, default="summary", help="output format")
    out.add_argument("-o", "--output", default="", help="write the report to this file")
    out.add_argument("--html", default="", help="also write an HTML report with a chart")
    out.add_argument(
        "--percentiles",
        type=_percentiles,
        default=DEFAULT_PERCENTILES,
        help="e.g. 50,90,95,99,99.9",
    )
    out.add_argument(
        "--max-error-rate",
        type=_rate,
        default=None,
        help="fail (exit 1) above this error rate: 0.01 or 1%%",
    )
    out.add_argument(
        "--max-latency",
        action="append",
        default=[],
        metavar="STAT=LIMIT",
        help="fail (exit 1) if a latency is above, e.g. p99=250ms; server.STAT and "
        "outside.STAT judge the server's time (its server-timing) and the rest, e.g. "
        "outside.p99=20ms (repeatable)",
    )
    out.add_argument(
        "--expect-split",
        default=None,
        metavar="NAME=PCT,...",
        help="fail (exit 1) unless successful calls spread over clusters as given, e.g. "
        "cluster-a=80,cluster-b=20 (an exact test per cluster; see docs/load.md)",
    )
    out.add_argument(
        "--expect-cluster",
        default=None,
        metavar="NAME",
        help="fail (exit 1) unless every successful call was served by cluster NAME",
    )
    out.add_argument(
        "--split-confidence",
        default=None,
        metavar="C",
        help="confidence of the split gate, 0.99 (default) or 99%%",
    )
    out.add_argument(
        "--timeline-csv",
        default="",
        metavar="FILE",
        help="also write the timeline as CSV: one row per bucket",
    )


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    target = target_from_args(args)
    request: dict[str, Any] = dict(args.data or {})
    if args.name is not None:
        request["name"] = args.name
    schedule_rate = args.load_schedule != "const"
    return LoadConfig(
        target=target,
        call=args.call,
        request=request,
        concurrency=args.concurrency,
        total=args.total,
        duration=args.duration,
        rps=args.rps,
        schedule=args.load_schedule,
        load_start=args.load_start if schedule_rate else None,
        load_end=args.load_end if schedule_rate else None,
        load_step=args.load_step,
        load_step_duration=args.load_step_duration,
        connections=args.connections,
        procs=default_procs() if args.procs is None else args.procs,
        warmup=args.warmup,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        stream_count=args.stream_count,
        progress=not args.quiet and sys.stderr.isatty(),
        uvloop=args.uvloop,
        engine=args.engine,
        timeline_interval=args.timeline_interval,
        protocol=args.protocol,
        start_at=args.start_at,
        **gates_from_args(args),
    )


def gates_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The report flags that judge a run (or a merge), as LoadConfig fields."""
    try:
        thresholds = tuple(parse_threshold(t) for t in args.max_latency)
    except ValueError as exc:
        raise ConfigError(f"--max-latency: {exc}") from None
    expect_split, confidence = _split_args(args)
    return {
        "percentiles": args.percentiles,
        "max_error_rate": args.max_error_rate,
        "thresholds": thresholds,
        "expect_split": expect_split,
        "expect_cluster": args.expect_cluster,
        "split_confidence": confidence,
    }


def _split_args(
    args: argparse.Namespace,
) -> tuple[tuple[tuple[str, float], ...] | None, float]:
    """--expect-split parsed, and --split-confidence (which needs a split gate)."""
    expect_split = None
    if args.expect_split is not None:
        try:
            expect_split = parse_split(args.expect_split)
        except ValueError as exc:
            raise ConfigError(f"--expect-split: {exc}") from None
    if args.split_confidence is None:
        return expect_split, 0.99
    if expect_split is None and args.expect_cluster is None:
        raise ConfigError("--split-confidence: needs --expect-split or --expect-cluster")
    try:
        confidence = parse_confidence(args.split_confidence)
    except ValueError as exc:
        raise ConfigError(f"--split-confidence: {exc}") from None
    return expect_split, confidence


class ProgressLine:
    """One self-rewriting status line on a terminal."""

    def __init__(self, config: LoadConfig) -> None:
        self._config = config
        self._last = (0, 0.0)

    def __call__(self, count: int, errors: int, elapsed: float) -> None:
        last_count, last_time = self._last
        rate = (count - last_count) / (elapsed - last_time) if elapsed > last_time else 0.0
        self._last = (count, elapsed)
        parts = [f"{count} calls", f"{errors} errors", f"{rate:,.0f}/s", f"{elapsed:.1f}s"]
        if self._config.duration:
            parts.append(f"{max(0.0, self._config.duration - elapsed):.1f}s left")
        elif self._config.total:
            parts.append(f"{count * 100 // self._config.total}%")
        sys.stderr.write("\r\x1b[K" + "  ".join(parts))
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def render_report(report: Report, fmt: str) -> str:
    if fmt == "json":
        return report.to_json() + "\n"
    if fmt == "csv":
        return render.to_csv(report)
    if fmt == "html":
        return render.to_html(report)
    return render.summary(report)


def main(args: argparse.Namespace) -> int:
    if args.address == "merge":
        print(
            "greeter load: to merge reports, 'merge' comes right after 'load': "
            "greeter load merge FILE... (a host named merge: give its port, merge:50051)",
            file=sys.stderr,
        )
        return EXIT_BAD_ARGS
    try:
        config = config_from_args(args)
    except (TargetError, ConfigError) as exc:
        print(f"greeter load: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    progress = ProgressLine(config) if config.progress else None
    began = time.perf_counter()

    def notice(message: str) -> None:
        _clear(progress)
        print(f"greeter load: warning: {message}", file=sys.stderr)

    try:
        report = run_load(config, progress=progress, handle_sigint=True, notice=notice)
    except ConnectError as exc:
        _clear(progress)
        print(f"greeter load: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    except (TargetError, ConfigError) as exc:
        _clear(progress)
        print(f"greeter load: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    _clear(progress)
    interrupted = (
        f"interrupted after {time.perf_counter() - began:.1f}s; "
        "the report covers the calls that finished"
    )
    return _emit(report, args, "greeter load", interrupted)


def merge_main(args: argparse.Namespace) -> int:
    """``greeter load merge FILE...``."""
    try:
        gates = gates_from_args(args)
        report = merge.merge_reports(merge.read_reports(args.files), **gates)
    except (ConfigError, merge.MergeError) as exc:
        print(f"greeter load merge: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    interrupted = "some of the reports were interrupted: the merge covers the calls that finished"
    return _emit(report, args, "greeter load merge", interrupted)


def _emit(report: Report, args: argparse.Namespace, command: str, interrupted: str) -> int:
    """Write the report where the flags say, tell the gates' verdict; the exit code."""
    text = render_report(report, args.format)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if args.html:
        Path(args.html).write_text(render.to_html(report))
    if args.timeline_csv:
        Path(args.timeline_csv).write_text(render.timeline_csv(report))
    if report.data["interrupted"]:
        print(f"{command}: {interrupted}", file=sys.stderr)
    for failure in report.failures:
        print(f"{command}: FAILED: {failure}", file=sys.stderr)
    code = report.exit_code
    assert code in (0, EXIT_FAILED, 130)
    return code


def _clear(progress: ProgressLine | None) -> None:
    if progress is not None:
        progress.done()
