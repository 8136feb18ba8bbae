"""``greeter serve --workers N``: several processes on one port under one parent."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.settings import Settings
from greeter.workers import resolve_port

WORKER_KEY = "x-greeter-worker"


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` that run a greeter worker (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def listening_pids(port: int) -> set[int]:
    """Processes holding a listening socket on ``port`` (from /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                pids.add(int(entry.name))
                break
    return pids


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def workers_seen(address: str, channels: int) -> dict[str, int]:
    """Call SayHello over ``channels`` separate connections; count the answering workers."""
    seen: dict[str, int] = {}
    for _ in range(channels):
        options = [("grpc.use_local_subchannel_pool", 1)]  # a new connection each time
        with grpc.insecure_channel(address, options=options) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            reply, call = stub.SayHello.with_call(helloworld_pb2.HelloRequest(name="w"), timeout=10)
            assert reply.message == "Hello, w!"
            trailers = dict(call.trailing_metadata() or ())
            assert trailers.get("x-greeter-pod") == "pod-w"
            seen[trailers[WORKER_KEY]] = seen.get(trailers[WORKER_KEY], 0) + 1
    return seen


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def handled_ok(text: str) -> float:
    for line in text.splitlines():
        if (
            line.startswith("grpc_server_handled_total{")
            and 'grpc_method="SayHello"' in line
            and 'grpc_code="OK"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_two_workers_share_the_port_and_drain_on_sigterm(spawn_server) -> None:  # type: ignore[no-untyped-def]
    server = spawn_server("--workers", "2", env={"GREETER_POD_NAME": "pod-w"})
    workers = set()

    def two_workers_listening() -> bool:
        nonlocal workers
        workers = children(server.proc.pid)
        return len(workers) == 2 and listening_pids(server.port) >= workers

    wait_for(two_workers_listening)
    # The parent holds no gRPC socket: the two workers are what listens.
    assert server.proc.pid not in listening_pids(server.port)

    # Both answer on the one port, each with its own identity.
    seen: dict[str, int] = {}
    for _ in range(10):
        for worker, n in workers_seen(server.address, 8).items():
            seen[worker] = seen.get(worker, 0) + n
        if set(seen) == {"0", "1"}:
            break
    assert set(seen) == {"0", "1"}, seen
    calls = sum(seen.values())

    # One /metrics on the parent's port counts the calls of both workers.
    text = scrape(server.metrics_port)
    assert handled_ok(text) == calls
    assert text.count("greeter_build_info{") == 1

    # SIGTERM to the parent (stop() sends exactly one) drains both workers; it exits 0.
    code, _, err = server.stop(timeout=30)
    assert code == 0, err
    assert err.count('"msg":"stopped"') == 3  # two workers and the parent
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists()


def test_a_taken_port_fails_start_up(spawn_server) -> None:  # type: ignore[no-untyped-def]
    first = spawn_server()
    env = {"GREETER_PORT": str(first.port)}
    second = spawn_server("--workers", "2", env=env, wait=False)
    rc, _, err = second.wait(timeout=30)
    assert rc == 3, err
    assert "start-up failed" in err


def test_resolve_port_picks_a_free_port_for_zero() -> None:
    port = resolve_port(Settings(host="127.0.0.1", port=0, metrics_port=0))
    assert 0 < port < 65536


@pytest.mark.parametrize("text", ["auto", "0"])
def test_auto_workers_means_one_per_core(text: str) -> None:
    from greeter import settings

    loaded = settings.load({"workers": text}, environ={})
    assert loaded.workers == len(os.sched_getaffinity(0))


def test_a_dying_worker_stops_the_others_and_fails_the_parent(spawn_server) -> None:  # type: ignore[no-untyped-def]
    server = spawn_server("--workers", "2")
    workers: set[int] = set()

    def two_workers() -> bool:
        nonlocal workers
        workers = children(server.proc.pid)
        return len(workers) == 2

    wait_for(two_workers)
    victim, survivor = sorted(workers)
    os.kill(victim, 9)
    code, _, err = server.wait(timeout=30)
    assert code == 1, err
    assert "stopping the others" in err
    assert not Path(f"/proc/{survivor}").exists()


def test_workers_refuse_a_unix_socket() -> None:
    with pytest.raises(OSError, match="unix socket"):
        resolve_port(Settings(host="unix:/tmp/greeter.sock", port=0, metrics_port=0))
