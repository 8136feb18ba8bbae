"""``listeners``: several gRPC servers in one process on one port (SO_REUSEPORT)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from conftest import serving_line
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.ports import resolve_port

# Separate TCP connections: grpc shares one per target unless told otherwise.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def listen_sockets(pid: int, port: int) -> int:
    """How many listening TCP sockets on ``port`` the process ``pid`` holds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


def hello(address: str, name: str, options: list[tuple[str, int]] = OWN_CONNECTION) -> str:
    with grpc.insecure_channel(address, options=options) as channel:
        reply = helloworld_pb2_grpc.GreeterStub(channel).SayHello(
            helloworld_pb2.HelloRequest(name=name), timeout=10
        )
    return reply.message


def test_n_listeners_share_the_port_and_every_connection_is_served(
    spawn_server: Callable,
) -> None:
    server = spawn_server("--listeners", "4")
    assert listen_sockets(server.proc.pid, server.port) == 4
    for i in range(40):
        assert hello(server.address, f"c{i}") == f"Hello, c{i}!"
    code, _, err = server.stop()
    assert code == 0, err
    assert serving_line(err)["listeners"] == 4


def test_the_default_is_eight_listeners(spawn_server: Callable) -> None:
    server = spawn_server()
    assert listen_sockets(server.proc.pid, server.port) == 8
    assert server.stop()[0] == 0


@pytest.mark.parametrize("listeners", ["8", "1"])
def test_a_second_server_on_the_same_port_fails_start_up(
    spawn_server: Callable, listeners: str
) -> None:
    first = spawn_server()
    second = spawn_server(
        "--listeners", listeners, env={"GREETER_PORT": str(first.port)}, wait=False
    )
    code, _, err = second.wait(timeout=30)
    assert code == 3, err
    assert "cannot listen" in err
    assert hello(first.address, "still") == "Hello, still!"


def test_a_stranger_sharing_its_port_with_so_reuseport_is_not_joined(
    spawn_server: Callable,
) -> None:
    """Our listeners set SO_REUSEPORT; a port some other program holds the same way must
    still fail start-up instead of splitting that program's connections with it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stranger:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        server = spawn_server(env={"GREETER_PORT": str(port)}, wait=False)
        code, _, err = server.wait(timeout=30)
    assert code == 3, err
    assert f"cannot listen on 127.0.0.1:{port}" in err


def test_a_unix_socket_has_one_listener(spawn_server: Callable, tmp_path: Path) -> None:
    path = tmp_path / "greeter.sock"
    server = spawn_server(env={"GREETER_HOST": f"unix:{path}"}, wait=False)
    try:
        for _ in range(600):
            if path.exists() or server.proc.poll() is not None:
                break
            threading.Event().wait(0.05)
        assert hello(f"unix:{path}", "uds", options=[]) == "Hello, uds!"
    finally:
        code, _, err = server.stop()
    assert code == 0, err
    assert serving_line(err)["listeners"] == 1


def test_sigterm_drains_calls_on_every_listener(spawn_server: Callable) -> None:
    """Streams in flight on many connections (so on several listeners) all finish."""
    server = spawn_server("--listeners", "4", env={"GREETER_DRAIN_DELAY": "0.5"})
    results: list[tuple[grpc.StatusCode, int]] = []
    lock = threading.Lock()
    started = threading.Barrier(13)

    def stream() -> None:
        with grpc.insecure_channel(server.address, options=OWN_CONNECTION) as channel:
            call = helloworld_pb2_grpc.GreeterStub(channel).SayHelloStreamReply(
                helloworld_pb2.HelloRequest(name="drain"),
                timeout=30,
                metadata=[
                    ("x-greeter-stream-count", "20"),
                    ("x-greeter-stream-interval-ms", "100"),
                ],
            )
            got = 0
            for _ in call:
                if got == 0:
                    started.wait(timeout=20)
                got += 1
            with lock:
                results.append((call.code(), got))

    threads = [threading.Thread(target=stream) for _ in range(12)]
    for t in threads:
        t.start()
    started.wait(timeout=20)  # every stream has its first reply
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=30)
    code, _, err = server.wait(timeout=30)
    assert code == 0, err
    assert sorted(results) == [(grpc.StatusCode.OK, 20)] * 12


def test_the_probe_covers_every_address_the_host_stands_for() -> None:
    """A holder of 0.0.0.0:P (with SO_REUSEPORT) is seen from "[::]" (bound dual-stack,
    as grpc binds it) and from 127.0.0.1; port 0 picks one free everywhere."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for host in ("[::]", "0.0.0.0", "127.0.0.1"):
            with pytest.raises(OSError, match="in use"):
                resolve_port(host, port)
    assert 0 < resolve_port("[::]", 0) < 65536
