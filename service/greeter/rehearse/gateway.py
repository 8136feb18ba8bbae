"""What every rehearsal gateway shares: the names it answers and routes by, TLS to the pods,
and the process around its binary.

A gateway module (:mod:`greeter.rehearse.nginx`, :mod:`greeter.rehearse.envoy`) brings its own
configuration and a :class:`GatewayProcess` subclass that says how to render, validate, start
and stop that binary; the fleet and the scenarios use only what :class:`GatewayProcess` offers
(``address``, ``access_log``, ``start``, ``stop``, ``kill``, ``back_in_rotation``, and how it
treats a drain or a dead pod). A third gateway is one new module of that shape.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "grpc.example.com"
CANARY_HEADER = "x-canary"
CANARY_VALUE = "true"
# The names a gateway verifies the pods' certificates by: the Services the fleet runs
# (gitops/README.md: grpc-service in gateway-demo; the chart's grpcRoute.canary.backend).
BACKEND_HOST = "grpc-service.gateway-demo.svc"
CANARY_BACKEND_HOST = "grpc-service-canary.gateway-demo.svc"
STREAM_TIMEOUT_S = 3600
# A pod that does not accept a connection in this long counts as failed, and the call goes to
# another one. Only the connect: a call's own time is not bounded by it. A pod cut off by the
# network never answers the SYN, so every new connection to it costs this much (was 1 s).
CONNECT_TIMEOUT_S = 0.5
# The calls a gateway may send again, to another pod, after a try that got no answer in
# time: quick, idempotent unary methods, and only those. A per-try timeout (Envoy) or a
# short read timeout (nginx) is scoped to these paths, so slow calls and streams (greeter
# check's slow_unary and stream_gaps, a client's long server stream) are never cut by it.
IDEMPOTENT_METHODS = ("/helloworld.Greeter/SayHello",)
# How long a gateway waits on a pod for a quick idempotent call before it gives the call to
# another pod: Envoy's per-try timeout, nginx's connect/read/send timeouts in SayHello's
# location. A pod cut off by the network answers nothing, and without it the call would wait
# for the client's deadline; two tries on the two pods of a cut cluster, then one on a live
# pod, stay under the 2 s a caller would notice.
QUICK_TIMEOUT_S = 0.5
WEB_PATH = "/web/"


def tail_lines(path: Path, count: int) -> str:
    """The last ``count`` lines of a gateway's log ("" before it exists)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-count:])


def member_upstream(cluster: str) -> str:
    """The upstream group (nginx) or Envoy cluster of one member cluster's pods (header
    routing)."""
    return f"member-{cluster}"


@dataclass(frozen=True)
class BackendTLS:
    """TLS from the gateway to the backends: verified against ``ca``, by each Service's name."""

    ca: Path
    # The name sent as SNI and checked against the backend certificate's subjectAltName, per
    # Service (nginx would otherwise check the upstream group's name, "fleet" or "canary").
    fleet_name: str = BACKEND_HOST
    canary_name: str = CANARY_BACKEND_HOST
    protocols: str = "TLSv1.2 TLSv1.3"


@dataclass(frozen=True)
class Endpoint:
    """One pod as a gateway reaches it: ``127.B.C.P:port`` (or ``unix:/path.sock``)."""

    address: str
    cluster: str
    pod: str


@dataclass(frozen=True, kw_only=True)
class GatewaySpec:
    """What every gateway's configuration has: where it listens, the certificate it shows,
    how it reaches the pods. A gateway's own configuration adds its fleet and its knobs.
    Durations in seconds."""

    port: int
    cert: Path
    key: Path
    host: str = HOST
    # A backend that does not accept a connection in this long counts as failed.
    connect_timeout: float = CONNECT_TIMEOUT_S
    # TLS to the backends (verified against the fleet CA); None: cleartext HTTP/2.
    backend_tls: BackendTLS | None = None
    # A request header whose value names a cluster: such calls go to that cluster only; "" for
    # no header routing.
    route_header: str = ""


class GatewayError(RuntimeError):
    """A gateway is missing, its configuration is rejected, or it would not start."""


def find_binary(
    name: str, binary: str, hint: str, error: type[GatewayError], also: str = ""
) -> str:
    """Path of ``name`` (``binary`` if given, else PATH, else the folders in ``also``); the
    gateway's ``error`` with the install ``hint`` when there is none."""
    if binary:
        path = shutil.which(binary)
        if not path:
            raise error(f"{name} not found at {binary!r}: {hint}")
        return path
    path = shutil.which(name) or (shutil.which(name, path=also) if also else None)
    if not path:
        raise error(f"{name} is not installed: {hint}")
    return path


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


class GatewayProcess:
    """One gateway process in its own session, with its folder: rendered and validated
    config, start until ready (bounded), stop with escalation.

    A subclass sets ``name``, ``error``, ``conf`` and ``log`` and implements
    :meth:`render`, :meth:`command`, :meth:`validate_command`, :meth:`ready` and
    :meth:`graceful_stop`; the fleet's view of a gateway is the rest."""

    name = "gateway"
    error: type[GatewayError] = GatewayError
    # How to get the binary, and where to look for it after PATH (":"-separated folders).
    install_hint = ""
    search_path = ""
    # How many seconds the validation may take.
    validate_timeout = 30.0
    # A gateway that keeps its connections to the pods open (Envoy) learns of a pod's death
    # when that connection closes: a call written to it in that instant fails unretried.
    keeps_connections = False
    # Whether the gateway learns of a drain from its endpoint being removed (nginx: a
    # connection per call) rather than from its own health checks (Envoy).
    drain_by_endpoint = False

    def __init__(self, prefix: Path, port: int, conf: Path, log: Path, binary: str) -> None:
        self.prefix = prefix
        self.port = port
        self.conf = conf
        self.log = log
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def find(cls, binary: str = "") -> str:
        """Path of the gateway's binary (``binary``, else PATH, else ``search_path``);
        ``error`` naming ``install_hint`` when there is none."""
        return find_binary(cls.name, binary, cls.install_hint, cls.error, cls.search_path)

    # -- what a gateway module implements -------------------------------------
    def render(self) -> str:
        raise NotImplementedError

    def command(self, *extra: str) -> list[str]:
        raise NotImplementedError

    def validate_command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the started process answers (called until it does, bounded)."""
        return port_open(self.port)

    def graceful_stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Ask the process to finish what it has in hand (a signal, an admin call)."""
        raise NotImplementedError

    def rejected(self, check: subprocess.CompletedProcess[str]) -> str:
        """What the validation said, for the error."""
        return check.stderr.strip()

    @property
    def return_bound(self) -> float:
        """Seconds after a pod is SERVING again by which the gateway sends it calls."""
        raise NotImplementedError

    async def back_in_rotation(self, addresses: Sequence[str], timeout: float) -> None:
        """Until the gateway sends calls to the pods at ``addresses`` again (SERVING)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        """One line per call, written as each call ends."""
        raise NotImplementedError

    def write_config(self) -> None:
        """Render the configuration, have the binary validate it; ``error`` if rejected."""
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.render())
        check = subprocess.run(
            self.validate_command(),
            capture_output=True,
            text=True,
            timeout=self.validate_timeout,
            check=False,
        )
        if check.returncode != 0:
            raise self.error(f"{self.name} rejected {self.conf}:\n{self.rejected(check)}")

    def check_running(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise self.error(f"{self.name} exited with {self.proc.returncode}: {self.error_log()}")

    def start(self, timeout: float = 10.0) -> None:
        """Write the configuration, start the process, wait until :meth:`ready` (bounded)."""
        self.write_config()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise self.error(f"{self.name} was not ready on {self.address} within {timeout:g}s")

    def error_log(self, tail: int = 20) -> str:
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> int | None:
        """:meth:`graceful_stop`, then SIGTERM, then SIGKILL to the whole process group."""
        proc = self.proc
        if proc is None:
            return None
        for step, wait in ((self.graceful_stop, timeout), (_terminate, 3.0)):
            if proc.poll() is not None:
                break
            step(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(3.0)
        self.kill(proc)  # workers in the process's session: none outlive it
        self.proc = None
        return proc.returncode

    def kill(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        """SIGKILL the process's whole group, without waiting."""
        proc = proc or self.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
