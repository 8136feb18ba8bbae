"""One frozen settings object for the server, built from flags over ``GREETER_*`` env over defaults.

Every setting is declared once, as a dataclass field whose metadata gives its
help text and parser. From that single table come the ``greeter serve`` flags
(``--drain-delay``), the environment variables (``GREETER_DRAIN_DELAY``) and the
validation; nothing else in the package reads the environment, except the
OpenTelemetry SDK, which reads its own standard ``OTEL_*`` variables (:mod:`greeter.tracing`).

A bad value raises :class:`SettingsError` naming the setting, its flag and its
environment variable, before anything binds a port.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import grpc

ENV_PREFIX = "GREETER_"


class SettingsError(ValueError):
    """A setting has a value the server cannot run with."""


# --- value parsers: each takes the raw text and returns a typed value or raises ValueError ---

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def parse_int(text: str) -> int:
    return int(text.strip())


def parse_float(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def parse_str(text: str) -> str:
    return text.strip()


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


_URL = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/\S*)?")


def parse_url(text: str) -> str:
    """An http:// or https:// URL (empty: none)."""
    url = text.strip()
    if url and not _URL.fullmatch(url):
        raise ValueError(f"expected an http:// or https:// URL (http://host:4317), got {url!r}")
    return url


def parse_status(text: str) -> grpc.StatusCode:
    """A gRPC status by name (``UNAVAILABLE``) or number (``14``)."""
    return status_code(text)


def status_code(text: str) -> grpc.StatusCode:
    raw = text.strip()
    if raw.isdigit():
        for code in grpc.StatusCode:
            if code.value[0] == int(raw):
                return code
        raise ValueError(f"no gRPC status has the number {raw}")
    try:
        return grpc.StatusCode[raw.upper()]
    except KeyError:
        raise ValueError(f"unknown gRPC status {text!r}") from None


# --- value checks: each takes a parsed value and says what is wrong with it, or None ---

Check = Callable[[Any], "str | None"]


def valid_port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else f"{value} is not a valid port"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def between(
    low: float, high: float, text: str = "{value} is not between {low} and {high}"
) -> Check:
    """A check of ``low <= value <= high``; ``text`` says what is wrong (``{value}``,
    ``{low}``, ``{high}`` filled in)."""

    def check(value: float) -> str | None:
        return None if low <= value <= high else text.format(value=value, low=low, high=high)

    return check


def one_of(choices: Sequence[str]) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"{value!r} is not one of {tuple(choices)}"

    return check


def each(check: Check) -> Check:
    """A check of every item of a list setting (every problem, in one text)."""

    def check_all(values: Sequence[Any]) -> str | None:
        problems = [p for p in map(check, values) if p]
        return "; ".join(problems) or None

    return check_all


def readable_file(path: str) -> str | None:
    if not path or _is_file(path):
        return None
    return f"file {path[:200]!r} does not exist or is not readable"


def origin(value: str) -> str | None:
    if value == "*" or _ORIGIN.fullmatch(value):
        return None
    return f"{value[:100]!r} is not an origin (scheme://host[:port], no path) or *"


def not_ok(value: grpc.StatusCode) -> str | None:
    return "OK is not a fault" if value == grpc.StatusCode.OK else None


def _setting(
    default: Any,
    help: str,
    parse: Callable[[str], Any],
    *,
    metavar: str | None = None,
    secret: bool = False,
    check: Check | None = None,
    choices: Sequence[str] = (),
) -> Any:
    """A setting: its default, help and parser; ``check`` what a parsed value must satisfy
    on its own (other settings aside); ``choices`` the values it may take (the flag accepts
    only those)."""
    if choices and check is None:
        check = one_of(choices)
    return field(
        default=default,
        metadata={
            "help": help,
            "parse": parse,
            "metavar": metavar,
            "secret": secret,
            "check": check,
            "choices": tuple(choices),
        },
    )


LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "text"]
EventLoop = Literal["auto", "asyncio", "uvloop"]
ThreadPolicy = Literal["batch", "normal"]
AuthExempt = Literal["health", "reflection"]
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
EVENT_LOOPS: tuple[EventLoop, ...] = get_args(EventLoop)
THREAD_POLICIES: tuple[ThreadPolicy, ...] = get_args(ThreadPolicy)
AUTH_EXEMPT_CHOICES: tuple[AuthExempt, ...] = get_args(AuthExempt)
MAX_STREAM_MESSAGES = 100_000
MAX_LISTENERS = 64
MAX_ACCEPT_DEPTH = 256
MIB = 1024 * 1024
# With --interop the server's message limits are raised to interop_max_message_size plus this:
# a reply's payload of that many bytes, with its protobuf framing, still fits.
INTEROP_FRAMING = 1024
MAX_INTEROP_MESSAGES = 100_000
MAX_QUEUE_TARGET = 10.0
MAX_ADMISSION_LIMIT = 1_000_000
MAX_CORE_WAIT = 3600
_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)
_BYTES = "must be between {low} and {high} bytes"
_PERCENT = between(0, 100, "must be a percentage between {low} and {high}")


@dataclass(frozen=True)
class Settings:
    """Everything ``greeter serve`` can be told. Durations are in seconds."""

    # -- listening --
    host: str = _setting(
        "[::]",
        "address to bind the gRPC port on, or unix:/path for a unix socket",
        parse_str,
        check=not_empty,
    )
    port: int = _setting(50051, "gRPC port (0: any free port)", parse_int, check=valid_port)
    metrics_host: str = _setting("[::]", "address to bind the metrics port on", parse_str)
    metrics_port: int = _setting(
        9090, "Prometheus /metrics port (0 turns metrics off)", parse_int, check=valid_port
    )
    web_host: str = _setting(
        "[::]", "address to bind the gRPC-Web port on", parse_str, check=not_empty
    )
    web_port: int = _setting(
        0,
        "gRPC-Web and browser page port, HTTP/1.1 and HTTP/2 (0 turns it off)",
        parse_int,
        check=valid_port,
    )
    web_cors_origins: tuple[str, ...] = _setting(
        (),
        "comma-separated origins (https://app.example.com) whose pages may call the web"
        " port from a browser, or * for any; empty: only the port's own page",
        parse_list,
        metavar="ORIGINS",
        check=each(origin),
    )
    workers: int = _setting(
        1,
        "server processes sharing the port (0 or 'auto': one per core)",
        lambda t: _workers(t),
        check=between(1, 256),
    )
    listeners: int = _setting(
        8,
        "gRPC servers in each process sharing the port (SO_REUSEPORT), each accepting its own"
        " connections; grpc.aio accepts one call per method and server per event-loop turn",
        parse_int,
        check=between(1, MAX_LISTENERS),
    )
    accept_depth: int = _setting(
        16,
        "calls of each method a listener accepts per event-loop turn (grpc.aio alone: 1);"
        " more lets one connection, such as a gateway's, get what several get",
        parse_int,
        check=between(1, MAX_ACCEPT_DEPTH),
    )
    event_loop: EventLoop = _setting(
        "auto", "event loop: auto, asyncio or uvloop", parse_str, choices=EVENT_LOOPS
    )
    thread_policy: ThreadPolicy = _setting(
        "batch",
        "Linux scheduling of grpc's poller and I/O threads: batch (they never preempt the"
        " event loop on wake-up; fewer context switches on a busy core) or normal",
        parse_str,
        metavar="POLICY",
        choices=THREAD_POLICIES,
    )
    # -- the Greeter --
    stream_count: int = _setting(10, "replies per SayHelloStreamReply call", parse_int)
    stream_interval: float = _setting(
        0.0, "pause between streamed replies, seconds", parse_float, check=non_negative
    )
    stream_max: int = _setting(
        1000,
        "cap on replies per server stream and messages per bidi stream "
        "(x-greeter-stream-count may ask for up to this many)",
        parse_int,
        check=between(1, MAX_STREAM_MESSAGES, "must be between {low} and {high}"),
    )
    reflection: bool = _setting(True, "serve reflection v1 and v1alpha", parse_bool)
    # -- the gRPC interop service (docs/interop.md) --
    interop: bool = _setting(
        False,
        "serve grpc.testing.TestService and UnimplementedService, the standard gRPC interop"
        " service (for greeter check and any gRPC interop client); it does work callers ask for,"
        " within the interop_max_* limits",
        parse_bool,
    )
    interop_max_message_size: int = _setting(
        8 * MIB,
        "largest payload an interop call may send or ask for, bytes; with --interop the"
        " max_recv/max_send_message_size limits are raised to fit it",
        parse_int,
        check=between(0, 2**31 - 1 - INTEROP_FRAMING, _BYTES),
    )
    interop_max_interval: float = _setting(
        300.0,
        "longest pause an interop call may ask for before one reply, seconds",
        parse_float,
        # interval_us is an int32 of microseconds
        check=between(0, 2147, "must be between {low} and {high} seconds"),
    )
    interop_max_duration: float = _setting(
        600.0,
        "longest an interop call may last, from its start to its last asked-for pause, seconds",
        parse_float,
        check=between(0, 86400, "must be between {low} and {high} seconds"),
    )
    interop_max_messages: int = _setting(
        1000,
        "most replies, and most request messages, in one interop call",
        parse_int,
        check=between(1, MAX_INTEROP_MESSAGES, "must be between {low} and {high}"),
    )
    # -- serving identity, sent as x-greeter-* response metadata --
    cluster_name: str = _setting("", "cluster this server runs in", parse_str)
    pod_name: str = _setting(socket.gethostname(), "pod name (default: host name)", parse_str)
    node_name: str = _setting("", "node the pod runs on", parse_str)
    zone: str = _setting("", "zone the node is in", parse_str)
    namespace: str = _setting("", "namespace the pod runs in", parse_str)
    # -- graceful drain --
    drain_delay: float = _setting(
        5.0,
        "seconds to keep serving after SIGTERM while health says NOT_SERVING",
        parse_float,
        check=non_negative,
    )
    grace_period: float = _setting(
        20.0,
        "seconds in-flight RPCs get to finish after the drain delay",
        parse_float,
        check=non_negative,
    )
    # -- connection management --
    keepalive_time: float = _setting(
        60.0, "seconds between server keepalive pings", parse_float, check=positive
    )
    keepalive_timeout: float = _setting(
        20.0, "seconds to wait for a ping ack", parse_float, check=positive
    )
    keepalive_min_time: float = _setting(
        10.0,
        "shortest client ping interval allowed (keepalive enforcement)",
        parse_float,
        check=non_negative,
    )
    max_connection_idle: float = _setting(
        300.0, "close connections idle this long (0: never)", parse_float, check=non_negative
    )
    max_connection_age: float = _setting(
        0.0,
        "close connections after this long so clients rebalance (0: never)",
        parse_float,
        check=non_negative,
    )
    max_connection_age_grace: float = _setting(
        30.0,
        "time RPCs get to finish on a connection past its max age",
        parse_float,
        check=non_negative,
    )
    max_concurrent_streams: int = _setting(
        1000, "concurrent streams per HTTP/2 connection", parse_int, check=positive
    )
    max_recv_message_size: int = _setting(
        4 * 1024 * 1024,
        "largest request message, bytes",
        parse_int,
        check=between(1024, 2**31 - 1, _BYTES),
    )
    max_metadata_size: int = _setting(
        16 * 1024,
        "largest request metadata, bytes as HTTP/2 counts them (name + value + 32 a "
        "field); more gets RESOURCE_EXHAUSTED (grpc-core takes the header list up to this "
        "+ 4 KiB, for the call's own and a gateway's headers)",
        parse_int,
        check=between(1024, 1024 * 1024, _BYTES),
    )
    max_send_message_size: int = _setting(
        4 * 1024 * 1024,
        "largest response message, bytes",
        parse_int,
        check=between(1024, 2**31 - 1, _BYTES),
    )
    # -- admission control (past capacity) --
    admission_control: bool = _setting(
        True,
        "past capacity, shed what cannot be served in time: grpc drops calls it held too"
        " long (admission_core_wait), calls whose deadline passed are not run, and while the"
        " event loop has a standing queue new calls that cannot wait it out get"
        " RESOURCE_EXHAUSTED ('overloaded: ...'); health and reflection are never shed",
        parse_bool,
    )
    admission_queue_target: float = _setting(
        0.0,
        "seconds of standing event-loop queue above which new calls without the time to wait"
        " it out are shed (0: adaptive, 4x the loop's delay without a queue, 0.02 to 0.25)",
        parse_float,
        metavar="SECONDS",
        check=between(0, MAX_QUEUE_TARGET, "must be between {low} and {high} seconds"),
    )
    admission_limit: int = _setting(
        0,
        "calls in flight per process beyond which new calls are shed (0: no fixed cap)",
        parse_int,
        check=between(0, MAX_ADMISSION_LIMIT, "must be between {low} and {high}"),
    )
    admission_core_wait: int = _setting(
        1,
        "whole seconds a call may wait in grpc-core for the server to take it before grpc"
        " drops it (the client sees CANCELLED); grpc's own default is 30",
        parse_int,
        metavar="SECONDS",
        check=between(1, MAX_CORE_WAIT, "must be between {low} and {high} seconds"),
    )
    # -- TLS --
    tls_cert: str = _setting(
        "", "PEM certificate chain file (TLS on when set)", parse_str, check=readable_file
    )
    tls_key: str = _setting("", "PEM private key file", parse_str, check=readable_file)
    tls_client_ca: str = _setting(
        "",
        "PEM CA bundle; when set, clients must present a certificate it signed",
        parse_str,
        check=readable_file,
    )
    # -- auth --
    auth_enabled: bool = _setting(False, "require a bearer token", parse_bool)
    auth_tokens: tuple[str, ...] = _setting(
        (),
        "comma-separated tokens; 'TOKEN METHOD...' limits one to some methods",
        parse_list,
        secret=True,
    )
    auth_tokens_file: str = _setting(
        "", "file of tokens, one per line: TOKEN [METHOD ...]", parse_str, check=readable_file
    )
    auth_exempt: tuple[AuthExempt, ...] = _setting(
        ("health", "reflection"),
        "services that need no token: health (Health and Readiness), reflection",
        parse_list,
        check=each(one_of(AUTH_EXEMPT_CHOICES)),
    )
    # -- fault injection --
    fault_enabled: bool = _setting(
        False, "inject faults (and honour x-greeter-fault-* request metadata)", parse_bool
    )
    fault_delay: float = _setting(
        0.0, "seconds of delay to inject", parse_float, check=non_negative
    )
    fault_delay_percent: float = _setting(
        0.0, "percent of calls that get the delay", parse_float, check=_PERCENT
    )
    fault_status: grpc.StatusCode = _setting(
        grpc.StatusCode.UNAVAILABLE, "status to inject (name or number)", parse_status, check=not_ok
    )
    fault_status_percent: float = _setting(
        0.0, "percent of calls that fail with the status", parse_float, check=_PERCENT
    )
    # -- logging --
    log_level: LogLevel = _setting(
        "info", "debug, info, warning or error", parse_str, choices=LOG_LEVELS
    )
    log_format: LogFormat = _setting("json", "json or text", parse_str, choices=LOG_FORMATS)
    access_log: bool = _setting(True, "log one line per RPC", parse_bool)
    server_timing: bool = _setting(
        True,
        "send a server-timing trailer (app;dur=MS: the server's own time) on every reply",
        parse_bool,
    )
    access_log_budget: int = _setting(
        10,
        "OK calls logged in full each second before sampling starts",
        parse_int,
        check=non_negative,
    )
    access_log_sample: float = _setting(
        0.01,
        "fraction of OK calls logged past the per-second budget (errors are always logged)",
        parse_float,
        check=between(0, 1, "must be a fraction between {low} and {high}"),
    )
    # -- tracing (OpenTelemetry; the SDK's own OTEL_* environment applies too) --
    otlp_endpoint: str = _setting(
        "",
        "OTLP collector to send one span per call to (http://collector:4317 for grpc, :4318"
        " with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf); empty: OTEL_EXPORTER_OTLP_ENDPOINT"
        " decides, and without either tracing is off",
        parse_url,
        metavar="URL",
    )

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise SettingsError("\n".join(f"{describe(name)}: {text}" for name, text in problems))

    def problems(self) -> list[tuple[str, str]]:
        """Every problem at once: each setting's own check (declared with it), then the
        checks across settings."""
        bad: list[tuple[str, str]] = []
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            problem = check(getattr(self, f.name)) if check else None
            if problem:
                bad.append((f.name, problem))
        return bad + self._cross_field_problems()

    def _cross_field_problems(self) -> list[tuple[str, str]]:
        """What one setting's value means for another's."""
        bad: list[tuple[str, str]] = []
        if self.metrics_port and self.metrics_port == self.port:
            bad.append(("metrics_port", "must differ from the gRPC port"))
        if self.web_port and self.web_port in (self.port, self.metrics_port):
            bad.append(("web_port", "must differ from the gRPC and metrics ports"))
        if not 0 <= self.stream_count <= self.stream_max:
            bad.append(("stream_count", f"must be between 0 and stream_max ({self.stream_max})"))
        if bool(self.tls_cert) != bool(self.tls_key):
            bad.append(("tls_key" if self.tls_cert else "tls_cert", "TLS needs both cert and key"))
        if self.tls_client_ca and not self.tls_cert:
            bad.append(("tls_client_ca", "client certificates need TLS (tls_cert, tls_key)"))
        if self.auth_enabled and not (self.auth_tokens or self.auth_tokens_file):
            bad.append(("auth_enabled", "needs auth_tokens or auth_tokens_file"))
        if self.interop_max_duration < self.interop_max_interval:
            bad.append(
                (
                    "interop_max_duration",
                    "must not be shorter than interop_max_interval"
                    f" ({self.interop_max_interval:g})",
                )
            )
        return bad

    @property
    def recv_message_limit(self) -> int:
        """The largest request message the server takes: max_recv_message_size, raised with
        --interop to fit interop_max_message_size."""
        return self._message_limit(self.max_recv_message_size)

    @property
    def send_message_limit(self) -> int:
        """The largest reply message the server sends (as recv_message_limit)."""
        return self._message_limit(self.max_send_message_size)

    def _message_limit(self, configured: int) -> int:
        if not self.interop:
            return configured
        return max(configured, self.interop_max_message_size + INTEROP_FRAMING)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def is_unix(self) -> bool:
        """The gRPC port is a unix socket (``host`` is ``unix:/path``)."""
        return self.host.startswith("unix:")

    @property
    def identity(self) -> dict[str, str]:
        """The serving identity, as response metadata (empty values left out)."""
        pairs = {
            "x-greeter-cluster": self.cluster_name,
            "x-greeter-pod": self.pod_name,
            "x-greeter-node": self.node_name,
            "x-greeter-zone": self.zone,
        }
        return {key: value for key, value in pairs.items() if value}

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """The settings as loggable values, secrets masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = f"<{len(value)} hidden>"
            elif isinstance(value, grpc.StatusCode):
                value = value.name
            out[f.name] = value
        return out


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte...
        return False


def _workers(text: str) -> int:
    if text.strip().lower() in {"auto", "0"}:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return parse_int(text)


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def describe(name: str) -> str:
    """How a user refers to a setting: ``drain_delay (--drain-delay / GREETER_DRAIN_DELAY)``."""
    return f"{name} ({flag_name(name)} / {env_name(name)})"


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


# ``greeter serve --help`` groups the flags: each group starts at the setting named here and
# runs to the next (the settings are declared in this order).
HELP_GROUPS = {
    "host": "ports",
    "workers": "processes",
    "stream_count": "calls",
    "interop": "interop service (grpc.testing, docs/interop.md)",
    "cluster_name": "identity (x-greeter-* metadata and metrics labels)",
    "drain_delay": "shutdown",
    "keepalive_time": "connections and limits",
    "admission_control": "admission control (past capacity)",
    "tls_cert": "TLS",
    "auth_enabled": "auth",
    "fault_enabled": "fault injection",
    "log_level": "logging",
    "otlp_endpoint": "tracing (OpenTelemetry: also the OTEL_* environment, docs/tracing.md)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per setting, in groups. Flags stay raw text: :func:`load` parses
    them."""
    group: Any = parser
    for f in _FIELDS.values():
        if f.name in HELP_GROUPS:
            group = parser.add_argument_group(HELP_GROUPS[f.name])
        default = f.default
        if isinstance(default, grpc.StatusCode):
            default = default.name
        elif isinstance(default, tuple):
            default = ",".join(default)
        elif isinstance(default, bool):
            # A bare switch means true (``--auth-enabled``), ``--no-auth-enabled`` false, and an
            # explicit value still works (``--auth-enabled false``), like the env variable.
            text = str(default).lower()
            exclusive = group.add_mutually_exclusive_group()
            exclusive.add_argument(
                flag_name(f.name),
                dest=f.name,
                nargs="?",
                const="true",
                default=None,
                metavar="BOOL",
                help=f"{f.metadata['help']} [env {env_name(f.name)}, default {text!r}]",
            )
            exclusive.add_argument(
                "--no-" + flag_name(f.name)[2:],
                dest=f.name,
                action="store_const",
                const="false",
                help=f"same as {flag_name(f.name)} false",
            )
            continue
        group.add_argument(
            flag_name(f.name),
            dest=f.name,
            default=None,
            choices=f.metadata.get("choices") or None,
            metavar=f.metadata.get("metavar") or f.name.split("_")[-1].upper(),
            help=f"{f.metadata['help']} [env {env_name(f.name)}, default {default!r}]",
        )


def load(
    flags: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings: flags (raw text) over ``GREETER_*`` environment over defaults."""
    flags = flags or {}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    unparsed: list[str] = []
    for name, f in _FIELDS.items():
        raw = flags.get(name)
        source = flag_name(name)
        if raw is None and env_name(name) in environ:
            raw, source = environ[env_name(name)], env_name(name)
        if raw is None:
            continue
        try:
            values[name] = f.metadata["parse"](raw)
        except ValueError as exc:
            unparsed.append(f"{describe(name)}: bad value from {source}: {exc}")
    if unparsed:  # every one at once; the values' own checks need values
        raise SettingsError("\n".join(unparsed))
    return Settings(**values)


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    """``GREETER_*`` variables that name no setting: logged as a warning, not fatal,
    because Kubernetes service links inject ``<SERVICE>_PORT``-style variables."""
    return sorted(
        key
        for key in environ
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() not in _FIELDS
    )


def parse_token_lines(lines: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Parse ``TOKEN [METHOD ...]`` entries; blank lines and ``#`` comments are skipped."""
    entries = []
    for line in lines:
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        entries.append((parts[0], tuple(parts[1:])))
    return entries
