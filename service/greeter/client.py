"""Client channels as gateways need them: plaintext or TLS, a custom CA,
skipped verification (``--insecure``), an authority override for addressing a
gateway by IP, client certificates for mTLS, and ``dns:///`` targets with a
load-balancing policy. Shared by ``greeter call``, ``health``, ``load`` and ``check``:
:func:`add_target_arguments` and :func:`target_from_args` are the one place their common
flags are declared and read (the target, TLS, ``-m``, ``--connect-timeout``), so the
commands agree on names, parsing and defaults; :func:`add_call_arguments` adds the call's
(``--method``/``--call``, ``-t``); :func:`connect_failure` is the one line every command
prints when it cannot connect (refused, nothing answering, TLS vs plaintext); and
:data:`EXIT_CODES` is the exit-code table of the client commands.

``--insecure`` keeps grpcurl's meaning (TLS, server not verified), ``--skipTLS`` is
ghz's name for the same thing, and ``--plaintext`` asks for no TLS explicitly. When a
TLS flag meets a server that speaks plaintext, :func:`plaintext_hint` says so and names
the flag to drop instead of passing on the TLS library's record-layer error."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from greeter import timing
from greeter.durations import NOTE, duration_arg

# gRPC status names by number, and HTTP status → gRPC code as grpc maps a non-200
# response (gRPC "HTTP to gRPC Status Code Mapping"; anything else is UNKNOWN): the h2 load
# engine and the gRPC-Web client both read responses by them.
CODE_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
HTTP_CODES = {
    400: "INTERNAL",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "UNIMPLEMENTED",
    429: "UNAVAILABLE",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "UNAVAILABLE",
}
IDENTITY_KEYS = ("x-greeter-cluster", "x-greeter-pod", "x-greeter-node", "x-greeter-zone")
LB_POLICIES = ("pick_first", "round_robin")
# The calls the client commands make, by short name: their method path.
CALLS = {
    "SayHello": "/helloworld.Greeter/SayHello",
    "SayHelloStreamReply": "/helloworld.Greeter/SayHelloStreamReply",
    "SayHelloBidiStream": "/helloworld.Greeter/SayHelloBidiStream",
    "Check": "/grpc.health.v1.Health/Check",
}
# grpcurl's and ghz's default connect timeout; the same for every command.
DEFAULT_CONNECT_TIMEOUT = "10s"
# ghz's default call deadline: greeter call's and greeter load's.
DEFAULT_CALL_TIMEOUT = "20s"

# The exit codes of the client commands (call, load, load merge, check): one table.
# greeter health keeps grpc-health-probe's (HEALTH_EXIT_CODES), so probes written for it work.
EXIT_OK, EXIT_FAILED, EXIT_BAD_ARGS, EXIT_CONNECT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = (
    (EXIT_OK, "ok"),
    (EXIT_FAILED, "failed: the call (call), a gate or every call (load), a case (check)"),
    (EXIT_BAD_ARGS, "bad arguments (one line saying which)"),
    (EXIT_CONNECT, "cannot connect (one line saying why)"),
    (EXIT_INTERRUPTED, "interrupted by Ctrl-C (load prints the partial report first)"),
)
HEALTH_EXIT_CODES = (
    (0, "serving"),
    (1, "bad arguments"),
    (2, "cannot connect"),
    (3, "RPC failure"),
    (4, "not serving"),
)


def help_epilog(examples: str, codes: Sequence[tuple[int, str]] = EXIT_CODES) -> str:
    """A client command's --help epilog: its examples, the exit-code table (``  0   ok``, one
    code a line) and what a duration may be."""
    table = "\n".join(f"  {code:<3} {meaning}" for code, meaning in codes)
    return f"{examples.rstrip()}\n\nexit codes:\n{table}\n\n{NOTE}"


class TargetError(ValueError):
    """The target or its TLS options cannot be used (bad arguments)."""


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """TargetError naming the first of the flags ``names`` (dests, e.g. ``connect_timeout``)
    whose value is not more than 0."""
    for name in names:
        if not getattr(args, name) > 0:
            raise TargetError(f"--{name.replace('_', '-')} must be positive")


def add_output_arguments(group: argparse._ArgumentGroup, formats: Sequence[str]) -> None:
    """``-O/--format`` (the first of ``formats`` the default) and ``-o/--output``, ghz's
    names: how and where a client command writes its report."""
    group.add_argument("-O", "--format", choices=formats, default=formats[0], help="output format")
    group.add_argument(
        "-o",
        "--output",
        default="",
        metavar="FILE",
        help="write the report to this file (default: standard output)",
    )


def write_output(text: str, path: str) -> None:
    """The report to the file ``-o`` named, or to standard output."""
    if path:
        Path(path).write_text(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


@dataclass(frozen=True)
class Target:
    address: str
    tls: bool = False
    plaintext: bool = False
    cacert: str = ""
    insecure: bool = False
    authority: str = ""
    cert: str = ""
    key: str = ""
    lb_policy: str = ""
    metadata: tuple[tuple[str, str], ...] = field(default=())

    @property
    def secure(self) -> bool:
        return self.tls or self.insecure or bool(self.cacert or self.cert)


def add_target_arguments(parser: argparse.ArgumentParser, protocols: Sequence[str] = ()) -> None:
    """The target flags, with the names grpcurl and ghz users already type (``protocols``:
    also ``--protocol``, the first one the default)."""
    g = parser.add_argument_group("target")
    g.add_argument("address", help="host:port, [v6]:port or dns:///host:port")
    if protocols:
        g.add_argument(
            "--protocol",
            choices=protocols,
            default=protocols[0],
            help="grpc (HTTP/2), or gRPC-Web over HTTP/1.1 to a web port or gateway "
            "(grpc-web-text: its base64 form)",
        )
    g.add_argument("--tls", action="store_true", help="use TLS (implied by the flags below)")
    g.add_argument(
        "--plaintext", action="store_true", help="no TLS (the default without TLS flags)"
    )
    g.add_argument(
        "--cacert",
        default="",
        metavar="FILE",
        help="PEM CA bundle to verify the server with (default: the system's)",
    )
    g.add_argument(
        "--insecure",
        "--skipTLS",
        dest="insecure",
        action="store_true",
        help="TLS without verifying the server (grpcurl's -insecure; ghz's --skipTLS). "
        "For no TLS at all use --plaintext",
    )
    g.add_argument(
        "--authority",
        default="",
        metavar="NAME",
        help="virtual host (:authority and TLS name), e.g. grpc.example.com "
        "(default: the address's host)",
    )
    g.add_argument(
        "--cert", default="", metavar="FILE", help="PEM client certificate for mTLS (default: none)"
    )
    g.add_argument(
        "--key", default="", metavar="FILE", help="PEM client key for mTLS (default: none)"
    )
    g.add_argument(
        "--lb-policy",
        default="",
        choices=LB_POLICIES,
        help="load balancing over a dns:/// target's addresses (default: gRPC's, pick_first)",
    )
    g.add_argument(
        "--connect-timeout",
        type=duration_arg,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="DURATION",
        help="time to connect; a refused port or a TLS/plaintext mix-up fails at once, "
        "naming the cause",
    )
    g.add_argument(
        "-m",
        "--metadata",
        action="append",
        default=[],
        metavar="KEY:VALUE",
        help="request metadata, repeatable, or a JSON object "
        "(e.g. -m 'authorization:Bearer T'; default: none)",
    )


def add_call_arguments(
    group: argparse._ArgumentGroup,
    methods: Sequence[str],
    flag: str = "--method",
    timeout: str = DEFAULT_CALL_TIMEOUT,
) -> None:
    """The method to call (``--method``, greeter call's name, and ``--call``, ghz's: each
    command takes both, ``flag`` first) and ``-t/--timeout``, the call's deadline."""
    other = "--call" if flag == "--method" else "--method"

    def method(text: str) -> str:
        try:
            name = call_name(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if name not in methods:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(methods)}")
        return name

    group.add_argument(
        flag,
        other,
        dest="method",
        type=method,
        default=methods[0],
        metavar="METHOD",
        help=f"{', '.join(methods)} (or the full name, e.g. helloworld.Greeter.SayHello)",
    )
    group.add_argument(
        "-t",
        "--timeout",
        type=duration_arg,
        default=timeout,
        metavar="DURATION",
        help="each call's deadline",
    )


def call_name(text: str) -> str:
    """``SayHello``, ``helloworld.Greeter.SayHello``, ``/helloworld.Greeter/SayHello``,
    ``grpc.health.v1.Health/Check`` ... → the short call name."""
    raw = text.strip().strip("/")
    for name, path in CALLS.items():
        full = path.strip("/")
        if raw in (name, full, full.replace("/", ".")):
            return name
    raise ValueError(f"unknown call {text!r}; choose from {', '.join(CALLS)}")


def parse_metadata(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``key:value`` pairs (or one JSON object, as ghz takes) → gRPC metadata."""
    pairs: list[tuple[str, str]] = []
    for item in items:
        text = item.strip()
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TargetError(f"metadata {item!r} is not valid JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise TargetError(f"metadata {item!r} must be a JSON object")
            pairs += [(str(k), str(v)) for k, v in obj.items()]
            continue
        key, sep, value = text.partition(":")
        if not sep or not key.strip():
            raise TargetError(f"metadata {item!r} must look like key:value")
        pairs.append((key.strip(), value.strip()))
    for key, _ in pairs:
        lowered = key.lower()
        if lowered != key or not all(c.isalnum() or c in "-_." for c in key):
            raise TargetError(f"metadata key {key!r} must be lower-case letters, digits, - _ .")
        if lowered.startswith("grpc-") or lowered.startswith(":"):
            raise TargetError(f"metadata key {key!r} is reserved")
    return tuple(pairs)


def target_from_args(args: argparse.Namespace) -> Target:
    target = Target(
        address=args.address,
        tls=args.tls,
        plaintext=args.plaintext,
        cacert=args.cacert,
        insecure=args.insecure,
        authority=args.authority,
        cert=args.cert,
        key=args.key,
        lb_policy=args.lb_policy,
        metadata=parse_metadata(args.metadata),
    )
    validate(target)
    return target


def validate(target: Target) -> None:
    if not target.address.strip():
        raise TargetError("the target address is empty")
    if bool(target.cert) != bool(target.key):
        raise TargetError("--cert and --key go together")
    if target.insecure and target.cacert:
        raise TargetError("--insecure and --cacert contradict each other")
    if target.plaintext and target.secure:
        raise TargetError(
            f"--plaintext and {' '.join(tls_flags(target))} contradict each other "
            "(--plaintext means no TLS)"
        )
    for name in ("cacert", "cert", "key"):
        path = getattr(target, name)
        if path and not Path(path).is_file():
            raise TargetError(f"--{name} {path!r}: no such file")
    host, port = split_host_port(target.address)
    if not host or not port.isdigit():
        raise TargetError(f"target {target.address!r} must be host:port")


def split_host_port(address: str) -> tuple[str, str]:
    """``dns:///h:p``, ``h:p`` and ``[v6]:p`` → (host, port)."""
    rest = address
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if rest.startswith(prefix):
            rest = rest[len(prefix) :]
            break
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        return host, tail.lstrip(":")
    host, _, port = rest.rpartition(":")
    return host, port


def tls_flags(target: Target) -> list[str]:
    """The flags that made ``target`` use TLS, as the user typed them."""
    given = [
        ("--tls", target.tls),
        ("--insecure/--skipTLS", target.insecure),
        ("--cacert", bool(target.cacert)),
        ("--cert/--key", bool(target.cert)),
    ]
    return [flag for flag, on in given if on]


def speaks_plaintext_h2(address: str, timeout: float = 2.0) -> bool:
    """True when the server at ``address`` answers an HTTP/2 cleartext preface with a
    SETTINGS frame: a plaintext gRPC port, not a TLS one."""
    host, port = split_host_port(address)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(preface)
            head = b""
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    return False
                head += chunk
    except (OSError, ValueError):
        return False
    return head[3] == 0x04  # frame type SETTINGS


def plaintext_hint(target: Target, timeout: float = 2.0) -> str | None:
    """When TLS was asked for but the server speaks plaintext: what to do instead."""
    if not target.secure or not speaks_plaintext_h2(target.address, timeout):
        return None
    flags = " ".join(tls_flags(target))
    return (
        f"the server speaks plaintext gRPC, not TLS: drop {flags} (or pass --plaintext). "
        "In greeter, as in grpcurl, --insecure means TLS without verification; "
        "ghz's --insecure (no TLS) is greeter's --plaintext"
    )


def speaks_tls(address: str, timeout: float = 2.0) -> bool:
    """True when the server at ``address`` answers a TLS ClientHello with TLS (a handshake,
    or an alert such as "certificate required"): a TLS port, not a plaintext one."""
    host, port = split_host_port(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw),
        ):
            return True
    except ssl.SSLError as exc:
        return "ALERT" in str(exc.reason or "")
    except (OSError, ValueError):
        return False


def connect_hint(target: Target, timeout: float = 2.0) -> str | None:
    """Why ``target`` cannot be reached, found by trying it: refused, no answer, a host that
    does not resolve, or TLS against plaintext either way (None: none of these, and the
    caller says what its library said). Blocking: from a loop, run it in a thread."""
    if "," in target.address or target.address.startswith("unix:"):
        return None  # several addresses, or a socket path: nothing one probe can tell
    host, port = split_host_port(target.address)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except socket.gaierror:
        return f"the host {host!r} does not resolve"
    except ConnectionRefusedError:
        return (
            f"connection refused: nothing listens on port {port} "
            "(a wrong port, or the server is not running)"
        )
    except TimeoutError:
        return f"no answer within {timeout:g}s (a wrong address, or a firewall drops the packets)"
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    if target.secure:
        return plaintext_hint(target, timeout)
    if speaks_tls(target.address, timeout):
        return (
            "the server speaks TLS, not plaintext: add --tls (or --insecure to skip "
            "verifying it, --cacert FILE for a private CA)"
        )
    return None


def connect_failure(target: Target, detail: str, timeout: float = 2.0) -> str:
    """The one line every client command prints when it cannot connect: ``cannot connect to
    ADDRESS: WHY``, WHY from :func:`connect_hint` when it knows, else ``detail``. Blocking."""
    return f"cannot connect to {target.address}: {connect_hint(target, timeout) or detail}"


class ConnectFailed(ConnectionError):
    """The channel did not connect; the message is :func:`connect_failure`'s line."""


async def wait_connected(channel: grpc.aio.Channel, target: Target, timeout: float) -> None:
    """Wait until ``channel`` is connected, at most ``timeout`` seconds. A refused port or a
    TLS mismatch puts the channel in TRANSIENT_FAILURE at once: that fails at once too, with
    :func:`connect_failure`'s line in a :class:`ConnectFailed`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        left = deadline - loop.time()
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE or left <= 0:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.wait_for_state_change(state), left)
        state = channel.get_state(try_to_connect=True)
    else:
        return
    hint = await asyncio.to_thread(connect_hint, target, min(timeout, 2.0))
    if hint:
        raise ConnectFailed(f"cannot connect to {target.address}: {hint}")
    raise ConnectFailed(
        f"cannot connect to {target.address}: {await grpc_reason(channel, timeout)}"
    )


async def open_connected_channel(
    target: Target, connect_timeout: float, options: Sequence[tuple[str, object]] = ()
) -> grpc.aio.Channel:
    """:func:`open_channel` (with ``options``), connected (:func:`wait_connected`): the
    channel, or :class:`ConnectFailed` with :func:`connect_failure`'s line. Call from a
    running loop."""
    try:
        channel = open_channel(target, connect_timeout, options)
    except OSError as exc:  # --insecure fetches the server's certificate first
        line = await asyncio.to_thread(connect_failure, target, str(exc))
        raise ConnectFailed(line) from None
    try:
        await wait_connected(channel, target, connect_timeout)
    except BaseException:
        await channel.close()
        raise
    return channel


async def grpc_reason(channel: grpc.aio.Channel, timeout: float) -> str:
    """What grpc says when asked once without waiting for readiness (refused, TLS...)."""
    reason = f"not ready within --connect-timeout {timeout:g}s"
    probe = channel.unary_unary("/grpc.health.v1.Health/Check", _registered_method=True)
    try:
        await probe(b"", timeout=min(timeout, 5.0), wait_for_ready=False)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            reason = f"{reason}; {exc.details()}"
    return reason


def _fetch_server_certificate(target: Target, timeout: float) -> bytes:
    """The server's own certificate, unverified: what ``--insecure`` trusts."""
    host, port = split_host_port(target.address)
    context = tls_context(target, verify=False)
    server_name = target.authority.split(":")[0] or (host if not is_ip(host) else None)
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ConnectionError("the server sent no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def tls_context(target: Target, verify: bool) -> ssl.SSLContext:
    """A client TLS context for ``target``: its CA (or no verification), its client
    certificate, ALPN h2."""
    if verify:
        context = ssl.create_default_context(cafile=target.cacert or None)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if target.cert:
        context.load_cert_chain(target.cert, target.key)
    context.set_alpn_protocols(["h2"])
    return context


def is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _certificate_name(pem: bytes) -> str:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        if names:
            return str(names[0]).replace("*", "wildcard")
    except x509.ExtensionNotFound:
        pass
    common = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(common[0].value) if common else ""


def channel_options(target: Target, extra: Sequence[tuple[str, object]] = ()) -> list:
    options: list[tuple[str, object]] = [("grpc.enable_retries", 0), *extra]
    if target.authority:
        options.append(("grpc.default_authority", target.authority))
        if target.secure and not target.insecure:
            options.append(("grpc.ssl_target_name_override", target.authority.split(":")[0]))
    if target.lb_policy:
        options.append(
            ("grpc.service_config", json.dumps({"loadBalancingConfig": [{target.lb_policy: {}}]}))
        )
    return options


def credentials(
    target: Target, connect_timeout: float = 5.0
) -> tuple[grpc.ChannelCredentials | None, list]:
    """Channel credentials and the extra options they need (blocking for ``--insecure``)."""
    if not target.secure:
        return None, []
    chain = Path(target.cert).read_bytes() if target.cert else None
    key = Path(target.key).read_bytes() if target.key else None
    extra: list[tuple[str, object]] = []
    roots: bytes | None
    if target.insecure:
        try:
            roots = _fetch_server_certificate(target, connect_timeout)
        except ssl.SSLError as exc:
            raise ConnectionError(plaintext_hint(target) or str(exc)) from None
        name = _certificate_name(roots)
        if name:
            extra.append(("grpc.ssl_target_name_override", name))
    else:
        roots = Path(target.cacert).read_bytes() if target.cacert else None
    return grpc.ssl_channel_credentials(roots, key, chain), extra


def open_channel(
    target: Target, connect_timeout: float = 5.0, options: Sequence[tuple[str, object]] = ()
) -> grpc.aio.Channel:
    """An aio channel to the target. Call from inside a running loop."""
    creds, extra = credentials(target, connect_timeout)
    opts = channel_options(target, [*options, *extra])
    address = target.address
    if creds is None:
        return grpc.aio.insecure_channel(address, options=opts)
    return grpc.aio.secure_channel(address, creds, options=opts)


def server_timing_of(*metadata: Sequence[tuple[str, object]] | None) -> str | None:
    """The ``server-timing`` value found first in trailers and/or headers, as sent."""
    for md in metadata:
        for key, value in md or ():
            if key == timing.KEY:
                return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def identity_of(*metadata: Sequence[tuple[str, object]] | None) -> dict[str, str]:
    """The serving identity found in response headers and/or trailers."""
    found: dict[str, str] = {}
    for md in metadata:
        for key, value in md or ():
            if key in IDENTITY_KEYS and key not in found:
                found[key] = value.decode() if isinstance(value, bytes) else str(value)
    return found
