"""``greeter check ADDRESS``: does the gateway at ADDRESS carry gRPC correctly? The standard
interop cases and the known gateway pitfalls, one verdict per case."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from greeter.check.report import exit_code, summary_line, to_json, to_junit, to_text
from greeter.check.runner import choose, run_check
from greeter.client import (
    EXIT_BAD_ARGS,
    EXIT_CONNECT,
    ConnectFailed,
    TargetError,
    add_output_arguments,
    add_target_arguments,
    help_epilog,
    require_positive,
    target_from_args,
    write_output,
)
from greeter.durations import duration_arg

PROTOCOLS = ("grpc", "grpc-web", "grpc-web-text")
FORMATS = ("text", "json")
DEFAULT_MAX_WAIT = "70s"
DESCRIPTION = """Check that the gateway (or server) at ADDRESS carries gRPC correctly: the
standard gRPC interop cases (when the pods serve grpc.testing.TestService: greeter serve
--interop) and the ways gateways are known to break gRPC (message sizes, long calls, stream
gaps, deadlines, cancellation, metadata, trailers-only errors, full duplex, gzip, ALPN). One
line per case: PASS, FAIL (what was expected, what came back, the likely gateway setting) or
SKIP (why). See docs/check.md for the cases and the settings that break them."""
EPILOG = help_epilog(
    """examples:
  greeter check grpc.example.com:443
  greeter check 10.0.0.7:443 --insecure --authority grpc.example.com --max-wait 5s
  greeter check localhost:50051 --plaintext -O json -o check.json --junit check.xml
  greeter check localhost:50051 --plaintext --only request_size,response_size
  greeter check localhost:8080 --plaintext --protocol grpc-web

The long-call cases (slow_unary, stream_gaps) wait 1 s, 5 s, 20 s, 40 s, 60 s up to
--max-wait, all at once: a whole run takes about --max-wait (70 s by default, so the
common 60 s limits show). An unknown case name in --only/--skip lists the names.
See docs/check.md for the cases and the gateway settings that break them."""
)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "check",
        help="does this gateway carry gRPC correctly? one verdict per interop case and "
        "known gateway pitfall",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.exit_code = EXIT_BAD_ARGS
    add_arguments(parser)
    parser.set_defaults(func=main)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser, protocols=PROTOCOLS)
    cases = parser.add_argument_group("cases")
    cases.add_argument(
        "--max-wait",
        type=duration_arg,
        default=DEFAULT_MAX_WAIT,
        metavar="DURATION",
        help=f"the longest wait of the long-call cases, e.g. 5s, 2m (default: {DEFAULT_MAX_WAIT})",
    )
    for flag, meaning in (("--only", "run only these cases"), ("--skip", "leave these cases out")):
        cases.add_argument(
            flag,
            action="append",
            type=_names,
            default=[],
            metavar="CASES",
            help=f"{meaning} (comma list, repeatable; default: none)",
        )
    report = parser.add_argument_group("report")
    add_output_arguments(report, FORMATS)
    report.add_argument(
        "--junit", default="", metavar="FILE", help="also write JUnit XML here (default: none)"
    )


def main(args: argparse.Namespace) -> int:
    try:
        target = target_from_args(args)
        require_positive(args, "max_wait", "connect_timeout")
        cases = choose(
            [n for group in args.only for n in group], [n for group in args.skip for n in group]
        )
    except (TargetError, ValueError) as exc:
        print(f"greeter check: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    if not cases:
        print("greeter check: --only/--skip leave no case to run", file=sys.stderr)
        return EXIT_BAD_ARGS
    try:
        run = asyncio.run(
            run_check(target, cases, args.max_wait, args.protocol, args.connect_timeout)
        )
    except ConnectFailed as exc:
        print(f"greeter check: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    write_output(to_json(run) if args.format == "json" else to_text(run), args.output)
    if args.output:
        print(summary_line(run))
    if args.junit:
        Path(args.junit).write_text(to_junit(run))
    return exit_code(run)
