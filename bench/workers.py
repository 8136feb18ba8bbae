"""Scaling of ``greeter serve --workers N``: throughput and connection spread.

``python -m bench.workers [--workers 1,2] [--rounds 3] [--duration 5]
[--server-cores 0-3 --client-cores 4-5]``

For each N (interleaved over the rounds) it starts our server with N workers
(unpinned unless ``--server-cores`` says where) and

- opens ``--probe-channels`` separate connections and asks each which worker
  answered (``x-greeter-worker``): the kernel's spread of connections;
- drives unary SayHello with h2load over ``--connections`` connections
  (h2load unpinned too, so on a 2-core machine it competes with the workers:
  the scaling it shows there is a floor, not the ceiling; on a larger machine
  ``--server-cores`` and ``--client-cores`` keep the two apart, the
  measurement the ``>= 0.85 x N`` goal asks for);
- reads each worker's CPU time, to show the load really spread, and divides
  the calls by the CPU time all workers used: calls per server CPU-second,
  which stays flat as N grows when the workers do not get in each other's way
  (what ``--workers`` can promise when there are cores to spare).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc

from bench import h2load
from bench.run import _greeter, cpu_seconds, started
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc


def worker_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in cmdline:
                pids.append(int(entry.name))
    return sorted(pids)


def spread(port: int, channels: int, timeout: float = 5.0) -> Counter[str]:
    seen: Counter[str] = Counter()
    request = helloworld_pb2.HelloRequest(name="spread")
    for _ in range(channels):
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            _, call = helloworld_pb2_grpc.GreeterStub(channel).SayHello.with_call(
                request, timeout=timeout
            )
            seen[dict(call.trailing_metadata() or ()).get("x-greeter-worker", "-")] += 1
    return seen


def cpu_list(text: str) -> set[int]:
    """``0-3,6`` -> {0, 1, 2, 3, 6}: the taskset/cpuset list syntax, checked against the
    cores this process may use."""
    allowed = os.sched_getaffinity(0)
    cores: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not (first.isdigit() and (last.isdigit() if dash else True)):
            raise argparse.ArgumentTypeError(f"not a CPU list (like 0-3,6): {text!r}")
        low, high = int(first), int(last) if dash else int(first)
        if low > high:
            raise argparse.ArgumentTypeError(f"a range runs low to high (like 0-3): {part!r}")
        if high > max(allowed):
            raise argparse.ArgumentTypeError(
                f"cores not available here: {part!r} (this process may use {sorted(allowed)})"
            )
        cores.update(range(low, high + 1))
    missing = cores - allowed
    if missing:
        raise argparse.ArgumentTypeError(
            f"cores not available here: {sorted(missing)} (this process may use {sorted(allowed)})"
        )
    return cores


def all_listening(port: int, workers: int, timeout: float = 20.0) -> None:
    """Wait (new connections, one at a time) until every worker has answered one, so
    no measurement starts while a worker is still importing; RuntimeError on timeout."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"only workers {sorted(seen)} of {workers} answered in {timeout} s")
        with contextlib.suppress(grpc.RpcError):  # a worker bound, not serving yet: again
            seen.update(spread(port, 1, timeout=min(5.0, left)))
        seen.discard("-")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--probe-channels", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    parser.add_argument("--json", type=Path, help="also write the samples here")
    parser.add_argument(
        "--server-cores", type=cpu_list, help="run the server (all workers) on these, e.g. 0-3"
    )
    parser.add_argument("--client-cores", type=cpu_list, help="run h2load on these, e.g. 4,5")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    shared = (args.server_cores or set()) & (args.client_cores or set())
    if shared:
        print(f"warning: server and client share cores {sorted(shared)}", file=sys.stderr)
    counts = [int(n) for n in args.workers.split(",")]
    rps: dict[int, list[float]] = {n: [] for n in counts}
    spreads: dict[int, Counter[str]] = {n: Counter() for n in counts}
    cpu_share: dict[int, list[list[float]]] = {n: [] for n in counts}
    efficiency: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="greeter-bench-") as tmp:
        request = h2load.write_request_file(Path(tmp))
        for rnd in range(args.rounds):
            for n in counts if rnd % 2 == 0 else reversed(counts):
                spec = _greeter(
                    f"greeter-w{n}",
                    f"{n} workers",
                    GREETER_WORKERS=str(n),
                    GREETER_ACCESS_LOG_SAMPLE="0.01",
                )
                with started(spec, args.server_cores) as (port, proc):
                    if n > 1:
                        all_listening(port, n)
                    spreads[n] += spread(port, args.probe_channels)
                    pids = worker_pids(proc.pid) or [proc.pid]
                    before = [cpu_seconds(p) for p in pids]
                    result = h2load.run(
                        port,
                        "SayHello",
                        request,
                        duration=args.duration,
                        warm_up=0.5,
                        clients=args.connections,
                        streams=args.streams,
                        core=args.client_cores,
                        threads=min(len(args.client_cores or (0,)), args.connections),
                    )
                    used = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
                rps[n].append(result.rps)
                cpu_share[n].append(used)
                # CPU time includes the warm-up: divide by every call made.
                efficiency[n].append(result.rps * (args.duration + 0.5) / max(sum(used), 1e-9))
                print(
                    f"round {rnd + 1} workers={n}: {result.rps:,.0f} rps, CPU s "
                    + " / ".join(f"{c:.2f}" for c in used),
                    file=sys.stderr,
                )
    stalled = [n for n in counts if not statistics.median(rps[n])]
    if stalled:  # nothing to compare with: say so, rather than divide by zero
        print(
            f"error: h2load measured no calls with {', '.join(map(str, stalled))} worker(s): "
            "the server answered none in the run (a machine too busy to start it?)",
            file=sys.stderr,
        )
        return 1
    one = statistics.median(rps[counts[0]])
    one_eff = statistics.median(efficiency[counts[0]])
    print(
        "| workers | unary rps (median) | x 1 worker | calls per server CPU-second | x 1 worker "
        "| connections per worker | CPU s per worker (last round) |"
    )
    print("|---:|---:|---:|---:|---:|---|---|")
    for n in counts:
        med, eff = statistics.median(rps[n]), statistics.median(efficiency[n])
        per = ", ".join(f"w{k}: {v}" for k, v in sorted(spreads[n].items()))
        cpu = " / ".join(f"{c:.1f}" for c in cpu_share[n][-1])
        print(
            f"| {n} | {med:,.0f} | {med / one:.2f} | {eff:,.0f} | {eff / one_eff:.2f} "
            f"| {per} | {cpu} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    str(n): {
                        "rps": rps[n],
                        "calls_per_cpu_second": efficiency[n],
                        "connections_per_worker": dict(spreads[n]),
                        "cpu_seconds_per_worker": cpu_share[n],
                    }
                    for n in counts
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
