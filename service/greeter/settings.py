"""One frozen settings object for the server, built from flags over ``GREETER_*`` env over defaults.

Every setting is declared once, as a dataclass field whose metadata gives its
help text and parser. From that single table come the ``greeter serve`` flags
(``--drain-delay``), the environment variables (``GREETER_DRAIN_DELAY``) and the
validation; nothing else in the package reads the environment.

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
from typing import Any

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


def _setting(
    default: Any,
    help: str,
    parse: Callable[[str], Any],
    *,
    metavar: str | None = None,
    secret: bool = False,
) -> Any:
    return field(
        default=default,
        metadata={"help": help, "parse": parse, "metavar": metavar, "secret": secret},
    )


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
THREAD_POLICIES = ("batch", "normal")
AUTH_EXEMPT_CHOICES = ("health", "reflection")
MAX_STREAM_MESSAGES = 100_000
MAX_LISTENERS = 64
MAX_ACCEPT_DEPTH = 256
MIB = 1024 * 1024
# With --interop the server's message limits are raised to interop_max_message_size plus this:
# a reply's payload of that many bytes, with its protobuf framing, still fits.
INTEROP_FRAMING = 1024
MAX_INTEROP_MESSAGES = 100_000
_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


@dataclass(frozen=True)
class Settings:
    """Everything ``greeter serve`` can be told. Durations are in seconds."""

    # -- listening --
    host: str = _setting(
        "[::]", "address to bind the gRPC port on, or unix:/path for a unix socket", parse_str
    )
    port: int = _setting(50051, "gRPC port (0: any free port)", parse_int)
    metrics_host: str = _setting("[::]", "address to bind the metrics port on", parse_str)
    metrics_port: int = _setting(9090, "Prometheus /metrics port (0 turns metrics off)", parse_int)
    web_host: str = _setting("[::]", "address to bind the gRPC-Web port on", parse_str)
    web_port: int = _setting(
        0,
        "gRPC-Web and browser page port, HTTP/1.1 and HTTP/2 (0 turns it off)",
        parse_int,
    )
    web_cors_origins: tuple[str, ...] = _setting(
        (),
        "comma-separated origins (https://app.example.com) whose pages may call the web"
        " port from a browser, or * for any; empty: only the port's own page",
        parse_list,
        metavar="ORIGINS",
    )
    workers: int = _setting(
        1, "server processes sharing the port (0 or 'auto': one per core)", lambda t: _workers(t)
    )
    listeners: int = _setting(
        8,
        "gRPC servers in each process sharing the port (SO_REUSEPORT), each accepting its own"
        " connections; grpc.aio accepts one call per method and server per event-loop turn",
        parse_int,
    )
    accept_depth: int = _setting(
        16,
        "calls of each method a listener accepts per event-loop turn (grpc.aio alone: 1);"
        " more lets one connection, such as a gateway's, get what several get",
        parse_int,
    )
    event_loop: str = _setting("auto", "event loop: auto, asyncio or uvloop", parse_str)
    thread_policy: str = _setting(
        "batch",
        "Linux scheduling of grpc's poller and I/O threads: batch (they never preempt the"
        " event loop on wake-up; fewer context switches on a busy core) or normal",
        parse_str,
        metavar="POLICY",
    )
    # -- the Greeter --
    stream_count: int = _setting(10, "replies per SayHelloStreamReply call", parse_int)
    stream_interval: float = _setting(0.0, "pause between streamed replies, seconds", parse_float)
    stream_max: int = _setting(
        1000,
        "cap on replies per server stream and messages per bidi stream "
        "(x-greeter-stream-count may ask for up to this many)",
        parse_int,
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
    )
    interop_max_interval: float = _setting(
        300.0, "longest pause an interop call may ask for before one reply, seconds", parse_float
    )
    interop_max_duration: float = _setting(
        600.0,
        "longest an interop call may last, from its start to its last asked-for pause, seconds",
        parse_float,
    )
    interop_max_messages: int = _setting(
        1000, "most replies, and most request messages, in one interop call", parse_int
    )
    # -- serving identity, sent as x-greeter-* response metadata --
    cluster_name: str = _setting("", "cluster this server runs in", parse_str)
    pod_name: str = _setting(socket.gethostname(), "pod name (default: host name)", parse_str)
    node_name: str = _setting("", "node the pod runs on", parse_str)
    zone: str = _setting("", "zone the node is in", parse_str)
    namespace: str = _setting("", "namespace the pod runs in", parse_str)
    # -- graceful drain --
    drain_delay: float = _setting(
        5.0, "seconds to keep serving after SIGTERM while health says NOT_SERVING", parse_float
    )
    grace_period: float = _setting(
        20.0, "seconds in-flight RPCs get to finish after the drain delay", parse_float
    )
    # -- connection management --
    keepalive_time: float = _setting(60.0, "seconds between server keepalive pings", parse_float)
    keepalive_timeout: float = _setting(20.0, "seconds to wait for a ping ack", parse_float)
    keepalive_min_time: float = _setting(
        10.0, "shortest client ping interval allowed (keepalive enforcement)", parse_float
    )
    max_connection_idle: float = _setting(
        300.0, "close connections idle this long (0: never)", parse_float
    )
    max_connection_age: float = _setting(
        0.0,
        "close connections after this long so clients rebalance (0: never)",
        parse_float,
    )
    max_connection_age_grace: float = _setting(
        30.0, "time RPCs get to finish on a connection past its max age", parse_float
    )
    max_concurrent_streams: int = _setting(
        1000, "concurrent streams per HTTP/2 connection", parse_int
    )
    max_recv_message_size: int = _setting(
        4 * 1024 * 1024, "largest request message, bytes", parse_int
    )
    max_metadata_size: int = _setting(
        16 * 1024,
        "largest request metadata, bytes as HTTP/2 counts them (name + value + 32 a "
        "field); more gets RESOURCE_EXHAUSTED (grpc-core takes the header list up to this "
        "+ 4 KiB, for the call's own and a gateway's headers)",
        parse_int,
    )
    max_send_message_size: int = _setting(
        4 * 1024 * 1024, "largest response message, bytes", parse_int
    )
    # -- TLS --
    tls_cert: str = _setting("", "PEM certificate chain file (TLS on when set)", parse_str)
    tls_key: str = _setting("", "PEM private key file", parse_str)
    tls_client_ca: str = _setting(
        "", "PEM CA bundle; when set, clients must present a certificate it signed", parse_str
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
        "", "file of tokens, one per line: TOKEN [METHOD ...]", parse_str
    )
    auth_exempt: tuple[str, ...] = _setting(
        ("health", "reflection"),
        "services that need no token: health (Health and Readiness), reflection",
        parse_list,
    )
    # -- fault injection --
    fault_enabled: bool = _setting(
        False, "inject faults (and honour x-greeter-fault-* request metadata)", parse_bool
    )
    fault_delay: float = _setting(0.0, "seconds of delay to inject", parse_float)
    fault_delay_percent: float = _setting(0.0, "percent of calls that get the delay", parse_float)
    fault_status: grpc.StatusCode = _setting(
        grpc.StatusCode.UNAVAILABLE, "status to inject (name or number)", parse_status
    )
    fault_status_percent: float = _setting(
        0.0, "percent of calls that fail with the status", parse_float
    )
    # -- logging --
    log_level: str = _setting("info", "debug, info, warning or error", parse_str)
    log_format: str = _setting("json", "json or text", parse_str)
    access_log: bool = _setting(True, "log one line per RPC", parse_bool)
    server_timing: bool = _setting(
        True,
        "send a server-timing trailer (app;dur=MS: the server's own time) on every reply",
        parse_bool,
    )
    access_log_budget: int = _setting(
        10, "OK calls logged in full each second before sampling starts", parse_int
    )
    access_log_sample: float = _setting(
        0.01,
        "fraction of OK calls logged past the per-second budget (errors are always logged)",
        parse_float,
    )

    def __post_init__(self) -> None:
        for name, problem in self._problems():
            raise SettingsError(f"{describe(name)}: {problem}")

    def _problems(self) -> list[tuple[str, str]]:
        bad: list[tuple[str, str]] = []
        for name in ("port", "metrics_port", "web_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                bad.append((name, f"{value} is not a valid port"))
        if self.metrics_port and self.metrics_port == self.port:
            bad.append(("metrics_port", "must differ from the gRPC port"))
        if self.web_port and self.web_port in (self.port, self.metrics_port):
            bad.append(("web_port", "must differ from the gRPC and metrics ports"))
        if not self.web_host:
            bad.append(("web_host", "must not be empty"))
        for origin in self.web_cors_origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                bad.append(
                    (
                        "web_cors_origins",
                        f"{origin[:100]!r} is not an origin (scheme://host[:port], no path) or *",
                    )
                )
        if not self.host:
            bad.append(("host", "must not be empty"))
        if self.workers < 1 or self.workers > 256:
            bad.append(("workers", f"{self.workers} is not between 1 and 256"))
        if not 1 <= self.listeners <= MAX_LISTENERS:
            bad.append(("listeners", f"{self.listeners} is not between 1 and {MAX_LISTENERS}"))
        if not 1 <= self.accept_depth <= MAX_ACCEPT_DEPTH:
            bad.append(
                ("accept_depth", f"{self.accept_depth} is not between 1 and {MAX_ACCEPT_DEPTH}")
            )
        if self.event_loop not in EVENT_LOOPS:
            bad.append(("event_loop", f"{self.event_loop!r} is not one of {EVENT_LOOPS}"))
        if self.thread_policy not in THREAD_POLICIES:
            bad.append(("thread_policy", f"{self.thread_policy!r} is not one of {THREAD_POLICIES}"))
        if not 1 <= self.stream_max <= MAX_STREAM_MESSAGES:
            bad.append(("stream_max", f"must be between 1 and {MAX_STREAM_MESSAGES}"))
        if not 0 <= self.stream_count <= self.stream_max:
            bad.append(("stream_count", f"must be between 0 and stream_max ({self.stream_max})"))
        positive = ("keepalive_time", "keepalive_timeout", "max_concurrent_streams")
        non_negative = (
            "stream_interval",
            "drain_delay",
            "grace_period",
            "keepalive_min_time",
            "max_connection_idle",
            "max_connection_age",
            "max_connection_age_grace",
            "fault_delay",
        )
        bad += [(n, "must be positive") for n in positive if getattr(self, n) <= 0]
        bad += [(n, "must not be negative") for n in non_negative if getattr(self, n) < 0]
        bad += self._interop_problems()
        if not 1024 <= self.max_metadata_size <= 1024 * 1024:
            bad.append(("max_metadata_size", "must be between 1024 and 1048576 bytes"))
        for name in ("max_recv_message_size", "max_send_message_size"):
            if not 1024 <= getattr(self, name) <= 2**31 - 1:
                bad.append((name, "must be between 1024 and 2147483647 bytes"))
        for name in ("fault_delay_percent", "fault_status_percent"):
            if not 0 <= getattr(self, name) <= 100:
                bad.append((name, "must be a percentage between 0 and 100"))
        if self.access_log_budget < 0:
            bad.append(("access_log_budget", "must not be negative"))
        if not 0 <= self.access_log_sample <= 1:
            bad.append(("access_log_sample", "must be a fraction between 0 and 1"))
        if self.fault_status == grpc.StatusCode.OK:
            bad.append(("fault_status", "OK is not a fault"))
        if self.log_level not in LOG_LEVELS:
            bad.append(("log_level", f"{self.log_level!r} is not one of {LOG_LEVELS}"))
        if self.log_format not in LOG_FORMATS:
            bad.append(("log_format", f"{self.log_format!r} is not one of {LOG_FORMATS}"))
        for item in self.auth_exempt:
            if item not in AUTH_EXEMPT_CHOICES:
                bad.append(("auth_exempt", f"{item!r} is not one of {AUTH_EXEMPT_CHOICES}"))
        bad += self._file_problems()
        if self.auth_enabled and not (self.auth_tokens or self.auth_tokens_file):
            bad.append(("auth_enabled", "needs auth_tokens or auth_tokens_file"))
        return bad

    def _interop_problems(self) -> list[tuple[str, str]]:
        bad: list[tuple[str, str]] = []
        top = 2**31 - 1 - INTEROP_FRAMING
        if not 0 <= self.interop_max_message_size <= top:
            bad.append(("interop_max_message_size", f"must be between 0 and {top} bytes"))
        if not 0 <= self.interop_max_interval <= 2147:  # interval_us is an int32 of µs
            bad.append(("interop_max_interval", "must be between 0 and 2147 seconds"))
        if not self.interop_max_interval <= self.interop_max_duration <= 86400:
            bad.append(
                (
                    "interop_max_duration",
                    "must be between interop_max_interval"
                    f" ({self.interop_max_interval:g}) and 86400 seconds",
                )
            )
        if not 1 <= self.interop_max_messages <= MAX_INTEROP_MESSAGES:
            bad.append(("interop_max_messages", f"must be between 1 and {MAX_INTEROP_MESSAGES}"))
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

    def _file_problems(self) -> list[tuple[str, str]]:
        bad: list[tuple[str, str]] = []
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_tokens_file"):
            path = getattr(self, name)
            if path and not _is_file(path):
                bad.append((name, f"file {path[:200]!r} does not exist or is not readable"))
        if bool(self.tls_cert) != bool(self.tls_key):
            bad.append(("tls_key" if self.tls_cert else "tls_cert", "TLS needs both cert and key"))
        if self.tls_client_ca and not self.tls_cert:
            bad.append(("tls_client_ca", "client certificates need TLS (tls_cert, tls_key)"))
        return bad

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

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
    "tls_cert": "TLS",
    "auth_enabled": "auth",
    "fault_enabled": "fault injection",
    "log_level": "logging",
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
            raise SettingsError(f"{describe(name)}: bad value from {source}: {exc}") from None
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
