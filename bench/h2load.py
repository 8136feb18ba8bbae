"""Driving h2load as a gRPC client: a request file, gRPC headers, output parsing.

h2load speaks plain HTTP/2, so a gRPC call is a POST of one length-prefixed
message (``b"\\x00"`` + 4-byte big-endian length + serialized request) with
``content-type: application/grpc`` and ``te: trailers``. h2load counts HTTP
statuses only; the grpc-status of each method is checked separately with a
real gRPC client (:func:`bench.run.check_server`).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from greeter._proto import helloworld_pb2

SERVICE = helloworld_pb2.DESCRIPTOR.services_by_name["Greeter"].full_name
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")

_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)


class H2loadError(RuntimeError):
    pass


@dataclass(frozen=True)
class H2loadResult:
    seconds: float
    rps: float
    done: int
    succeeded: int
    failed: int
    errored: int


def grpc_frame(name: str = "world") -> bytes:
    """One gRPC message frame holding a HelloRequest."""
    body = helloworld_pb2.HelloRequest(name=name).SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def write_request_file(directory: Path, name: str = "world") -> Path:
    path = directory / "hello.grpc"
    path.write_bytes(grpc_frame(name))
    return path


def binary() -> str:
    path = shutil.which("h2load")
    if not path:
        raise H2loadError("h2load is not installed (apt-get install nghttp2-client)")
    return path


def parse(output: str) -> H2loadResult:
    finished = _FINISHED.search(output)
    requests = _REQUESTS.search(output)
    if not finished or not requests:
        raise H2loadError(f"cannot parse h2load output:\n{output[-2000:]}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    _, _, done, succeeded, failed, errored, _ = (int(g) for g in requests.groups())
    return H2loadResult(seconds, float(finished.group(3)), done, succeeded, failed, errored)


def run(
    port: int,
    method: str,
    request_file: Path,
    *,
    duration: float,
    warm_up: float,
    clients: int,
    streams: int,
    headers: tuple[str, ...] = (),
    core: int | set[int] | None = None,
    threads: int = 1,
) -> H2loadResult:
    """Call ``method`` for ``duration`` seconds over ``clients`` connections with
    ``streams`` calls in flight on each; h2load runs on ``core`` (one, or a set) when given."""
    args = [
        binary(),
        f"-t{threads}",
        f"-c{clients}",
        f"-m{streams}",
        f"-D{round(duration * 1000)}ms",
        f"--warm-up-time={round(warm_up * 1000)}ms",
        "-d",
        str(request_file),
    ]
    for header in (*GRPC_HEADERS, *headers):
        args += ["-H", header]
    args.append(f"http://127.0.0.1:{port}/{SERVICE}/{method}")

    def pin() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core} if isinstance(core, int) else core)

    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=duration + warm_up + 60,
        preexec_fn=pin,
        check=False,
    )
    if proc.returncode != 0:
        raise H2loadError(f"h2load exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    result = parse(proc.stdout)
    if result.failed or result.errored:
        raise H2loadError(f"h2load saw failures against {method}:\n{proc.stdout}")
    return result
