"""Abuse of resources against a spawned ``greeter serve`` on 127.0.0.1: stream
floods, idle connections, ping floods, slow readers and cancellation bursts.

The server is a separate process so its memory (``VmRSS``) and open file
descriptors (``/proc/PID/fd``) can be measured; every test also checks that
ordinary calls keep succeeding while the abuse goes on.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from h2_client import SAY_HELLO, STREAM_REPLY, H2Client, grpc_frame, hello

from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

pytestmark = pytest.mark.timeout(90)

H2_REFUSED_STREAM, H2_ENHANCE_YOUR_CALM = 0x7, 0xB
OK = 0
MIB = 1024  # VmRSS is in KiB
COUNT = "x-greeter-stream-count"


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def reach(measure: Callable[[], int], target: int, timeout: float = 5.0) -> int:
    """Poll ``measure`` until it is at least ``target`` (or time runs out); the last value."""
    deadline = time.monotonic() + timeout
    value = measure()
    while value < target and time.monotonic() < deadline:
        time.sleep(0.02)
        value = measure()
    return value


def settle(measure: Callable[[], int], target: int, timeout: float = 10.0) -> int:
    """Poll ``measure`` until it is at most ``target`` (or time runs out); the last value."""
    deadline = time.monotonic() + timeout
    value = measure()
    while value > target and time.monotonic() < deadline:
        time.sleep(0.1)
        value = measure()
    return value


class Normal:
    """An ordinary client: one channel, unary and streaming calls."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = helloworld_pb2_grpc.GreeterStub(self.channel)

    def hello(self, name: str = "normal") -> None:
        reply = self.stub.SayHello(helloworld_pb2.HelloRequest(name=name), timeout=5)
        assert reply.message == f"Hello, {name}!"

    def stream(self, count: int = 10) -> None:
        replies = list(
            self.stub.SayHelloStreamReply(
                helloworld_pb2.HelloRequest(name="s"),
                metadata=(("x-greeter-stream-count", str(count)),),
                timeout=10,
            )
        )
        assert len(replies) == count

    def warm_up(self, calls: int = 300) -> None:
        for _ in range(calls):
            self.hello()
        self.stream(100)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def serve(spawn_server: Any) -> Iterator[Callable[..., tuple[Any, Normal]]]:
    """``server, normal = serve(GREETER_X="1")``: a warmed-up server and a client."""
    clients: list[Normal] = []

    def start(**env: str) -> tuple[Any, Normal]:
        server = spawn_server(env={"GREETER_ACCESS_LOG": "false", **env})
        normal = Normal(server.address)
        normal.warm_up()
        clients.append(normal)
        return server, normal

    yield start
    for client in clients:
        client.close()


def test_stream_flood_past_max_concurrent_streams(serve: Callable[..., Any]) -> None:
    """60 streams on a connection that allows 10: the 50 extra are refused with
    RST_STREAM(REFUSED_STREAM), the 10 complete, other connections are served.

    The 60 go out in one write and each of the 10 lasts 2 s, so none of the 10 can end
    (and free a slot for one of the 50) before the server has read all 60."""
    server, normal = serve(GREETER_MAX_CONCURRENT_STREAMS="10")
    pid = server.proc.pid
    base = rss_kb(pid)
    with H2Client(server.port) as flood:
        flood.lift_stream_limit()
        shape = [("x-greeter-stream-count", "3"), ("x-greeter-stream-interval-ms", "1000")]
        sids = [
            flood.start(STREAM_REPLY, body=grpc_frame(hello()), extra=shape, flush=False)
            for _ in range(60)
        ]
        flood.flush()
        normal.hello("during")  # another connection is not held up by the flood
        for sid in sids:
            flood.wait(sid, timeout=10)
        outcome = Counter(
            (
                flood.streams[s].grpc_status,
                flood.streams[s].reset_code,
                len(flood.streams[s].messages()),
            )
            for s in sids
        )
        assert outcome == {(OK, None, 3): 10, (None, H2_REFUSED_STREAM, 0): 50}
        after = flood.call(SAY_HELLO, grpc_frame(hello()))  # the flooding connection still works
        assert after.grpc_status == OK
    # grpcio itself keeps to the limit, but races the server's count of closed streams:
    # some of 40 concurrent calls over the 10-stream connection are refused
    # (REFUSED_STREAM, surfaced as UNAVAILABLE, not retried). Nothing else may happen.
    outcomes: Counter[str] = Counter()

    def one() -> None:
        try:
            normal.stream(5)
            outcomes["OK"] += 1
        except grpc.RpcError as exc:
            refused = "error code 7" in (exc.details() or "")
            outcomes[f"{exc.code().name}{' refused' if refused else ''}"] += 1

    threads = [threading.Thread(target=one) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(outcomes.values()) == 40
    assert set(outcomes) <= {"OK", "UNAVAILABLE refused"}, outcomes
    assert outcomes["OK"] >= 10
    normal.hello()
    assert rss_kb(pid) < base + 32 * MIB


def test_idle_connections_are_closed(serve: Callable[..., Any]) -> None:
    """200 connections that say nothing after the preface are closed by
    max_connection_idle (1 s); the server's fds go back to where they were."""
    server, normal = serve(GREETER_MAX_CONNECTION_IDLE="1")
    pid = server.proc.pid
    time.sleep(1.5)  # the warm-up connection may itself go idle and be closed
    normal.hello()
    base_fds, base_rss = fd_count(pid), rss_kb(pid)
    idle = [H2Client(server.port) for _ in range(200)]
    try:
        # The kernel completes the connects; the server accepts them when it gets to it.
        assert reach(lambda: fd_count(pid), base_fds + 150) >= base_fds + 150
        normal.hello("during")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(c.closed for c in idle):
            for client in idle:
                if not client.closed:
                    client.pump(0.01)
        assert all(c.closed for c in idle)
        assert all(c.goaway is not None for c in idle)
    finally:
        for client in idle:
            client.close()
    normal.hello("after")
    assert settle(lambda: fd_count(pid), base_fds) <= base_fds
    assert rss_kb(pid) < base_rss + 16 * MIB


def test_ping_flood_gets_goaway_too_many_pings(serve: Callable[..., Any]) -> None:
    """Pings faster than keepalive_min_time: after max_ping_strikes (2) the server
    says GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and closes the connection.

    Each ping waits for its ACK (or the GOAWAY) before the next goes out, all well
    within the 5 s: the number sent then depends on the server's strike count, not
    on how fast it answers. Without enforcement all 100 go out and nothing closes."""
    server, normal = serve(GREETER_KEEPALIVE_MIN_TIME="5")
    with H2Client(server.port) as pinger:
        pinger.wait_settings()
        sent = 0
        deadline = time.monotonic() + 20
        for i in range(100):
            if not pinger.ping(b"%08d" % i):
                break
            sent += 1
            while (
                pinger.pings_acked < sent
                and pinger.goaway is None
                and not pinger.closed
                and time.monotonic() < deadline
            ):
                pinger.pump(max(0.01, deadline - time.monotonic()))
        assert pinger.wait_closed(5)
        assert pinger.goaway is not None
        assert pinger.goaway.error_code == H2_ENHANCE_YOUR_CALM
        assert pinger.goaway.additional_data == b"too_many_pings"
        assert sent < 10
        assert pinger.pings_acked <= sent
    normal.hello("after")


def test_slow_reader_is_held_by_flow_control(serve: Callable[..., Any]) -> None:
    """20 connections each ask for up to 100,000 replies and read none: the server sends
    one flow-control window (64 KiB) per stream and waits, so its memory stays flat;
    once a reader reads, its stream completes."""
    server, normal = serve(GREETER_STREAM_MAX="100000")
    pid = server.proc.pid
    base = rss_kb(pid)
    counts = [20_000] + [100_000] * 19  # the first one is read in the end: keep it short
    readers = [H2Client(server.port, auto_ack=False) for _ in counts]
    try:
        sids = [
            r.start(STREAM_REPLY, body=grpc_frame(hello()), extra=[(COUNT, str(n))])
            for r, n in zip(readers, counts, strict=True)
        ]
        held = time.monotonic() + 3
        while time.monotonic() < held:
            for reader in readers:
                reader.pump(0.01)
            normal.hello("during")
        for reader, sid in zip(readers, sids, strict=True):
            result = reader.streams[sid]
            assert not result.done
            assert 0 < len(result.data) <= 65535
        assert rss_kb(pid) < base + 16 * MIB
        # One reader starts reading and gets everything.
        first, sid = readers[0], sids[0]
        first.start_reading()
        result = first.wait(sid, timeout=60)
        assert result.grpc_status == OK
        assert len(result.messages()) == 20_000  # 20,000 x 31 bytes: far past one window
    finally:
        for reader in readers:
            reader.close()
    normal.stream(10)
    assert rss_kb(pid) < base + 16 * MIB


def test_cancellation_burst(serve: Callable[..., Any]) -> None:
    """300 server streams cancelled by a real client after their first reply, then
    3,000 raw streams opened and reset at once (the "rapid reset" pattern): calls
    keep succeeding, memory and file descriptors come back."""
    server, normal = serve()
    pid = server.proc.pid
    base_rss, base_fds = rss_kb(pid), fd_count(pid)
    # Each stream would last 99 s (longer than the test may take), so every one of them
    # is still running when it is cancelled, however long starting all 300 takes.
    slow = (("x-greeter-stream-count", "100"), ("x-greeter-stream-interval-ms", "1000"))
    with grpc.insecure_channel(server.address) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        calls = [
            stub.SayHelloStreamReply(helloworld_pb2.HelloRequest(name="c"), metadata=slow)
            for _ in range(300)
        ]
        for call in calls:
            next(call)
        for call in calls:
            call.cancel()
        assert {call.code() for call in calls} == {grpc.StatusCode.CANCELLED}
        normal.hello("between")
    with H2Client(server.port) as rapid:
        rapid.lift_stream_limit()
        for i in range(3000):
            sid = rapid.start(SAY_HELLO, body=None, end_stream=False)
            rapid.reset(sid)
            if i % 200 == 0:
                rapid.pump(0.001)
        # Right after the burst grpc-core may refuse new streams on this connection
        # (RST_STREAM REFUSED_STREAM: safe to retry) until it has caught up.
        answers = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not rapid.closed:
            result = rapid.call(SAY_HELLO, grpc_frame(hello()))
            answers.append((result.grpc_status, result.reset_code))
            if result.reset_code != H2_REFUSED_STREAM:
                break
            time.sleep(0.1)
        assert answers[-1] == (OK, None), answers
        assert set(answers[:-1]) <= {(None, H2_REFUSED_STREAM)}
    normal.hello("after")
    normal.stream(10)
    assert rss_kb(pid) < base_rss + 32 * MIB
    assert settle(lambda: fd_count(pid), base_fds) <= base_fds
