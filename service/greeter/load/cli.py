"""``greeter load ADDRESS [flags]``: the command line over :func:`greeter.load.run_load`;
``greeter load merge FILE...``: -O json reports of several runs, merged exactly.

Flags follow ghz where they mean the same thing (-c -n -z --rps --connections
--load-schedule -t --connect-timeout --insecure --cacert --authority -m -O -o); ghz's
flags we do not take are answered by :mod:`greeter.habits`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from greeter import habits
from greeter.client import (
    EXIT_BAD_ARGS,
    EXIT_CONNECT,
    EXIT_FAILED,
    TargetError,
    add_call_arguments,
    add_output_arguments,
    add_target_arguments,
    help_epilog,
    target_from_args,
    write_output,
)
from greeter.durations import duration_arg
from greeter.load import merge, render
from greeter.load.config import (
    CALLS,
    DEFAULT_PERCENTILES,
    ENGINES,
    PROTOCOLS,
    SCHEDULES,
    ConfigError,
    LoadConfig,
    default_procs,
    parse_confidence,
    parse_split,
    parse_start_at,
    parse_threshold,
)
from greeter.load.engine import ConnectError
from greeter.load.report import Report, wall_time
from greeter.load.runner import run_load
from greeter.load.timeline import DEFAULT_INTERVAL
from greeter.wording import plural

FORMATS = ("summary", "json", "csv", "html")
# greeter load merge warns when the runs' measured starts were further apart than this.
STARTS_APART_WARNING_S = 0.1
DESCRIPTION = """Load test a Greeter (or a gateway in front of Greeters) and show which cluster
and pod served the calls. Flags follow ghz where they mean the same thing."""
EPILOG = help_epilog(
    """examples:
  greeter load localhost:50051 -c 8 --connections 4 -z 30s
  greeter load localhost:50051 --rps 500 -z 1m --max-latency p99=50ms --max-error-rate 0.1%
  greeter load 10.0.0.7:443 --insecure --authority grpc.example.com \\
      --expect-split cluster-a=80,cluster-b=20 -n 5000
  greeter load localhost:50051 -z 30s --rps 200 -O json -o run.json
  greeter load merge run-1.json run-2.json      (the -O json reports of several runs)

several machines at once: give every run the same absolute --start-at, e.g.
  --start-at "$(date -u -d '+30 sec' +%FT%TZ)" computed once and passed to all of them.

a gate is --max-latency, --max-error-rate, --expect-split or --expect-cluster (exit 1 when one
fails, or when no call succeeded). See docs/load.md."""
)
MERGE_DESCRIPTION = """Merge the -O json reports of several greeter load runs (one per machine,
pod or process) into one report, exactly: counts and histograms add up, percentiles come
from the merged histogram, the rate from the union of the runs' time windows, timelines
line up on the wall clock. Reports of another target, call, schema version, histogram
layout or timeline interval are refused (exit 2)."""
MERGE_EPILOG = help_epilog(
    """examples:
  greeter load merge run-1.json run-2.json
  cat runs/*.json | greeter load merge - --max-latency p99=50ms -O html -o merged.html

exit 2 also for an unreadable input or reports that do not merge; 130 when some report was
interrupted. See docs/load.md, "Merging reports"."""
)


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


class _StartAt(argparse.Action):
    """``--start-at``: Unix seconds in ``start_at``, and what was typed in ``start_at_text``
    (a relative ``+30s`` is this run's own, and the run says which moment it means)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            at = parse_start_at(str(values), time.time())
        except ValueError as exc:
            parser.error(f"argument --start-at: {exc}")
        setattr(namespace, self.dest, at)
        namespace.start_at_text = str(values)


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
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.exit_code = EXIT_BAD_ARGS
    parser.habits = habits.LOAD
    parser.value_habits = {"format": habits.LOAD_FORMATS}
    add_arguments(parser)
    parser.set_defaults(func=main)
    merging = type(parser)(
        prog=f"{parser.prog} merge", description=MERGE_DESCRIPTION, epilog=MERGE_EPILOG
    )
    merging.exit_code = EXIT_BAD_ARGS
    merging.value_habits = parser.value_habits
    add_merge_arguments(merging)
    merging.set_defaults(func=merge_main)
    parser.nested["merge"] = merging


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("reports")
    inputs.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="-O json reports (- : standard input; a file may hold several, one after another)",
    )
    _add_report_arguments(parser.add_argument_group("report"))
    _add_gate_arguments(parser.add_argument_group("gates"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, protocols=PROTOCOLS)
    calls = parser.add_argument_group("call")
    add_call_arguments(calls, tuple(CALLS), "--call")
    calls.add_argument(
        "-d",
        "--data",
        type=_json_object,
        default=None,
        metavar="JSON",
        help='the request as JSON, e.g. \'{"name":"Bob"}\' (default: {}, an empty request)',
    )
    calls.add_argument(
        "--name",
        default=None,
        help="shorthand for -d '{\"name\": NAME}' (default: none; ghz's --name, a test "
        "name, has no equivalent)",
    )
    calls.add_argument(
        "--stream-count",
        type=int,
        default=None,
        metavar="N",
        help="replies asked of SayHelloStreamReply; messages sent per bidi call "
        "(default: the server's, 10)",
    )
    shape = parser.add_argument_group("load shape")
    shape.add_argument(
        "-c", "--concurrency", type=int, default=50, metavar="N", help="workers (calls in flight)"
    )
    shape.add_argument(
        "-n",
        "--total",
        type=int,
        default=None,
        metavar="N",
        help="calls to make (default: 200 without -z, no limit with it)",
    )
    shape.add_argument(
        "-z",
        "--duration",
        type=duration_arg,
        default=None,
        metavar="DURATION",
        help="run this long, e.g. 30s, 2m; with -n: whichever comes first (default: none)",
    )
    shape.add_argument(
        "--rps",
        type=float,
        default=None,
        metavar="N",
        help="open-loop rate, calls per second; latency counts from the intended send "
        "(default: none, each worker sends its next call when the last one ends)",
    )
    shape.add_argument(
        "--load-schedule",
        choices=SCHEDULES,
        default="const",
        help="const (--rps), step or line (ghz's): the rate from --load-start to --load-end",
    )
    shape.add_argument(
        "--load-start",
        type=float,
        default=None,
        metavar="N",
        help="the schedule's first rps (default: none; needed by step and line)",
    )
    shape.add_argument(
        "--load-end",
        type=float,
        default=None,
        metavar="N",
        help="the schedule's last rps (default: none, keep going)",
    )
    shape.add_argument(
        "--load-step",
        type=float,
        default=0.0,
        metavar="N",
        help="rps added per step (step) or per second (line)",
    )
    shape.add_argument(
        "--load-step-duration",
        type=duration_arg,
        default="0s",
        metavar="DURATION",
        help="how long each step lasts (step)",
    )
    shape.add_argument(
        "--warmup",
        type=duration_arg,
        default="0s",
        metavar="DURATION",
        help="run this long before measuring (not reported)",
    )
    shape.add_argument(
        "--start-at",
        action=_StartAt,
        default=None,
        metavar="TIME",
        help="start the measured load at this moment, after connecting and warming up: an "
        "RFC 3339 time (2026-05-01T12:00:00Z), which runs on several machines can share, "
        "or +30s, counted from this run's own start (it does not line up runs launched "
        "apart: compute one absolute time instead, date -u -d '+30 sec' +%%FT%%TZ). A "
        "time that has passed starts at once and says how late (default: start when ready)",
    )
    client = parser.add_argument_group("client")
    client.add_argument(
        "--connections",
        type=int,
        default=1,
        metavar="N",
        help="HTTP/2 connections to spread the workers over (4 or more against one Greeter "
        "directly: see README)",
    )
    client.add_argument(
        "--procs",
        type=int,
        default=None,
        metavar="N",
        help=f"client processes (default: one per core, here {default_procs()})",
    )
    client.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="h2 (lean HTTP/2, unary calls to one address), grpc, or auto: h2 where it applies",
    )
    client.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    client.add_argument(
        "--trace-sample",
        type=float,
        default=0.0,
        metavar="RATE",
        help="share of calls, 0 to 1, that start a trace: they carry a W3C traceparent, the "
        "report lists the slowest with their trace ids, and with OTEL_EXPORTER_OTLP_ENDPOINT "
        "set their CLIENT spans are exported (docs/tracing.md)",
    )
    _add_report_arguments(parser.add_argument_group("report"))
    _add_gate_arguments(parser.add_argument_group("gates"))


def _add_report_arguments(out: Any) -> None:
    """Output: the same for a run and for a merge (a merge takes -q and ignores it, so that
    greeter load -q merge ... works)."""
    add_output_arguments(out, FORMATS)
    out.add_argument(
        "--html",
        default="",
        metavar="FILE",
        help="also write an HTML report with a chart (default: none)",
    )
    out.add_argument(
        "--timeline-csv",
        default="",
        metavar="FILE",
        help="also write the timeline as CSV, one row per bucket (default: none)",
    )
    out.add_argument(
        "--percentiles",
        type=_percentiles,
        default=DEFAULT_PERCENTILES,
        metavar="LIST",
        help="latency percentiles to report",
    )
    out.add_argument(
        "--timeline-interval",
        type=duration_arg,
        default=f"{DEFAULT_INTERVAL:g}s",
        metavar="DURATION",
        help="length of each timeline bucket, e.g. 500ms; at least 10ms",
    )
    out.add_argument("-q", "--quiet", action="store_true", help="no live progress line")


def _add_gate_arguments(gates: Any) -> None:
    """The gates that judge a run or a merge (exit 1 when one fails)."""
    gates.add_argument(
        "--max-error-rate",
        type=_rate,
        default=None,
        metavar="RATE",
        help="fail (exit 1) above this error rate: 0.01 or 1%% (default: no limit)",
    )
    gates.add_argument(
        "--max-latency",
        action="append",
        default=[],
        metavar="STAT=LIMIT",
        help="fail (exit 1) if a latency is above, e.g. p99=250ms; server.STAT and "
        "outside.STAT judge the server's time (its server-timing) and the rest, e.g. "
        "outside.p99=20ms (repeatable; default: none)",
    )
    gates.add_argument(
        "--expect-split",
        default=None,
        metavar="NAME=PCT,...",
        help="fail (exit 1) unless successful calls spread over clusters as given, e.g. "
        "cluster-a=80,cluster-b=20 (an exact test per cluster; see docs/load.md; default: none)",
    )
    gates.add_argument(
        "--expect-cluster",
        default=None,
        metavar="NAME",
        help="fail (exit 1) unless every successful call was served by cluster NAME "
        "(default: none)",
    )
    gates.add_argument(
        "--split-confidence",
        default=None,
        metavar="C",
        help="confidence of the split gate, 0.99 or 99%% (default: 0.99)",
    )


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    target = target_from_args(args)
    request: dict[str, Any] = dict(args.data or {})
    if args.name is not None:
        request["name"] = args.name
    schedule_rate = args.load_schedule != "const"
    return LoadConfig(
        target=target,
        call=args.method,
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
        trace_sample=args.trace_sample,
        **gates_from_args(args),
    )


def _relative_start_notice(text: str | None, at: float | None) -> None:
    """``--start-at +30s`` counts from this run's launch: say which moment that is, so that
    other runs can be given it (the same +30s launched later would start later)."""
    if text is None or at is None or not text.strip().startswith("+"):
        return
    moment = wall_time(at)
    print(
        f"greeter load: --start-at {text.strip()} is {moment}; to start other runs together "
        f"with this one, give them --start-at {moment}",
        file=sys.stderr,
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
        parts = [
            plural(count, "call"),
            plural(errors, "error"),
            f"{rate:,.0f}/s",
            f"{elapsed:.1f}s",
        ]
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
    try:
        config = config_from_args(args)
    except (TargetError, ConfigError) as exc:
        print(f"greeter load: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    _relative_start_notice(getattr(args, "start_at_text", None), config.start_at)
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
    apart = report.data["starts_apart_s"]
    if apart > STARTS_APART_WARNING_S:
        print(
            f"greeter load merge: warning: the runs' measured starts were {apart:.3f} s apart, "
            "so they did not run side by side throughout (the rate counts the union of their "
            "windows); to line runs up, give each the same absolute --start-at, e.g. "
            "$(date -u -d '+30 sec' +%FT%TZ)",
            file=sys.stderr,
        )
    interrupted = "some of the reports were interrupted: the merge covers the calls that finished"
    return _emit(report, args, "greeter load merge", interrupted)


def _emit(report: Report, args: argparse.Namespace, command: str, interrupted: str) -> int:
    """Write the report where the flags say, tell the gates' verdict; the exit code."""
    write_output(render_report(report, args.format), args.output)
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
