"""Helpers shared by the load tester's tests (both engines): the CLI as a user runs it."""

from __future__ import annotations

import subprocess
import sys

from greeter.load.report import EXIT_CONNECT


def load_cli(
    *args: str, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``greeter load ARGS`` in a child process (given ``stdin``), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "greeter", "load", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_cannot_connect(*args: str) -> None:
    """``greeter load ARGS`` fails to connect: exit 3 and a plain message, no traceback."""
    bad = load_cli(*args)
    assert bad.returncode == EXIT_CONNECT, (args, bad.stderr)
    assert "cannot connect" in bad.stderr
    assert "Traceback" not in bad.stderr
