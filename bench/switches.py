"""Context switches and CPU time per unary call, thread by thread.

``python -m bench.switches [SERVER ...]`` (names as in ``bench.run``, variants
``name@ENV=VALUE`` included; default: the bare baseline on uvloop and our
server with each thread policy).

Each server runs pinned to core 0, h2load to core 1 (256 calls in flight, 1 s
warm-up, 4 s measured). Before and after, every thread's voluntary and
involuntary context switches and CPU time are read from /proc; printed per
call, for the threads that did anything. An involuntary switch of the event
loop's thread is a preemption: docs/performance.md explains why they matter.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from bench import h2load
from bench.run import CLK_TCK, parse_spec, started

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
    names = (argv if argv is not None else sys.argv[1:]) or list(DEFAULT)
    with tempfile.TemporaryDirectory(prefix="greeter-bench-") as tmp:
        request = h2load.write_request_file(Path(tmp))
        for name in names:
            spec = parse_spec(name)
            with started(spec, 0) as (port, proc):
                before = threads(proc.pid)
                result = h2load.run(
                    port,
                    "SayHello",
                    request,
                    duration=4,
                    warm_up=1,
                    clients=4,
                    streams=64,
                    headers=spec.headers,
                    core=1,
                )
                after = threads(proc.pid)
                policies = {tid: policy(tid) for tid in after}
            calls = result.rps * 5  # the counters include the warm-up
            print(f"{name}: {result.rps:,.0f} rps")
            print("  thread                   voluntary/call  involuntary/call  µs CPU/call")
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
