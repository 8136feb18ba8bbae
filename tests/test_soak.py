"""The CI variant of bench/soak.py: 80,000 mixed RPCs against one spawned server,
with the same checks as the full million (zero errors, RSS growth under 10% after
warm-up, file descriptors back to baseline once the clients leave)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, outside_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_short_soak() -> None:
    env = outside_env()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--short", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["rpcs"] == 80_000
    assert report["unary"] > 0
    assert report["server_stream"] > 0
    assert report["bidi"] > 0
    assert report["errors"] == {}
    assert report["rss_growth"] < 0.10, report
    assert report["fds_after"] <= report["fds_before"], report
    assert report["passed"] is True
    assert done.returncode == 0
