"""Soak test: a million mixed RPCs against one spawned ``greeter serve``.

    python bench/soak.py                 # 1,000,000 RPCs (about 8-10 minutes on 2 cores)
    python bench/soak.py --short         # 80,000 RPCs, the CI variant (tests/test_soak.py)
    python bench/soak.py --rpcs 200000 --json

The mix is unary SayHello, server streams (5 replies) and bidi streams (3
messages). It passes when:

* every RPC ends OK (zero errors),
* the server's resident memory (``VmRSS``) grows less than 10% from the end of
  the warm-up to the end of the run,
* the server's open file descriptors (``/proc/PID/fd``) are back to their
  pre-traffic count within 10 s of the clients closing their channels.

The server is pinned to core 0 and this driver to core 1 when there are two.
Exit code 0 when all checks pass, 1 when one fails, 2 when the server will not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
FULL_RPCS = 1_000_000
SHORT_RPCS = 80_000
MAX_RSS_GROWTH = 0.10
FD_SETTLE_S = 10.0
STREAM_REPLIES = 5
BIDI_MESSAGES = 3


@dataclass
class Report:
    rpcs: int = 0
    unary: int = 0
    server_stream: int = 0
    bidi: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rps: float = 0.0
    rss_start_kb: int = 0
    rss_warm_kb: int = 0
    rss_end_kb: int = 0
    rss_peak_kb: int = 0
    rss_growth: float = 0.0
    fds_before: int = 0
    fds_during: int = 0
    fds_after: int = 0
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def text(self) -> str:
        lines = [
            f"RPCs            {self.rpcs:,} in {self.seconds:.1f} s ({self.rps:,.0f}/s)",
            f"  unary         {self.unary:,}",
            f"  server stream {self.server_stream:,} ({STREAM_REPLIES} replies each)",
            f"  bidi stream   {self.bidi:,} ({BIDI_MESSAGES} messages each)",
            f"errors          {sum(self.errors.values())} {self.errors or ''}",
            f"RSS (KiB)       start {self.rss_start_kb:,}  after warm-up {self.rss_warm_kb:,}  "
            f"end {self.rss_end_kb:,}  peak {self.rss_peak_kb:,}",
            f"RSS growth      {self.rss_growth:+.2%} after warm-up (limit {MAX_RSS_GROWTH:.0%})",
            f"open fds        before {self.fds_before}  during {self.fds_during}  "
            f"after clients left {self.fds_after}",
        ]
        lines += [
            f"check {name:<18} {'ok' if ok else 'FAILED'}" for name, ok in self.checks.items()
        ]
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def spawned_server(pin: int | None) -> Iterator[tuple[int, str]]:
    """A ``greeter serve`` child on 127.0.0.1, access log off; yields (pid, address)."""
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREETER_")}
    env.update(
        {
            "GREETER_HOST": "127.0.0.1",
            "GREETER_PORT": str(port),
            "GREETER_METRICS_HOST": "127.0.0.1",
            "GREETER_METRICS_PORT": str(metrics_port),
            "GREETER_ACCESS_LOG": "false",
            "GREETER_DRAIN_DELAY": "0",
            "GREETER_GRACE_PERIOD": "5",
            "GREETER_LOG_LEVEL": "warning",
        }
    )
    src = str(ROOT / "service")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "greeter", "serve"]
    if pin is not None:
        cmd = ["taskset", "-c", str(pin), *cmd]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"server exited with {proc.returncode}: {err}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start listening") from None
                time.sleep(0.05)
        yield proc.pid, f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


class Driver:
    """Workers that share one RPC budget and count outcomes."""

    def __init__(self, stubs: list[helloworld_pb2_grpc.GreeterStub], total: int) -> None:
        self.stubs = stubs
        self.total = total
        self.issued = 0
        self.kinds: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    async def one(self, stub: helloworld_pb2_grpc.GreeterStub, n: int) -> None:
        request = helloworld_pb2.HelloRequest(name=f"soak-{n % 1000}")
        kind = "unary"
        try:
            if n % 20 == 7:  # 5%: bidi
                kind = "bidi"
                call = stub.SayHelloBidiStream(timeout=30)
                for _ in range(BIDI_MESSAGES):
                    await call.write(request)
                    reply = await call.read()
                    if reply is grpc.aio.EOF or not reply.message.startswith("Hello, soak-"):
                        self.errors["bad bidi reply"] += 1
                await call.done_writing()
                if await call.read() is not grpc.aio.EOF:
                    self.errors["extra bidi reply"] += 1
            elif n % 20 in (3, 11, 15):  # 15%: server stream
                kind = "server_stream"
                got = 0
                async for _ in stub.SayHelloStreamReply(
                    request, metadata=(("x-greeter-stream-count", str(STREAM_REPLIES)),), timeout=30
                ):
                    got += 1
                if got != STREAM_REPLIES:
                    self.errors[f"stream got {got} replies"] += 1
            else:
                reply = await stub.SayHello(request, timeout=30)
                if reply.message != f"Hello, soak-{n % 1000}!":
                    self.errors["bad unary reply"] += 1
        except grpc.aio.AioRpcError as exc:
            self.errors[exc.code().name] += 1
        self.kinds[kind] += 1

    async def worker(self, index: int) -> None:
        stub = self.stubs[index % len(self.stubs)]
        while self.issued < self.total:
            n = self.issued
            self.issued += 1
            await self.one(stub, n)

    async def run(self, concurrency: int) -> None:
        await asyncio.gather(*(self.worker(i) for i in range(concurrency)))


@contextlib.asynccontextmanager
async def channels(address: str, count: int) -> AsyncIterator[list[grpc.aio.Channel]]:
    # A local subchannel pool each: separate connections, not one shared subchannel.
    options = [("grpc.use_local_subchannel_pool", 1)]
    opened = [grpc.aio.insecure_channel(address, options=options) for _ in range(count)]
    try:
        yield opened
    finally:
        for channel in opened:
            await channel.close()


async def soak(address: str, pid: int, total: int, concurrency: int, conns: int) -> Report:
    # The readiness probe's connection may still be open on the server side: let it go,
    # so the baseline counts only the server's own descriptors.
    await asyncio.sleep(1.0)
    report = Report(rss_start_kb=rss_kb(pid), fds_before=fd_count(pid))
    warm_up = max(2_000, total // 20)
    began = time.perf_counter()
    async with channels(address, conns) as opened:
        stubs = [helloworld_pb2_grpc.GreeterStub(ch) for ch in opened]
        # Warm-up: let allocator pools, caches and connections reach their steady size.
        warm = Driver(stubs, warm_up)
        await warm.run(concurrency)
        report.rss_warm_kb = rss_kb(pid)
        report.fds_during = fd_count(pid)
        main = Driver(stubs, total - warm_up)
        peak = report.rss_warm_kb

        async def sample() -> None:
            nonlocal peak
            while True:
                await asyncio.sleep(1.0)
                peak = max(peak, rss_kb(pid))

        sampler = asyncio.create_task(sample())
        try:
            await main.run(concurrency)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        report.rss_end_kb = rss_kb(pid)
        report.rss_peak_kb = max(peak, report.rss_end_kb)
    report.seconds = time.perf_counter() - began
    kinds = warm.kinds + main.kinds
    report.unary, report.server_stream, report.bidi = (
        kinds["unary"],
        kinds["server_stream"],
        kinds["bidi"],
    )
    report.rpcs = sum(kinds.values())
    report.rps = report.rpcs / report.seconds
    report.errors = dict(warm.errors + main.errors)
    report.rss_growth = (report.rss_end_kb - report.rss_warm_kb) / report.rss_warm_kb
    # Clients have left: the server should let go of every connection.
    deadline = time.monotonic() + FD_SETTLE_S
    report.fds_after = fd_count(pid)
    while report.fds_after > report.fds_before and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        report.fds_after = fd_count(pid)
    report.checks = {
        "all_rpcs_ran": report.rpcs == total,
        "zero_errors": not report.errors,
        "rss_growth_<10%": report.rss_growth < MAX_RSS_GROWTH,
        "fds_back": report.fds_after <= report.fds_before,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rpcs", type=int, default=FULL_RPCS, help="RPCs in total")
    parser.add_argument("--short", action="store_true", help=f"{SHORT_RPCS:,} RPCs (CI)")
    parser.add_argument("-c", "--concurrency", type=int, default=64, help="RPCs in flight")
    parser.add_argument("--connections", type=int, default=4, help="client channels")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and driver")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    total = SHORT_RPCS if args.short else args.rpcs
    if total < 10_000:
        parser.error("--rpcs must be at least 10,000 (warm-up takes 5%, at least 2,000)")
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    try:
        with spawned_server(0 if pin else None) as (pid, address):
            report = asyncio.run(soak(address, pid, total, args.concurrency, args.connections))
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**asdict(report), "passed": report.passed}, indent=2))
    else:
        print(report.text())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
