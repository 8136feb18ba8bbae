"""Context switches and CPU time per unary call (or streamed message), thread by thread.

``python -m bench.switches [--stream] [SERVER ...]`` (names as in ``bench.run``,
variants ``name@ENV=VALUE`` included; default: the bare baseline on uvloop and
our server with each thread policy).

Each server runs pinned to one core, h2load to another (as in ``bench.run``;
unary: 256 calls in flight;
``--stream``: 4 SayHelloStreamReply streams of 1000 messages in flight on one
connection, as ``bench.run`` streams; 1 s warm-up, 4 s measured). Before and
after, every thread's voluntary and involuntary context switches and CPU time
are read from /proc; printed per call (or message), for the threads that did
anything. An involuntary switch of the event loop's thread is a preemption:
docs/performance.md explains why they matter.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench import h2load
from bench.run import CLK_TCK, STREAM_COUNT, parse_spec, pin_cores, started

DEFAULT = (
    "bare-aio-uvloop",
    "greeter-instrumented",
    "greeter-instrumented@GREETER_THREAD_POLICY=normal",
)


POLICY = {0: "normal", 3: "batch", 5: "idle"}


def policy(tid: int) -> str:
    try:
        return POLICY.get(os.sched_getscheduler(tid), "other")
    except OSError:
        return "-"


def threads(pid: int) -> dict[int, tuple[str, int, int, float]]:
    """tid -> (name, voluntary switches, involuntary switches, CPU seconds)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            name = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        out[int(task.name)] = (
            name,
            int(fields["voluntary_ctxt_switches"]),
            int(fields["nonvoluntary_ctxt_switches"]),
            (int(stat[11]) + int(stat[12])) / CLK_TCK,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.switches", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stream", action="store_true", help="per streamed message")
    parser.add_argument("servers", nargs="*", help=f"default: {' '.join(DEFAULT)}")
    args = parser.parse_args(argv)
    stream = args.stream
    names = args.servers or list(DEFAULT)
    unit = "msg" if stream else "call"
    server_core, client_core = pin_cores()
    with tempfile.TemporaryDirectory(prefix="greeter-bench-") as tmp:
        request = h2load.write_request_file(Path(tmp))
        for name in names:
            spec = parse_spec(name)
            with started(spec, server_core) as (port, proc):
                before = threads(proc.pid)
                result = h2load.run(
                    port,
                    "SayHelloStreamReply" if stream else "SayHello",
                    request,
                    duration=4,
                    warm_up=1,
                    clients=1 if stream else 4,
                    streams=4 if stream else 64,
                    headers=(
                        (*spec.headers, f"x-greeter-stream-count: {STREAM_COUNT}")
                        if stream
                        else spec.headers
                    ),
                    core=client_core,
                )
                after = threads(proc.pid)
                policies = {tid: policy(tid) for tid in after}
            # the counters include the warm-up
            calls = result.rps * 5 * (STREAM_COUNT if stream else 1)
            print(f"{name}: {calls / 5:,.0f} {unit}/s")
            print(f"  thread                   voluntary/{unit}  involuntary/{unit}  µs CPU/{unit}")
            for tid, (label, vol, invol, cpu) in sorted(after.items()):
                was = before.get(tid, (label, 0, 0, 0.0))
                dv, dn, dc = vol - was[1], invol - was[2], cpu - was[3]
                if dv + dn < calls / 100 and dc < 0.01:
                    continue
                label = f"{label}{' (loop)' if tid == proc.pid else ''} {policies[tid]}"
                print(
                    f"  {label:<24} {dv / calls:>15.2f} {dn / calls:>17.2f}"
                    f" {dc / calls * 1e6:>12.0f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
