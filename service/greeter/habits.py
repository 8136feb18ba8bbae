"""Flags people bring from grpcurl, ghz and grpc-health-probe, answered in one line.

A flag we do not take, or take under another spelling, is looked up here before argparse
sees it; the command then says what to type instead (or that there is no such thing) and
exits with its bad-arguments code, instead of printing its usage and "unrecognized
arguments". grpcurl and grpc-health-probe spell long flags with one dash (``-plaintext``),
which argparse would otherwise read as ``-p laintext`` or, worse, as one of our short
flags with a value (``-cacert`` as ``-c acert``).
"""

from __future__ import annotations

from collections.abc import Iterable

NONE = "there is none"


def _table(tool: str, rows: Iterable[tuple[tuple[str, ...], str]]) -> dict[str, str]:
    """``{flag: "grpcurl's -plaintext is not a flag here; use --plaintext"}``."""
    return {
        flag: f"{tool}'s {flag} is not a flag here; {advice}"
        for flags, advice in rows
        for flag in flags
    }


def _dashes(tool: str, names: Iterable[str]) -> dict[str, str]:
    """Single-dash long flags we take with two dashes."""
    return _table(tool, (((f"-{name}",), f"use --{name} (two dashes)") for name in names))


# grpcurl's single-dash flags, for greeter call, health and load.
GRPCURL = {
    **_dashes("grpcurl", ("plaintext", "authority", "cacert", "cert", "key")),
    **_table(
        "grpcurl",
        [
            (
                ("-insecure",),
                "use --insecure (TLS without verifying the server, as in grpcurl); "
                "for no TLS at all (old ghz's -insecure) use --plaintext",
            ),
            (("-servername",), "use --authority NAME (it sets the TLS server name too)"),
            (("-H", "-rpc-header"), "use -m KEY:VALUE (repeatable)"),
            (("-reflect-header",), "there is no reflection step; use -m KEY:VALUE"),
            (
                ("-proto", "-protoset", "-import-path", "-use-reflection"),
                "greeter knows the Greeter's services: no .proto is needed",
            ),
            (("-unix",), "there is none: the address is host:port"),
            (("-max-time",), "use -t/--timeout DURATION"),
            (
                (
                    "-v",
                    "-vv",
                    "-emit-defaults",
                    "-format",
                    "-format-error",
                    "-expand-headers",
                    "-allow-unknown-fields",
                    "-max-msg-sz",
                    "-keepalive-time",
                    "-user-agent",
                    "-alts",
                ),
                NONE,
            ),
        ],
    ),
}

CALL = {
    **GRPCURL,
    **_table(
        "grpcurl",
        [
            (("-d",), "use --name NAME (the request is a HelloRequest)"),
        ],
    ),
    **_dashes("grpcurl", ("connect-timeout",)),
}

LOAD_GRPCURL = {**GRPCURL, **_dashes("grpcurl", ("connect-timeout",))}

# grpc-health-probe's flags, for greeter health.
HEALTH = {
    **GRPCURL,
    **_dashes("grpc-health-probe", ("service", "tls", "connect-timeout")),
    **_table(
        "grpc-health-probe",
        [
            (("-addr",), "give the address first: greeter health HOST:PORT"),
            (("-tls-ca-cert",), "use --cacert FILE"),
            (("-tls-no-verify",), "use --insecure"),
            (("-tls-client-cert",), "use --cert FILE"),
            (("-tls-client-key",), "use --key FILE"),
            (("-tls-server-name",), "use --authority NAME"),
            (("-rpc-timeout",), "use -t/--timeout DURATION"),
            (("-rpc-header",), "use -m KEY:VALUE (repeatable)"),
            (("-user-agent", "-gzip", "-spiffe", "-alts", "-v"), NONE),
        ],
    ),
}

# ghz's flags that greeter load does not take (the ones it does take mean the same thing).
LOAD = {
    **LOAD_GRPCURL,
    **_table(
        "ghz",
        [
            (("-r",), "use --rps N"),
            (
                ("-x", "--max-duration"),
                "use -n N with -z DURATION: the run stops at whichever comes first",
            ),
            (("--cpus",), "use --procs N (worker processes; default one per core)"),
            (("--skipFirst",), "use --warmup DURATION (the warm-up's calls are not counted)"),
            (
                ("--proto", "--protoset", "-i", "--import-paths", "--reflect-metadata"),
                "greeter load knows the Greeter's services: pick the method with --call",
            ),
            (("-D", "--data-file"), 'use -d "$(cat FILE)"'),
            (
                ("-b", "--binary", "-B", "--binary-file"),
                'requests are JSON here: use -d \'{"name":"Bob"}\'',
            ),
            (
                ("-M", "--metadata-file"),
                'use -m "$(cat FILE)" (-m takes KEY:VALUE or a JSON object)',
            ),
            (
                ("--async",),
                "use --rps N: calls then go out on schedule, whether or not earlier ones ended",
            ),
            (
                ("--count-errors",),
                "there is none needed: the latency statistics always count every call",
            ),
            (("--cname",), "use --authority NAME (it sets the TLS server name too)"),
            (("--lb-strategy",), "use --lb-policy (with a dns:/// address)"),
            (("--load-max-duration",), "use -z DURATION"),
            (("--stream-call-count",), "use --stream-count N"),
            (("-T",), "use --connect-timeout DURATION"),
            (
                (
                    "--concurrency-schedule",
                    "--concurrency-start",
                    "--concurrency-end",
                    "--concurrency-step",
                    "--concurrency-step-duration",
                    "--concurrency-max-duration",
                ),
                "there is none: -c is fixed for a run; shape the rate with --load-schedule",
            ),
            (
                (
                    "--config",
                    "--keepalive",
                    "-L",
                    "--tags",
                    "--debug",
                    "-e",
                    "--enable-compression",
                    "--max-recv-message-size",
                    "--max-send-message-size",
                    "--disable-template-functions",
                    "--disable-template-data",
                    "--duration-stop",
                    "--stream-interval",
                    "-si",
                    "--stream-call-duration",
                    "--stream-dynamic-messages",
                ),
                NONE,
            ),
            (("-v",), "greeter --version prints the version"),
        ],
    ),
}

# ghz's -O values that greeter load does not write.
LOAD_FORMATS = {
    "pretty": "use -O json (it is indented already)",
    "influx-summary": "there is no InfluxDB output; use -O json or -O csv",
    "influx-details": "there is no InfluxDB output; use -O json or -O csv",
    "prometheus": "there is no Prometheus output; use -O json",
}
