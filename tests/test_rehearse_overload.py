"""The fleet past its capacity (``greeter rehearse --scenario overload``): every pod held to a
CPU quota by a cgroup of its own, one pod to a much smaller one; the fleet's capacity through
Envoy, then twice that; the report's numbers add up, the slow pod serves fewer calls, the
exit code follows ``--min-goodput``; bad flags exit 2 naming themselves; the cgroups are gone
after every run (a SIGKILLed run's by the next). The verdict is tested with thresholds no
machine can miss (0 passes, 100 fails): the goodput itself is measured, not asserted here
(docs/performance.md, "Through a gateway"). Needs root and the cgroup v1 cpu controller
(CI runs as root); the flag checks run everywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rehearse_support import descendants, rehearse

from conftest import IN_CI
from greeter.cli import build_parser, main
from greeter.rehearse import cpu_quota
from greeter.rehearse.cli import per_try_timeout
from greeter.rehearse.envoy import EnvoyError, find_envoy
from greeter.rehearse.envoy_config import PER_TRY_TIMEOUT_S
from greeter.rehearse.findings import OVERLOAD_CODES, REFUSED_CODES
from greeter.rehearse.fleet import QUOTA_PREFIX

NO_QUOTA = cpu_quota.problem()


def _needs_quota() -> None:
    if NO_QUOTA:
        if IN_CI:
            pytest.fail(f"CI must be able to hold pods to a CPU quota: {NO_QUOTA}")
        pytest.skip(NO_QUOTA)
    try:
        find_envoy("")
    except EnvoyError as exc:
        pytest.skip(str(exc))


# Three pods, one cluster each (two pods per cluster would do too; three keep it cheap): two
# at 0.1 core, the slow one at a fifth of that. The scenario's own default: no per-try
# timeout (the other scenarios' 0.5 s one gives up on every call a pod keeps queued longer,
# which past capacity is every call: docs/performance.md, "Through a gateway").
SLOW = "cluster-c-greeter-0"
FLEET = (
    "--gateway", "envoy", "--clusters", "cluster-a,cluster-b,cluster-c", "--pods", "1",
    "--no-canary", "--no-web", "--pod-cpu", "0.1", "--pod-cpu", f"{SLOW}=0.02",
    "--drain-delay", "0", "--grace-period", "1",
)  # fmt: skip
OVERLOAD = ("--scenario", "overload", "--overload-for", "3")


def _groups(pid: int) -> list[Path]:
    mine = f"{QUOTA_PREFIX}-pid{pid}-"
    return [g for g in cpu_quota.groups(QUOTA_PREFIX) if g.name.startswith(mine)]


def _held(pid: int) -> dict[str, list[str]]:
    """Run ``pid``'s groups that hold a process: the PIDs in each."""
    held = {}
    for group in _groups(pid):
        try:
            procs = (group / "cgroup.procs").read_text().split()
        except OSError:
            continue
        if procs:
            held[group.name] = procs
    return held


@pytest.fixture(scope="module")
def killed_then_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run SIGKILLed once its pods are in their groups (and left running there), then a
    whole overload run (which sweeps the killed run's groups first, moving what is still in
    them out) with --min-goodput 0 and a page."""
    _needs_quota()
    killed = rehearse(*FLEET, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(_held(killed.pid)) < 3 and time.monotonic() < deadline:
            assert killed.poll() is None, killed.communicate()[1]
            time.sleep(0.1)
        left = descendants(killed.pid)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
    killed.communicate()
    stale = _held(killed.pid)
    page = tmp_path_factory.mktemp("overload") / "overload.html"
    proc = rehearse(*FLEET, *OVERLOAD, "--min-goodput", "0", "--json", "--html", str(page))
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        for pid in left:  # what SIGKILL left running: the pods (sessions of their own), Envoy
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
    return {
        "stale": stale,
        "killed_pid": killed.pid,
        "code": proc.returncode,
        "pid": proc.pid,
        "summary": json.loads(out) if out.strip() else {},
        "banner": err,
        "page": page,
    }


def test_a_killed_run_leaves_groups_the_next_run_removes(killed_then_run: dict[str, Any]) -> None:
    run = killed_then_run
    assert len(run["stale"]) == 3, "SIGKILL leaves the pods' groups behind, the pods in them"
    assert _groups(run["killed_pid"]) == []
    assert _groups(run["pid"]) == [], "a run removes its own groups"


def test_overload_reports_capacity_goodput_codes_and_pods(killed_then_run: dict[str, Any]) -> None:
    run = killed_then_run
    s = run["summary"]
    assert run["code"] == 0, run["banner"]
    assert s["scenario"] == "overload"
    assert s["level"] == 2
    assert s["deadline_s"] == 2
    assert s["min_goodput"] == 0
    assert s["capacity"] > 0
    assert s["asked_rps"] == pytest.approx(2 * s["capacity"], rel=0.01)
    # The calls add up: every code the report names, plus the rest, is every call sent.
    assert list(s["codes"]) == [*OVERLOAD_CODES, "other"]
    assert sum(s["codes"].values()) == s["count"]
    assert (
        s["codes"]["OK"]
        + s["refused"]
        + sum(n for code, n in s["codes"].items() if code not in ("OK", *REFUSED_CODES))
        == s["count"]
    )
    assert s["refused"] == sum(s["codes"][c] for c in REFUSED_CODES)
    assert s["past_deadline"] == s["codes"]["DEADLINE_EXCEEDED"]
    assert s["goodput"] == pytest.approx(s["codes"]["OK"] / s["duration_s"], rel=0.01, abs=0.2)
    assert s["goodput_x"] == pytest.approx(s["goodput"] / s["capacity"], abs=0.01)
    assert s["sent_rps"] == pytest.approx(s["count"] / s["duration_s"], rel=0.01, abs=0.2)
    assert s["kept_up"] == (s["sent_rps"] >= 0.95 * s["asked_rps"])
    assert s["status_codes"].get("OK", 0) == s["codes"]["OK"]
    assert all(flags in ("UO", "UH") for flags in s["gateway_answered"]), s["gateway_answered"]
    # Each pod: its quota, its calls by the gateway's log; the slow pod served clearly fewer.
    pods = s["pods"]
    assert set(pods) == {"cluster-a-greeter-0", "cluster-b-greeter-0", SLOW}
    assert pods[SLOW]["cores"] == 0.02
    fast = [p for name, p in pods.items() if name != SLOW]
    assert all(p["cores"] == 0.1 for p in fast)
    for p in fast:
        assert pods[SLOW]["ok"] * 2 < p["ok"], pods
        assert s["capacity_by_pod"][SLOW] * 2 < s["capacity_by_pod"]["cluster-a-greeter-0"]
    assert all(p["throttled_s"] > 0 for p in pods.values()), pods  # the quotas held them
    # The load tester on a core of its own, the pods on another.
    if len(os.sched_getaffinity(0)) > 1:
        assert s["client_core"] is not None
        assert s["pod_cores"] != str(s["client_core"])
    for pod in pods:
        assert f"{pod} " in run["banner"]
    assert "cpu 0.02 core" in run["banner"]


def test_overload_page(killed_then_run: dict[str, Any]) -> None:
    text = killed_then_run["page"].read_text()
    assert "greeter rehearse: overload" in text
    assert 'data-passed="true"' in text
    # The pods' refusals name no pod, and are not the gateway's own answers.
    assert "no backend (gateway" not in text
    assert "the capacity" in text
    assert "goodput" in text


def test_goodput_below_min_fails_with_exit_1_and_says_why() -> None:
    _needs_quota()
    proc = rehearse(*FLEET, *OVERLOAD, "--min-goodput", "100")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    first = next(line for line in out.splitlines() if line.startswith(("PASSED", "FAILED")))
    assert first.startswith("FAILED: goodput "), out
    assert "(min 100x)" in first
    assert "client kept up" in out
    assert "throttled" in out
    assert _groups(proc.pid) == []


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--pod-cpu", "0"), "--pod-cpu 0: 0 is not between 0.01 and 64 cores"),
        (("--pod-cpu", "lots"), "--pod-cpu lots: 'lots' is not a number of cores"),
        (("--pod-cpu", "nope=0.1"), "--pod-cpu nope=0.1: no pod 'nope'"),
        (("--pod-cpu", "0.1", "--pod-cpu", "0.2"), "every pod is given twice"),
        ((*OVERLOAD, "--overload-level", "0"), "--overload-level 0: must be more than 0"),
        ((*OVERLOAD, "--overload-deadline", "-1"), "--overload-deadline -1: must be more"),
        (("--scenario", "overload", "--overload-for", "0"), "--overload-for 0: must be more"),
        ((*OVERLOAD, "--min-goodput", "-0.5"), "--min-goodput -0.5: must not be negative"),
        ((*OVERLOAD, "--max-failed", "3"), "--max-failed does not go with --scenario overload"),
        (
            (*OVERLOAD, "--pod-cpu", "cluster-a-greeter-0=0.1"),
            "every pod to a quota: --pod-cpu CORES for all, or one for cluster-a-greeter-1",
        ),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    flags: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rehearse", "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert len(err.strip().splitlines()) == 1, err


def test_where_no_group_can_be_made_the_reason_is_one_line(tmp_path: Path) -> None:
    reason = cpu_quota.problem(tmp_path)
    if os.geteuid() == 0:
        assert reason == f"no cgroup v1 cpu controller at {tmp_path}"
        return
    assert reason == "not root: a CPU quota needs a cgroup (run as root)"
    done = subprocess.run(
        [sys.executable, "-m", "greeter", "rehearse", "--pod-cpu", "0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"greeter rehearse: --pod-cpu unavailable: {reason}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), PER_TRY_TIMEOUT_S),  # the partition's quick per-try timeout
        (("--scenario", "partition"), PER_TRY_TIMEOUT_S),
        (("--scenario", "overload"), 0.0),  # none: a full pod's queue is longer
        (("--scenario", "overload", "--per-try-timeout", "1.5"), 1.5),  # said, kept
        (("--scenario", "drain", "--per-try-timeout", "0"), 0.0),
    ],
)
def test_the_per_try_timeout_default_follows_the_scenario(
    args: tuple[str, ...], expected: float
) -> None:
    parsed = build_parser().parse_args(["rehearse", *args])
    assert per_try_timeout(parsed) == expected
