"""Side-by-side throughput of the Greeter and its Python peers, in one run.

``python -m bench.run`` (``--quick`` for a smoke run, ``--help`` for the rest).

Every server runs as its own process pinned to one core, h2load to another (the
first and the last this process may use, when it may use two or more). Each
round starts each server in turn (the order rotates between rounds so no server
always goes first), checks that it answers with grpc-status OK, then measures
unary SayHello and server-streaming SayHelloStreamReply with h2load, and the
server's CPU time per call from /proc. Reported: medians over the rounds, and
the median of each round's ratio to the bare grpc.aio baseline measured in that
same round; then, when the fastest Python peers ran too, each of our servers
against them round by round (unary against the sync thread-pool server,
streaming against grpclib). Exits 1 when a server failed its check or a
measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench import h2load
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

BASELINE = "bare-aio"
TOKEN = "bench-token"
STREAM_COUNT = 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: argv (``{port}`` filled in), ``GREETER_*`` env (``{port}``,
    ``{metrics_port}`` and ``{web_port}`` filled in), call headers."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    headers: tuple[str, ...] = ()
    about: str = ""


def _greeter(name: str, about: str, headers: tuple[str, ...] = (), **env: str) -> ServerSpec:
    base = {
        "GREETER_HOST": "127.0.0.1",
        "GREETER_PORT": "{port}",
        "GREETER_METRICS_HOST": "127.0.0.1",
        "GREETER_METRICS_PORT": "{metrics_port}",
        "GREETER_STREAM_MAX": str(STREAM_COUNT),
        "GREETER_DRAIN_DELAY": "0",
        "GREETER_GRACE_PERIOD": "1",
    }
    base.update(env)
    return ServerSpec(name, ("-m", "bench.servers.greeter_serve"), base, headers, about)


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("bare-aio", ("-m", "bench.servers.bare_aio", "{port}"), about="baseline"),
        ServerSpec(
            "bare-aio-uvloop",
            ("-m", "bench.servers.bare_aio", "{port}", "--uvloop"),
            about="baseline on uvloop",
        ),
        ServerSpec(
            "sync-pool",
            ("-m", "bench.servers.sync_pool", "{port}", "10"),
            about="grpc sync server, ThreadPoolExecutor(10)",
        ),
        ServerSpec(
            "grpclib",
            ("-m", "bench.servers.grpclib_server", "{port}"),
            about="grpclib 0.4 on uvloop",
        ),
        _greeter(
            "greeter-plain",
            "metrics off, access log off (identity only)",
            GREETER_METRICS_PORT="0",
            GREETER_ACCESS_LOG="false",
        ),
        _greeter(
            "greeter-defaults",
            "defaults: metrics, identity, access log (10 calls a second, then 1 %)",
        ),
        _greeter(
            "greeter-instrumented",
            "metrics, identity, access log sampled 1%",
            GREETER_ACCESS_LOG_SAMPLE="0.01",
            GREETER_CLUSTER_NAME="bench",
            GREETER_ZONE="z1",
        ),
        _greeter(
            "greeter-all",
            "instrumented + auth (bearer token)",
            (f"authorization: Bearer {TOKEN}",),
            GREETER_ACCESS_LOG_SAMPLE="0.01",
            GREETER_CLUSTER_NAME="bench",
            GREETER_ZONE="z1",
            GREETER_AUTH_ENABLED="true",
            GREETER_AUTH_TOKENS=TOKEN,
        ),
    )
}
DEFAULT_SERVERS = (
    "bare-aio",
    "sync-pool",
    "grpclib",
    "greeter-defaults",
    "greeter-instrumented",
    "greeter-all",
)


def server_names(text: str) -> list[str]:
    """``a,b@X=1,Y=2;c``: names separated by ``;`` or ``,``; a comma-separated piece that
    is ``KEY=VALUE`` with no ``@`` continues the variant before it."""
    names: list[str] = []
    for group in text.split(";"):
        for piece in group.split(","):
            piece = piece.strip()
            if not piece:
                continue
            if "@" not in piece and "=" in piece and names and "@" in names[-1]:
                names[-1] += "," + piece
            else:
                names.append(piece)
    return names


def parse_spec(text: str) -> ServerSpec:
    """``name`` or ``name@ENV=VALUE,ENV2=VALUE`` (a variant with extra environment)."""
    name, _, extra = text.partition("@")
    if name not in SERVERS:
        raise SystemExit(f"unknown server {name!r}; known: {', '.join(SERVERS)}")
    spec = SERVERS[name]
    if not extra:
        return spec
    env = dict(spec.env)
    for pair in extra.split(","):
        key, _, value = pair.partition("=")
        env[key] = value
    return ServerSpec(text, spec.argv, env, spec.headers, f"{spec.about}; {extra}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pin_cores() -> tuple[int, int] | tuple[None, None]:
    """The server's core and the client's: the first and the last this process may use
    (none when it may use only one)."""
    cores = sorted(os.sched_getaffinity(0))
    return (cores[0], cores[-1]) if len(cores) > 1 else (None, None)


PORT_ATTEMPTS = 3
STDERR_TAIL = 2000


class ServerExited(RuntimeError):
    """A benchmark server exited before or while it was checked: its code and stderr tail."""

    def __init__(self, name: str, code: int, tail: str) -> None:
        self.port_clash = "address already in use" in tail.lower()
        super().__init__(f"{name} exited with {code}; its stderr ends:\n{tail or '(nothing)'}")


def stderr_tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-STDERR_TAIL:].decode(errors="replace").strip()


@contextlib.contextmanager
def started(
    spec: ServerSpec, core: int | set[int] | None
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The server running on ``core`` (one, or a set; its worker processes inherit it).

    Ports are picked free, then bound by the child: another process can take one in between
    (a busy CI machine runs other tests' servers). A child that exits at start-up because its
    address is in use is started again on fresh ports; any other exit is reported with its
    exit code and the tail of its stderr."""
    with tempfile.TemporaryDirectory(prefix="bench-server-") as scratch:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            log = Path(scratch) / f"stderr-{attempt}.log"
            serving = False
            try:
                with _started_once(spec, core, log) as running:
                    serving = True
                    yield running
                return
            except ServerExited as exc:
                if serving or not exc.port_clash or attempt == PORT_ATTEMPTS:
                    raise
                print(f"{spec.name}: port taken at start-up, retrying", file=sys.stderr)


@contextlib.contextmanager
def _started_once(
    spec: ServerSpec, core: int | set[int] | None, log: Path
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port, metrics_port = free_port(), free_port()
    # {web_port}: a free port for variants that turn the gRPC-Web port on
    # (greeter-instrumented@GREETER_WEB_PORT={web_port}); nothing binds it otherwise.
    fill = {"port": str(port), "metrics_port": str(metrics_port), "web_port": str(free_port())}

    def filled(text: str) -> str:
        for key, value in fill.items():
            text = text.replace("{" + key + "}", value)
        return text

    argv = [sys.executable, *(filled(a) for a in spec.argv)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREETER_")}
    env.update({k: filled(v) for k, v in spec.env.items()})
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)

    def pin() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core} if isinstance(core, int) else core)

    with log.open("wb") as errors:
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=errors, preexec_fn=pin
        )
    try:
        check_server(port, spec, proc, log)
        yield port, proc
        if proc.poll() is not None:  # it died during the measurement
            raise ServerExited(spec.name, proc.returncode, stderr_tail(log))
    finally:
        stop(proc, 15)


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def check_server(port: int, spec: ServerSpec, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the server answers, then check both methods end with grpc-status OK."""
    metadata = [tuple(h.split(": ", 1)) for h in spec.headers]
    deadline = time.monotonic() + 20
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        request = helloworld_pb2.HelloRequest(name="world")
        while True:
            if proc.poll() is not None:
                raise ServerExited(spec.name, proc.returncode, stderr_tail(log))
            try:
                reply, call = stub.SayHello.with_call(request, timeout=2, metadata=metadata)
                break
            except grpc.RpcError as exc:
                if proc.poll() is not None:  # whoever answered, it was not our server
                    raise ServerExited(spec.name, proc.returncode, stderr_tail(log)) from None
                waiting = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if time.monotonic() > deadline or exc.code() not in waiting:
                    raise
                time.sleep(0.1)
        if call.code() != grpc.StatusCode.OK or not reply.message:
            raise RuntimeError(f"{spec.name}: SayHello gave {call.code()}")
        md = [*metadata, ("x-greeter-stream-count", str(STREAM_COUNT))]
        stream = stub.SayHelloStreamReply(request, timeout=10, metadata=md)
        got = sum(1 for _ in stream)
        if stream.code() != grpc.StatusCode.OK or got != STREAM_COUNT:
            raise RuntimeError(f"{spec.name}: stream gave {stream.code()} after {got} replies")


@dataclass
class Sample:
    server: str
    round: int
    unary_rps: float
    unary_cpu_us: float
    stream_msgs: float
    stream_cpu_us: float


def load(
    port: int,
    spec: ServerSpec,
    request: Path,
    args: argparse.Namespace,
    *,
    stream: bool,
    clients: int,
    streams: int,
    core: int | None,
) -> h2load.H2loadResult:
    """h2load on SayHello, or on SayHelloStreamReply asking for STREAM_COUNT replies, for
    ``args.duration`` after ``args.warm_up``, with the server's call headers."""
    method = "SayHelloStreamReply" if stream else "SayHello"
    extra = (f"x-greeter-stream-count: {STREAM_COUNT}",) if stream else ()
    return h2load.run(
        port,
        method,
        request,
        duration=args.duration,
        warm_up=args.warm_up,
        clients=clients,
        streams=streams,
        headers=(*spec.headers, *extra),
        core=core,
    )


def measure(spec: ServerSpec, rnd: int, args: argparse.Namespace, request: Path) -> Sample:
    server_core, client_core = pin_cores() if args.pin else (None, None)
    with started(spec, server_core) as (port, proc):
        before = cpu_seconds(proc.pid)
        unary = load(
            port, spec, request, args, stream=False,
            clients=args.connections, streams=args.streams, core=client_core,
        )  # fmt: skip
        middle = cpu_seconds(proc.pid)
        stream = load(
            port, spec, request, args, stream=True,
            clients=1, streams=args.stream_concurrency, core=client_core,
        )  # fmt: skip
        after = cpu_seconds(proc.pid)
    # CPU time includes the warm-up, so divide by every call made, not just the measured ones.
    unary_calls = unary.rps * (args.duration + args.warm_up)
    stream_msgs = stream.rps * STREAM_COUNT
    stream_total = stream_msgs * (args.duration + args.warm_up)
    return Sample(
        spec.name,
        rnd,
        unary.rps,
        (middle - before) / unary_calls * 1e6 if unary_calls else 0.0,
        stream_msgs,
        (after - middle) / stream_total * 1e6 if stream_total else 0.0,
    )


def summarise(samples: list[Sample], order: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in order:
        mine = [s for s in samples if s.server == name]
        if not mine:
            continue
        base = {s.round: s for s in samples if s.server == BASELINE}
        ratios_u = [
            s.unary_rps / base[s.round].unary_rps
            for s in mine
            if s.round in base and base[s.round].unary_rps
        ]
        ratios_s = [
            s.stream_msgs / base[s.round].stream_msgs
            for s in mine
            if s.round in base and base[s.round].stream_msgs
        ]
        # calls per CPU-second relative to the baseline: less sensitive than throughput
        # to other processes taking the server's core away
        paired = [(base[s.round], s) for s in mine if s.round in base]
        eff_u = [b.unary_cpu_us / s.unary_cpu_us for b, s in paired if s.unary_cpu_us]
        eff_s = [b.stream_cpu_us / s.stream_cpu_us for b, s in paired if s.stream_cpu_us]
        rows.append(
            {
                "server": name,
                "unary_rps": statistics.median(s.unary_rps for s in mine),
                "unary_x": statistics.median(ratios_u) if ratios_u else None,
                "unary_cpu_us": statistics.median(s.unary_cpu_us for s in mine),
                "unary_eff_x": statistics.median(eff_u) if eff_u else None,
                "stream_msgs": statistics.median(s.stream_msgs for s in mine),
                "stream_x": statistics.median(ratios_s) if ratios_s else None,
                "stream_cpu_us": statistics.median(s.stream_cpu_us for s in mine),
                "stream_eff_x": statistics.median(eff_s) if eff_s else None,
                "unary_all": [round(s.unary_rps) for s in mine],
                "stream_all": [round(s.stream_msgs) for s in mine],
            }
        )
    return rows


# The fastest Python peer measured for each kind of call: what our server is held to. Unary
# calls are held to a second one too, grpc.aio's own server at its fastest (on uvloop).
UNARY_PEER = "sync-pool"
STREAM_PEER = "grpclib"
UVLOOP_PEER = "bare-aio-uvloop"
# JSON key prefix -> (peer, what is compared): calls (unary) or messages (stream)
_COMPARED = {
    "unary_x_peer": (UNARY_PEER, "unary"),
    "stream_x_peer": (STREAM_PEER, "stream"),
    "unary_x_uvloop": (UVLOOP_PEER, "unary"),
}


def _ratios(mine: Sample, peer: Sample | None, kind: str) -> tuple[float, float] | None:
    """Throughput and per-CPU-second ratios of ``mine`` to ``peer`` in one round."""
    if peer is None:
        return None
    rate, cpu = f"{kind}_{'rps' if kind == 'unary' else 'msgs'}", f"{kind}_cpu_us"
    # a zero (no call completed, or CPU time under one clock tick) compares nothing
    if not getattr(peer, rate) or not getattr(mine, cpu):
        return None
    return (
        round(getattr(mine, rate) / getattr(peer, rate), 2),
        round(getattr(peer, cpu) / getattr(mine, cpu), 2),
    )


def peers(samples: list[Sample], order: list[str]) -> list[dict[str, Any]]:
    """Each of our servers against the fastest peers, round by round (a ratio of two
    servers measured minutes apart in one round is the least noisy comparison here):
    throughput ratios, and calls per CPU-second ratios (``unary_cpu_x_peer``...)."""
    by_round: dict[int, dict[str, Sample]] = {}
    for s in samples:
        by_round.setdefault(s.round, {})[s.server] = s
    out = []
    for name in order:
        if not name.startswith("greeter"):
            continue
        row: dict[str, Any] = {"server": name}
        for key in _COMPARED:
            row[key], row[key.replace("_x_", "_cpu_x_", 1)] = [], []
        for rnd in sorted(by_round):
            got = by_round[rnd]
            mine = got.get(name)
            if mine is None:
                continue
            for key, (peer, kind) in _COMPARED.items():
                ratios = _ratios(mine, got.get(peer), kind)
                if ratios is not None:
                    row[key].append(ratios[0])
                    row[key.replace("_x_", "_cpu_x_", 1)].append(ratios[1])
        if any(row[key] for key in _COMPARED):
            out.append(row)
    return out


def ratio_cell(values: list[float], plain_single: bool = False) -> str:
    """Per-round ratios as a table cell: the median in bold, then every round's; a single
    round shown as it is when ``plain_single``; empty when none."""
    if not values:
        return ""
    if plain_single and len(values) == 1:
        return f"{values[0]:.2f}"
    return f"**{statistics.median(values):.2f}** ({', '.join(f'{v:.2f}' for v in values)})"


def peers_table(rows: list[dict[str, Any]]) -> str:
    cell = ratio_cell

    shown = [key for key in _COMPARED if any(r[key] for r in rows)] or list(_COMPARED)[:2]
    header = "| server |"
    for key in shown:
        peer, kind = _COMPARED[key]
        units = "calls" if kind == "unary" else "messages"
        header += f" {kind} x {peer}, median (rounds) | same, {units} per CPU-s |"
    lines = [header, "|---|" + "---|---|" * len(shown)]
    for r in rows:
        cells = "".join(
            f" {cell(r[key])} | {cell(r[key.replace('_x_', '_cpu_x_', 1)])} |" for key in shown
        )
        lines.append(f"| {r['server']} |{cells}")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]], specs: dict[str, ServerSpec]) -> str:
    def x(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    lines = [
        "| server | unary rps | x bare | µs CPU/call | x bare (CPU) "
        "| stream msg/s | x bare | µs CPU/msg | x bare (CPU) | what |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['unary_rps']:,.0f} | {x(r['unary_x'])} | "
            f"{r['unary_cpu_us']:.0f} | {x(r['unary_eff_x'])} | "
            f"{r['stream_msgs']:,.0f} | {x(r['stream_x'])} | "
            f"{r['stream_cpu_us']:.1f} | {x(r['stream_eff_x'])} | {specs[r['server']].about} |"
        )
    return "\n".join(lines)


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import google.protobuf
    import prometheus_client  # noqa: F401

    versions = f"grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}"
    with contextlib.suppress(ImportError):
        import uvloop

        versions += f", uvloop {uvloop.__version__}"
    with contextlib.suppress(ImportError):
        import grpclib

        versions += f", grpclib {grpclib.__version__}"
    return (
        f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, {versions}"
    )


def round_options(
    parser: argparse.ArgumentParser, servers: tuple[str, ...], duration: float
) -> None:
    """The options every side-by-side benchmark shares: rounds, durations, servers, pinning,
    the JSON report (see :func:`settle`)."""
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--duration", type=float, default=duration, help="seconds per test")
    parser.add_argument("--warm-up", type=float, default=1.0, help="seconds of warm-up per test")
    parser.add_argument(
        "--servers",
        default=",".join(servers),
        help="comma- or ;-separated names; a variant adds environment: name@A=1,B=2",
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="don't pin to cores")
    parser.add_argument("--json", type=Path, help="also write the samples and summary here")


def settle(args: argparse.Namespace) -> None:
    """``--quick`` and pinning applied to the options :func:`round_options` added."""
    if args.quick:
        args.rounds, args.duration, args.warm_up = 1, 2.0, 0.5
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        print("fewer than 2 cores available: not pinning", file=sys.stderr)
        args.pin = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    round_options(parser, DEFAULT_SERVERS, 5.0)
    parser.add_argument("--connections", type=int, default=4, help="unary: h2load -c")
    parser.add_argument("--streams", type=int, default=64, help="unary: h2load -m per connection")
    parser.add_argument("--stream-concurrency", type=int, default=4, help="streams in flight")
    args = parser.parse_args(argv)
    settle(args)
    names = server_names(args.servers)
    specs = {s.name: s for s in (parse_spec(n) for n in names)}
    if BASELINE not in specs:
        specs = {BASELINE: SERVERS[BASELINE], **specs}
    order = list(specs)
    samples: list[Sample] = []
    failed = 0
    print(f"machine: {machine()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="greeter-bench-") as tmp:
        request = h2load.write_request_file(Path(tmp))
        for rnd in range(args.rounds):
            shift = rnd % len(order)
            for name in order[shift:] + order[:shift]:
                try:
                    sample = measure(specs[name], rnd, args, request)
                except (RuntimeError, grpc.RpcError, h2load.H2loadError) as exc:
                    print(f"round {rnd + 1}/{args.rounds} {name}: FAILED: {exc}", file=sys.stderr)
                    failed += 1
                    continue
                samples.append(sample)
                print(
                    f"round {rnd + 1}/{args.rounds} {name}: unary {sample.unary_rps:,.0f} rps "
                    f"({sample.unary_cpu_us:.0f} µs CPU), stream {sample.stream_msgs:,.0f} msg/s",
                    file=sys.stderr,
                )
    report: dict[str, Any] = {
        "machine": machine(),
        "command": shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])]),
        "samples": [s.__dict__ for s in samples],
        "failed": failed,
    }
    if args.json:  # the samples first: nothing below can lose them
        args.json.write_text(json.dumps(report, indent=2))
    rows = summarise(samples, order)
    print(table(rows, specs))
    against = peers(samples, order)
    if against:
        print()
        print(peers_table(against))
    if args.json:
        args.json.write_text(json.dumps({**report, "summary": rows, "peers": against}, indent=2))
    if failed:
        print(f"{failed} measurement(s) failed: see above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
