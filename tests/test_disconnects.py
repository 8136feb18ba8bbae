"""Clients that go away in the middle of a stream must never take the server down.

h2load ends its run by closing connections with server streams still sending. grpc then
drops the handler's generator, and the event loop finalizes it later, after grpc has freed
the call. The access log used to ask that dead call for its peer in the generator's
``finally`` and the process died of a segmentation fault (seen here within 1-3 runs, every
time, with the default settings). The peer is now taken while the call is alive.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from conftest import require_tool
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

pytestmark = pytest.mark.timeout(180)

RUNS = 6


def grpc_request(tmp_path: Path) -> Path:
    body = helloworld_pb2.HelloRequest(name="gone").SerializeToString()
    path = tmp_path / "request.grpc"
    path.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)
    return path


@pytest.mark.parametrize("access_log", ["true", "false"])
def test_streams_cut_off_by_the_client_leave_the_server_serving(
    spawn_server: Callable, tmp_path: Path, access_log: str
) -> None:
    h2load = require_tool("h2load", "apt-get install nghttp2-client")
    server = spawn_server(env={"GREETER_ACCESS_LOG": access_log, "GREETER_STREAM_MAX": "1000"})
    request = grpc_request(tmp_path)
    url = f"http://{server.address}/helloworld.Greeter/SayHelloStreamReply"
    argv = [
        h2load, "-c1", "-m4", "-D1200ms", "--warm-up-time=200ms", "-d", str(request),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-H", "x-greeter-stream-count: 1000", url,
    ]  # fmt: skip
    for run in range(RUNS):
        subprocess.run(argv, capture_output=True, timeout=60, check=False)
        assert server.proc.poll() is None, (
            f"the server died (exit {server.proc.returncode}) after run {run + 1}:\n"
            + server.output()[1][-3000:]
        )
    with grpc.insecure_channel(server.address) as channel:
        reply = helloworld_pb2_grpc.GreeterStub(channel).SayHello(
            helloworld_pb2.HelloRequest(name="still here"), timeout=10
        )
    assert reply.message == "Hello, still here!"
    code, _, err = server.stop()
    assert code == 0, err[-3000:]
    if access_log == "true":
        # The streams that were cut off are logged, with the client's address.
        cut = [line for line in err.splitlines() if '"code":"CANCELLED"' in line]
        assert cut, err[-3000:]
        assert all('"peer":"ipv4:127.0.0.1:' in line for line in cut)
