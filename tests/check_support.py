"""Helpers shared by the ``greeter check`` tests: a ``greeter serve --interop`` process, and
the JUnit XML read back and compared with the JSON report."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

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


def junit_cases(xml_text: str) -> dict[str, tuple[str, str]]:
    """name → (status, message) from JUnit XML."""
    found = {}
    for case in ET.fromstring(xml_text).iter("testcase"):
        failure, skipped = case.find("failure"), case.find("skipped")
        if failure is not None:
            found[case.get("name", "")] = ("FAIL", failure.get("message", ""))
        elif skipped is not None:
            found[case.get("name", "")] = ("SKIP", skipped.get("message", ""))
        else:
            found[case.get("name", "")] = ("PASS", "")
    return found


def assert_junit_agrees(report: dict[str, Any], xml_text: str) -> None:
    junit = junit_cases(xml_text)
    assert list(junit) == [c["name"] for c in report["cases"]]
    for c in report["cases"]:
        status, message = junit[c["name"]]
        assert status == c["status"], c
        if status != "PASS":
            assert message == c["detail"]
    suite = ET.fromstring(xml_text).find("testsuite")
    assert suite is not None
    assert int(suite.get("failures", "-1")) == report["summary"]["failed"]
    assert int(suite.get("skipped", "-1")) == report["summary"]["skipped"]
    assert int(suite.get("tests", "-1")) == len(report["cases"])
