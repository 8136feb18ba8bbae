"""A check run as text (one line per case and a summary), JSON (report.schema.json) and
JUnit XML (one testcase per case, what CI systems ingest)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from greeter.check.cases import FAIL, PASS, SKIP
from greeter.check.runner import CheckRun
from greeter.client import EXIT_FAILED, EXIT_OK
from greeter.wording import plural

SCHEMA_ID = "greeter-check-report/v1"


def schema() -> dict[str, Any]:
    """The JSON schema of :func:`to_json`'s output."""
    text = resources.files("greeter.check").joinpath("report.schema.json").read_text()
    return dict(json.loads(text))


def counts(run: CheckRun) -> dict[str, int]:
    found = {status: 0 for status in (PASS, FAIL, SKIP)}
    for result in run.results:
        found[result.status] += 1
    return {"passed": found[PASS], "failed": found[FAIL], "skipped": found[SKIP]}


def exit_code(run: CheckRun) -> int:
    return EXIT_FAILED if counts(run)["failed"] else EXIT_OK


def summary_line(run: CheckRun) -> str:
    c = counts(run)
    verdict = "FAILED" if c["failed"] else "ok"
    return (
        f"{verdict}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped "
        f"({plural(len(run.results), 'case')}) against {run.target.address} "
        f"in {run.elapsed_s:.1f}s"
    )


def to_text(run: CheckRun) -> str:
    width = max((len(r.name) for r in run.results), default=0)
    lines = [f"{r.status} {r.name:<{width}} {r.elapsed_s:6.2f}s  {r.detail}" for r in run.results]
    return "\n".join([*lines, summary_line(run)]) + "\n"


def to_dict(run: CheckRun) -> dict[str, Any]:
    return {
        "schema": SCHEMA_ID,
        "target": run.target.address,
        "protocol": run.protocol,
        "max_wait_s": run.max_wait,
        "interop": run.interop,
        "interop_status": run.interop_status,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(run.elapsed_s, 3),
        "summary": counts(run),
        "passed": not counts(run)["failed"],
        "cases": [r.as_dict() for r in run.results],
    }


def to_json(run: CheckRun) -> str:
    return json.dumps(to_dict(run), indent=2, ensure_ascii=False) + "\n"


def to_junit(run: CheckRun) -> str:
    c = counts(run)
    suites = ET.Element("testsuites", name="greeter check")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"greeter check {run.target.address}",
        tests=str(len(run.results)),
        failures=str(c["failed"]),
        errors="0",
        skipped=str(c["skipped"]),
        time=f"{run.elapsed_s:.3f}",
    )
    for result in run.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"greeter.check.{result.group}",
            name=result.name,
            time=f"{result.elapsed_s:.3f}",
        )
        if result.status == FAIL:
            failure = ET.SubElement(case, "failure", message=result.detail, type="FAIL")
            failure.text = result.detail
        elif result.status == SKIP:
            ET.SubElement(case, "skipped", message=result.detail)
        else:
            out = ET.SubElement(case, "system-out")
            out.text = result.detail
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
