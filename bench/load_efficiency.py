"""Requests generated per client CPU-second: ``greeter load`` (its h2 engine and its grpc
engine) against h2load (and a plain grpc.aio stub loop, for scale), the same server, the
same run.

    python -m bench.load_efficiency [--calls 20000] [--concurrency 64] [--rounds 3]

A ``greeter serve`` child is started on 127.0.0.1 (pinned to CPU 0 when there are two or
more, clients to CPU 1). Each client makes the same number of unary SayHello calls with
the same number in flight over one connection; its CPU time (user + system) counts only
the load itself: h2load's from ``wait4``, the Python clients' from ``time.process_time``
around the run (interpreter start-up and imports are left out). Prints one JSON object;
docs/load.md has the numbers measured here. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

GREETER_CLIENT = """
import json, sys, time
from greeter.client import Target
from greeter.load import LoadConfig, run_load
calls, conc, address, engine = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
cfg = LoadConfig(target=Target(address), total=calls, concurrency=conc, procs=1, engine=engine)
run_load(LoadConfig(target=Target(address), total=500, concurrency=conc, procs=1, engine=engine))
cpu, wall = time.process_time(), time.perf_counter()
report = run_load(cfg)
assert report["options"]["engine"] == engine, report["options"]
print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall,
                  "ok": report["ok"]}))
"""

PLAIN_CLIENT = """
import asyncio, json, sys, time
import grpc
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
calls, conc, address = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
async def main():
    async with grpc.aio.insecure_channel(address) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        left = [calls]
        ok = [0]
        async def one():
            call = stub.SayHello(helloworld_pb2.HelloRequest(name="world"), timeout=20)
            await call
            await call.trailing_metadata()
            ok[0] += 1
        for _ in range(500):
            await stub.SayHello(helloworld_pb2.HelloRequest(name="world"))
        async def worker():
            while left[0] > 0:
                left[0] -= 1
                await one()
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall, "ok": ok[0]}
print(json.dumps(asyncio.run(main())))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cpu: int) -> list[str]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpus[cpu])]


def _start_server(port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREETER_")}
    env.update(
        GREETER_HOST="127.0.0.1",
        GREETER_PORT=str(port),
        GREETER_METRICS_PORT="0",
        GREETER_ACCESS_LOG="false",
        GREETER_DRAIN_DELAY="0",
        GREETER_POD_NAME="bench",
        GREETER_CLUSTER_NAME="bench",
    )
    proc = subprocess.Popen(
        [*_pin(0), sys.executable, "-m", "greeter", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def _h2load(calls: int, conc: int, port: int, folder: Path) -> dict[str, float]:
    from greeter._proto import helloworld_pb2

    body = helloworld_pb2.HelloRequest(name="world").SerializeToString()
    data = folder / "hello.grpc"
    data.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)
    command = [
        *_pin(1), "h2load", "-n", str(calls), "-c", "1", "-m", str(conc), "-d", str(data),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://127.0.0.1:{port}/helloworld.Greeter/SayHello",
    ]  # fmt: skip
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    out = proc.stdout.read().decode() if proc.stdout else ""
    if status != 0 or f"{calls} succeeded" not in out:
        raise SystemExit(f"h2load failed:\n{out}")
    return {"cpu": usage.ru_utime + usage.ru_stime, "wall": wall, "ok": calls}


def _python(script: str, calls: int, conc: int, port: int, *extra: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "service")}
    address = f"127.0.0.1:{port}"
    out = subprocess.run(
        [*_pin(1), sys.executable, "-c", script, str(calls), str(conc), address, *extra],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def measure(calls: int, conc: int, rounds: int) -> dict[str, Any]:
    if not shutil.which("h2load"):
        raise SystemExit("h2load is not installed (apt-get install nghttp2-client)")
    port = _free_port()
    server = _start_server(port)
    names = ("h2load", "greeter_load_h2", "greeter_load_grpc", "plain_aio")
    per_cpu: dict[str, list[float]] = {name: [] for name in names}
    rps: dict[str, list[float]] = {k: [] for k in per_cpu}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(rounds):
                for name, run in (
                    ("h2load", lambda: _h2load(calls, conc, port, Path(tmp))),
                    ("greeter_load_h2", lambda: _python(GREETER_CLIENT, calls, conc, port, "h2")),
                    (
                        "greeter_load_grpc",
                        lambda: _python(GREETER_CLIENT, calls, conc, port, "grpc"),
                    ),
                    ("plain_aio", lambda: _python(PLAIN_CLIENT, calls, conc, port)),
                ):
                    result = run()
                    per_cpu[name].append(result["ok"] / result["cpu"])
                    rps[name].append(result["ok"] / result["wall"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    med = {k: statistics.median(v) for k, v in per_cpu.items()}
    return {
        "calls": calls,
        "concurrency": conc,
        "rounds": rounds,
        "calls_per_cpu_second": {k: round(v) for k, v in med.items()},
        "calls_per_second": {k: round(statistics.median(v)) for k, v in rps.items()},
        "ratio_vs_h2load": {k: round(v / med["h2load"], 3) for k, v in med.items()},
        # each round's ratio (same round, so the same machine noise), then their median
        "ratio_per_round": {
            k: [round(x / h, 3) for x, h in zip(v, per_cpu["h2load"], strict=True)]
            for k, v in per_cpu.items()
            if k != "h2load"
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(args.calls, args.concurrency, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
