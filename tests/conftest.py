"""Shared fixtures: real servers on 127.0.0.1, real channels, real tools.

``running`` starts a real Greeter in the test's event loop; ``spawn_server``
starts one as a separate ``greeter serve`` process (for signals and exit codes);
``greeter_image`` builds the Dockerfile's image once per test run for every test
that runs it (test_image.py, test_pod.py).
``require_tool`` skips a test when a tool is missing on a developer machine,
but fails it in CI (``CI=true``), where .ci/run must have installed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import deploy_support
import grpc
import hypothesis
import pytest

from greeter.server import GreeterServer, StartupError, running_server
from greeter.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# The tools installed with the test interpreter (.venv/bin: hadolint, ruff...) come first on
# PATH, so `.venv/bin/python -m pytest` finds them without activating the virtualenv.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Property tests judge results, never speed: no per-example deadline, on any machine.
hypothesis.settings.register_profile(
    "greeter", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
hypothesis.settings.load_profile("greeter")


def outside_env() -> dict[str, str]:
    """This process's environment without any ``GREETER_*`` setting or OpenTelemetry
    ``OTEL_*`` variable: what a spawned server or tool starts from, so settings exported in
    the developer's shell cannot leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("GREETER_", "OTEL_"))}


def require_tool(name: str, hint: str = "") -> str:
    """Path of ``name`` on PATH; skip locally when missing, fail in CI."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed{': ' + hint if hint else ''}"
    if IN_CI:
        pytest.fail(f"{message} (CI must install it in .ci/run)")
    pytest.skip(message)
    raise AssertionError("unreachable")


T = TypeVar("T")


async def until(
    read: Callable[[], T], done: Callable[[T], bool], timeout: float = 5.0, every: float = 0.02
) -> T:
    """``read()`` again every ``every`` seconds until ``done(value)`` or ``timeout`` has
    passed, and the last value: the bounded wait for what a server records just after its
    client saw the result."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        await asyncio.sleep(every)
        value = read()
    return value


def serving_line(log: str) -> dict[str, object]:
    """The server's JSON start-up line ("serving") from its log."""
    for line in log.splitlines():
        record = json.loads(line)
        if record.get("msg") == "serving":
            return record
    raise AssertionError(f"no 'serving' line in:\n{log}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_settings(**overrides: object) -> Settings:
    """Settings for an in-process test server: loopback, ephemeral port, no drain pause."""
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_host": "127.0.0.1",
        "metrics_port": free_port(),
        "drain_delay": 0.0,
        "grace_period": 2.0,
        "pod_name": "pod-a",
        "cluster_name": "cluster-a",
        "access_log": False,
    }
    values.update(overrides)
    # Two free_port() picks can return the same ephemeral port: the metrics port (ours) must
    # not be the web port a test picked for itself.
    while "metrics_port" not in overrides and values["metrics_port"] == values.get("web_port"):
        values["metrics_port"] = free_port()
    return Settings(**values)  # type: ignore[arg-type]


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


PORT_TRIES = 3  # a port free_port() found may be taken by someone else before we bind it


@contextlib.asynccontextmanager
async def running(**overrides: object) -> AsyncIterator[GreeterServer]:
    """``async with running(auth_enabled=True, ...) as server:`` then dial ``server.port``."""
    async with contextlib.AsyncExitStack() as stack:
        for attempt in range(1, PORT_TRIES + 1):
            try:
                server = await stack.enter_async_context(running_server(test_settings(**overrides)))
                break
            except StartupError as exc:
                lost_race = "metrics port" in str(exc) and "metrics_port" not in overrides
                if not lost_race or attempt == PORT_TRIES:
                    raise
        yield server


@contextlib.asynccontextmanager
async def channel_to(server: GreeterServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture
async def server() -> AsyncIterator[GreeterServer]:
    async with running() as srv:
        yield srv


@pytest.fixture
async def channel(server: GreeterServer) -> AsyncIterator[grpc.aio.Channel]:
    async with channel_to(server) as ch:
        yield ch


class ServerProcess:
    """A ``greeter serve`` child process on a free port."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        port: int,
        metrics_port: int,
        logs: Path,
        preexec: Callable[[], object] | None = None,
    ) -> None:
        self.port = port
        self.metrics_port = metrics_port
        # Output goes to files, not pipes: a busy server (access log on) would fill a pipe
        # nobody reads and freeze.
        logs.mkdir(parents=True, exist_ok=True)
        self._out = logs / f"serve-{port}.out"
        self._err = logs / f"serve-{port}.err"
        with self._out.open("w") as out, self._err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "greeter", "serve", *args],
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                preexec_fn=preexec,
            )

    def output(self) -> tuple[str, str]:
        """What the server printed so far: (stdout, stderr)."""
        return self._out.read_text(), self._err.read_text()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                _, err = self.output()
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{err}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise AssertionError("server did not start listening in time")

    def wait(self, timeout: float = 30.0) -> tuple[int, str, str]:
        """Wait for the process to exit by itself (no signal sent)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"server did not exit within {timeout}s:\n{self.output()[1]}"
            ) from None
        return self.proc.returncode, *self.output()

    def stop(self, timeout: float = 30.0) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, *self.output()


@pytest.fixture
def spawn_server(tmp_path: Path) -> Iterator[object]:
    """``spawn_server("--drain-delay", "1", env={...})`` → a ready ServerProcess."""
    started: list[ServerProcess] = []

    def spawn(
        *args: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        preexec: Callable[[], object] | None = None,
    ) -> ServerProcess:
        for attempt in range(1, PORT_TRIES + 1):
            proc = start(list(args), env or {}, preexec)
            if not wait:
                return proc
            try:
                proc.wait_ready()
                return proc
            except AssertionError:
                lost_race = proc.proc.returncode == 3 and "cannot listen" in proc.output()[1]
                ours = not {"GREETER_PORT", "GREETER_METRICS_PORT"} & set(env or {})
                if not (lost_race and ours) or attempt == PORT_TRIES:
                    raise
        raise AssertionError("unreachable")

    def start(
        args: list[str], env: dict[str, str], preexec: Callable[[], object] | None
    ) -> ServerProcess:
        port, metrics_port = free_port(), free_port()
        full_env = outside_env()
        full_env.update(
            {
                "GREETER_HOST": "127.0.0.1",
                "GREETER_PORT": str(port),
                "GREETER_METRICS_HOST": "127.0.0.1",
                "GREETER_METRICS_PORT": str(metrics_port),
                "GREETER_DRAIN_DELAY": "0",
                "GREETER_GRACE_PERIOD": "5",
                "GREETER_LOG_FORMAT": "json",
            }
        )
        full_env.update(env)
        proc = ServerProcess(args, full_env, port, metrics_port, tmp_path / "servers", preexec)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
        proc.proc.wait()


@pytest.fixture(scope="session")
def greeter_image() -> Iterator[deploy_support.BuiltImage]:
    """The image built from the Dockerfile (buildah, debootstrap base): one build per test run,
    shared by every test that needs it, removed at the end."""
    podman = deploy_support.tool("podman")
    env = deploy_support.container_env()
    image = deploy_support.build_image(env)
    yield image
    deploy_support.run([podman, "rmi", "-f", image.name], env=env, timeout=120)
