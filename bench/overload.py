"""Past capacity: goodput with admission control on and off, at 0.5x to 3x the capacity.

    python -m bench.overload                      # 0.3 core, 10 s per step (~3 min)
    python -m bench.overload --quick              # smoke run: 1 s steps
    python -m bench.overload --quota 0.3 --duration 10 --deadline 2 --json out.json
    python -m bench.overload --levels 0.5,1,2,3,4     # the levels asked (x capacity)
    python -m bench.overload --variant wait2=GREETER_ADMISSION_CORE_WAIT=2
    python -m bench.overload --variant before=PYTHONPATH=/work/main/service  # another checkout

A pod held to ``resources.limits.cpu: 300m`` is a process in a CPU cgroup with a quota of
0.3 core: the server (``greeter serve`` defaults, via bench.servers.greeter_serve) runs in
one (cgroup v1 ``cpu`` controller; needs root) and on the first core this process may use;
``greeter load`` runs pinned to the last. Without a writable cgroup the server is only
pinned, and the table says so.

First the capacity: a closed loop (``-c 100 --connections 4``), admission control on, OK
calls per second. Then, for each level, an open loop asking ``level x capacity`` calls per
second (``-c 20000 --connections 8 -t DEADLINE``), once with admission control on and once
off, and once per ``--variant NAME=ENV=VALUE[,ENV=VALUE]`` (admission control on with that
environment too, e.g. another setting, or ``PYTHONPATH`` pointing at another checkout's
``service/`` to compare with the code before a change), a fresh server each time, the order
rotating from level to level, reporting: calls sent per second (and
whether the client kept up: at least 95% of the rate asked), goodput (OK calls per second)
and its ratio to the capacity, p50/p99 of the OK calls, calls shed (RESOURCE_EXHAUSTED, and
CANCELLED: the calls grpc dropped after ``admission_core_wait``), calls past their deadline
(DEADLINE_EXCEEDED) as a share of those sent, and server CPU per call and per refused call
(the server's CPU time minus what its OK calls cost at capacity, over the refused calls).
Exits 1 if a run failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.run import cpu_seconds, machine, parse_spec, pin_cores, started
from greeter.rehearse import cpu_quota
from greeter.rehearse.cpu_quota import CpuQuota
from greeter.rehearse.findings import KEPT_UP, REFUSED_CODES
from greeter.rehearse.scenarios import OPEN_CONCURRENCY, OPEN_CONNECTIONS, WARMUP_SHARE
from greeter.rehearse.scenarios import WARMUP_MAX_S as WARMUP_MAX

CGROUP_PREFIX = "greeter-bench-overload"
CAPACITY_SHAPE = ("-c", "100", "--connections", "4")
OPEN_SHAPE = ("-c", str(OPEN_CONCURRENCY), "--connections", str(OPEN_CONNECTIONS))
REFUSED = REFUSED_CODES  # admission control's RESOURCE_EXHAUSTED, grpc-core's CANCELLED


@dataclass
class Step:
    mode: str  # "on", "off" or a variant's name
    level: float  # offered load as a multiple of the capacity (0: the capacity run)
    asked: float  # calls per second asked (0: closed loop)
    sent: float
    kept_up: bool
    goodput: float
    goodput_x: float
    ok_p50_ms: float | None
    ok_p99_ms: float | None
    codes: dict[str, int]
    shed: int  # RESOURCE_EXHAUSTED
    dropped: int  # CANCELLED
    late: int  # DEADLINE_EXCEEDED
    late_share: float
    cpu_us_per_call: float
    cpu_us_per_refused: float | None


def load(
    port: int, core: int | None, args: tuple[str, ...], seconds: float, scratch: Path
) -> dict[str, Any]:
    """One ``greeter load`` run; its first ``WARMUP_SHARE`` (at most ``WARMUP_MAX`` s) is
    left out of the report (connections, the server's first turns)."""
    out = scratch / "report.json"
    warmup = round(min(WARMUP_MAX, seconds * WARMUP_SHARE), 3)
    pin = ["taskset", "-c", str(core)] if core is not None else []
    argv = [
        *pin, sys.executable, "-m", "greeter", "load", f"127.0.0.1:{port}", "--procs", "1",
        "-z", f"{seconds}s", "--warmup", f"{warmup}s", "-q", "-O", "json", "-o", str(out), *args,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds * 4 + 60)
    if not out.exists():
        raise RuntimeError(f"greeter load failed ({done.returncode}): {done.stderr[-500:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def measure(
    mode: str,
    env: str,
    level: float,
    capacity: float,
    args: argparse.Namespace,
    group: CpuQuota | None,
    cores: tuple[int | None, int | None],
) -> Step:
    on = "false" if mode == "off" else "true"
    extra = f",{env}" if env else ""
    spec = parse_spec(f"greeter-defaults@GREETER_ADMISSION_CONTROL={on}{extra}")
    with started(spec, cores[0]) as (port, proc), tempfile.TemporaryDirectory() as scratch:
        if group is not None:
            group.add(proc.pid)
        shape: tuple[str, ...] = (*CAPACITY_SHAPE, "-t", f"{args.deadline}s")
        asked = level * capacity
        if level:
            shape = (*OPEN_SHAPE, "--rps", str(round(asked)), "-t", f"{args.deadline}s")
        cpu = cpu_seconds(proc.pid)
        report = load(port, cores[1], shape, args.duration, Path(scratch))
        cpu = cpu_seconds(proc.pid) - cpu
    return summarise(mode, level, asked, capacity, cpu, report, args.cpu_per_ok)


def summarise(
    mode: str,
    level: float,
    asked: float,
    capacity: float,
    cpu: float,
    report: dict[str, Any],
    cpu_per_ok: float | None,
) -> Step:
    seconds = report["duration_s"] or 1.0
    codes: dict[str, int] = report["status_codes"]
    count = report["count"]
    ok = codes.get("OK", 0)
    refused = sum(codes.get(c, 0) for c in REFUSED)
    ok_latency = report.get("ok_latency_ms") or {}
    per_refused = None
    if refused and cpu_per_ok is not None:
        per_refused = max(0.0, cpu - ok * cpu_per_ok) / refused * 1e6
    goodput = ok / seconds
    return Step(
        mode=mode,
        level=level,
        asked=round(asked, 1),
        sent=round(count / seconds, 1),
        kept_up=not asked or count / seconds >= KEPT_UP * asked,
        goodput=round(goodput, 1),
        goodput_x=round(goodput / capacity, 3) if capacity else 0.0,
        ok_p50_ms=ok_latency.get("p50"),
        ok_p99_ms=ok_latency.get("p99"),
        codes=codes,
        shed=codes.get("RESOURCE_EXHAUSTED", 0),
        dropped=codes.get("CANCELLED", 0),
        late=codes.get("DEADLINE_EXCEEDED", 0),
        late_share=round(codes.get("DEADLINE_EXCEEDED", 0) / count, 4) if count else 0.0,
        cpu_us_per_call=round(cpu / count * 1e6, 1) if count else 0.0,
        cpu_us_per_refused=None if per_refused is None else round(per_refused, 1),
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def table(steps: list[Step]) -> str:
    lines = [
        "| load | admission | asked/s | sent/s | kept up | goodput/s | x capacity "
        "| OK p50 ms | OK p99 ms | shed (RESOURCE_EXHAUSTED) | dropped (CANCELLED) "
        "| past deadline | CPU µs/call | CPU µs/refused |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        load_name = "capacity" if not s.level else f"{s.level:g}x"
        refused = "-" if s.cpu_us_per_refused is None else f"{s.cpu_us_per_refused:,.0f}"
        lines.append(
            f"| {load_name} | {s.mode} | {s.asked:,.0f} | {s.sent:,.0f} | "
            f"{'yes' if s.kept_up else 'NO'} | {s.goodput:,.0f} | {s.goodput_x:.2f} | "
            f"{_ms(s.ok_p50_ms)} | {_ms(s.ok_p99_ms)} | {s.shed:,} | {s.dropped:,} | "
            f"{s.late:,} ({s.late_share:.1%}) | {s.cpu_us_per_call:,.0f} | {refused} |"
        )
    return "\n".join(lines)


def levels(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("levels must be positive multiples, e.g. 0.5,1,2,3")
    return values


def variant(text: str) -> tuple[str, str]:
    name, _, env = text.partition("=")
    if not name or name in ("on", "off") or "=" not in env:
        raise argparse.ArgumentTypeError(
            "a variant is NAME=ENV=VALUE[,ENV=VALUE] (NAME not on/off), e.g."
            " wait2=GREETER_ADMISSION_CORE_WAIT=2"
        )
    return name, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    parser.add_argument("--quota", type=float, default=0.3, help="server CPU quota, cores")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--deadline", type=float, default=2.0, help="call deadline, seconds")
    parser.add_argument("--levels", type=levels, default=[0.5, 1.0, 2.0, 3.0])
    parser.add_argument(
        "--quick", action="store_true", help="1 s steps, or --duration if shorter (a smoke run)"
    )
    parser.add_argument(
        "--variant",
        type=variant,
        action="append",
        default=[],
        metavar="NAME=ENV=VALUE[,ENV=VALUE]",
        help="also measure admission control on with this environment (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="write the steps here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 1.0)
    if not 0 < args.quota <= 64:
        parser.error("--quota must be between 0 and 64 cores")
    cores = pin_cores()
    steps: list[Step] = []
    failed = 0
    with cpu_quota.held(CGROUP_PREFIX, "server", args.quota) as group:
        held = f"{args.quota:g} core (cgroup quota)" if group else "one core (no cgroup here)"
        print(f"server: {held}, pinned to core {cores[0]}; client on core {cores[1]}")
        args.cpu_per_ok = None
        try:
            first = measure("on", "", 0.0, 0.0, args, group, cores)
        except Exception as exc:
            print(f"capacity run FAILED: {exc}", file=sys.stderr)
            return 1
        capacity = first.goodput
        first.goodput_x = 1.0
        steps.append(first)
        cpu_per_ok = first.cpu_us_per_call / 1e6
        args.cpu_per_ok = cpu_per_ok
        print(f"capacity: {capacity:,.0f} OK calls/s, {first.cpu_us_per_call:,.0f} µs CPU each")
        modes = [("on", ""), ("off", ""), *args.variant]
        for i, level in enumerate(args.levels):
            turn = i % len(modes)
            for mode, env in modes[turn:] + modes[:turn]:
                try:
                    step = measure(mode, env, level, capacity, args, group, cores)
                except Exception as exc:
                    print(f"{level:g}x {mode}: FAILED: {exc}", file=sys.stderr)
                    failed += 1
                    continue
                steps.append(step)
                print(
                    f"{level:g}x {mode}: goodput {step.goodput:,.0f}/s ({step.goodput_x:.2f}x),"
                    f" sent {step.sent:,.0f}/s of {step.asked:,.0f}, codes {step.codes}",
                    flush=True,
                )
    rank = {mode: i for i, (mode, _) in enumerate(modes)}
    ordered = [steps[0], *sorted(steps[1:], key=lambda s: (s.level, rank[s.mode]))]
    print()
    print(table(ordered))
    print(f"\n{machine()}; server {held}; deadline {args.deadline:g} s; {args.duration:g} s steps")
    if args.json:
        payload = {
            "quota": args.quota if group else None,
            "deadline_s": args.deadline,
            "duration_s": args.duration,
            "capacity": capacity,
            "failed": failed,
            "steps": [asdict(s) for s in ordered],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    if failed:
        print(f"{failed} run(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
