"""One rehearsal pod: a ``greeter serve`` process the fleet starts, drains, kills and
starts again, on an address it keeps across restarts: a loopback address of its own
(``127.B.C.P``, :mod:`greeter.rehearse.netfilter`) on the real pods' ports, so a packet
filter can cut it off like a cluster's network (the address is the one thing a gateway knows
of it)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from greeter.rehearse.cpu_quota import CpuQuota
from greeter.rehearse.netfilter import GRPC_PORT
from greeter.rehearse.prometheus import ScrapeTarget, service_labels

RECONNECT_BACKOFF_MS = 100  # a direct channel to a backend retries its connect this often


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Backend:
    """One ``greeter serve`` process on an address it keeps across restarts."""

    cluster: str
    pod: str
    host: str
    command: list[str]
    env: dict[str, str]
    log: Path
    # With TLS: the CA that signed the backend's certificate and the name it carries; the
    # readiness check verifies both, as the gateway does.
    ca: Path | None = None
    server_name: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    restarts: int = 0
    # /metrics on the pod's address (kept across restarts), 0 when metrics are off.
    metrics_port: int = 0
    # The gRPC-Web port on the pod's address (0: none).
    web_port: int = 0
    # The gRPC port (the same on every pod, as in the fleet).
    port: int = GRPC_PORT
    # The CPU quota that holds the process (``resources.limits.cpu``) once it is SERVING,
    # kept across restarts, and the cores it is pinned to (``taskset -c``; "": any).
    quota: CpuQuota | None = None
    cpus: str = ""

    def scrape_target(self) -> ScrapeTarget:
        """How Prometheus scrapes this backend: its Service's job and namespace, its names."""
        job, namespace = service_labels(self.server_name)
        address = f"{self.host}:{self.metrics_port}"
        return ScrapeTarget(job, namespace, self.cluster, self.pod, address)

    @property
    def web_upstream(self) -> str:
        return f"{self.host}:{self.web_port}"

    @property
    def address(self) -> str:
        """The gRPC target."""
        return f"{self.host}:{self.port}"

    @property
    def upstream(self) -> str:
        """How a gateway names this backend."""
        return self.address

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def cores(self) -> float | None:
        """The cores its quota holds it to (None: no quota)."""
        return self.quota.cores if self.quota is not None else None

    def spawn(self) -> None:
        argv = ["taskset", "-c", self.cpus, *self.command] if self.cpus else self.command
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own session: a terminal's Ctrl-C reaches the rehearsal, which drains these.
                start_new_session=True,
            )

    def channel(self) -> grpc.aio.Channel:
        """A direct channel to the backend (TLS verified against its CA when it has one).

        It reconnects every 0.1 s: with grpc's default backoff (1 s, growing) a channel
        opened before the backend listens would see it up to a second or more late, and
        the "serving again" event would lag the calls the gateway already sends it."""
        options: list[tuple[str, object]] = [
            (f"grpc.{name}_reconnect_backoff_ms", RECONNECT_BACKOFF_MS)
            for name in ("initial", "max")  # not "min": that is the connect timeout
        ]
        if self.ca is None:
            return grpc.aio.insecure_channel(self.address, options=options)
        options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(
            self.address, grpc.ssl_channel_credentials(self.ca.read_bytes()), options=options
        )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the backend's health check answers SERVING (bounded)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        async with self.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    code = None if self.proc is None else self.proc.returncode
                    raise RuntimeError(f"{self.pod} exited with {code}; see {self.log}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        self._hold()
                        return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.pod} was not SERVING within {timeout}s; see {self.log}")

    def _hold(self) -> None:
        """Into its CPU quota, once it is SERVING: its start-up (a second or two of CPU for
        Python's imports) held to a few hundredths of a core would take a minute."""
        if self.quota is not None and self.proc is not None:
            self.quota.add(self.proc.pid)

    def signal(self, signum: int) -> None:
        if self.alive and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, timeout)
        return proc.poll()

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM (drain), then SIGKILL if it is still there after ``timeout``."""
        if not self.alive:
            return self.proc.returncode if self.proc else None
        self.signal(signal.SIGTERM)
        code = await self.wait_exit(timeout)
        if code is None:
            self.signal(signal.SIGKILL)
            code = await self.wait_exit(5.0)
        return code
