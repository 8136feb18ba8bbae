"""Helpers shared by the ``greeter check`` tests: a ``greeter serve --interop`` process."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ServerProcess, free_port, outside_env


def serve_interop(folder: Path, *args: str, pod: str = "check-pod-0") -> ServerProcess:
    """``greeter serve --interop ARGS`` on a free loopback port, ready (no drain pause)."""
    env = outside_env()
    port, metrics_port = free_port(), free_port()
    env.update(
        {
            "GREETER_HOST": "127.0.0.1",
            "GREETER_PORT": str(port),
            "GREETER_METRICS_HOST": "127.0.0.1",
            "GREETER_METRICS_PORT": str(metrics_port),
            "GREETER_DRAIN_DELAY": "0",
            "GREETER_GRACE_PERIOD": "2",
            "GREETER_POD_NAME": pod,
        }
    )
    proc = ServerProcess(["--interop", *args], env, port, metrics_port, folder)
    proc.wait_ready()
    return proc
