"""``greeter check`` against ``greeter serve --interop`` on loopback: every case passes, the
JSON report matches its schema and the JUnit XML says the same; TLS for alpn_h2; gRPC-Web;
bad arguments exit 2, an unreachable target exits 3; docs/check.md's table is the registry's.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from greeter import certs
from greeter.check import choose, run_check, schema
from greeter.check.cases import GATEWAY, INTEROP, registry
from greeter.check.docs import markdown_table, with_table
from greeter.check.report import to_dict, to_junit
from greeter.cli import main
from greeter.client import Target
from tests.check_support import assert_junit_agrees, serve_interop
from tests.conftest import ROOT, ServerProcess, free_port, outside_env

# The standard interop cases the issue names; the compression ones come on top.
INTEROP_CASES = (
    "empty_unary", "large_unary", "client_streaming", "server_streaming", "ping_pong",
    "empty_stream", "cancel_after_begin", "cancel_after_first_response",
    "timeout_on_sleeping_server", "custom_metadata", "status_code_and_message",
    "special_status_message", "unimplemented_method", "unimplemented_service",
)  # fmt: skip
MAX_WAIT = "2s"


def check_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return check_clis([*args], timeout=timeout)[0]


def check_clis(*runs: list[str], timeout: float = 120) -> list[subprocess.CompletedProcess[str]]:
    """``greeter check ARGS`` for each list of ARGS, the processes side by side."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "greeter", "check", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=outside_env(),
        )
        for args in runs
    ]
    done = []
    for args, proc in zip(runs, procs, strict=True):
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


@pytest.fixture(scope="module")
def web_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def interop_server(
    tmp_path_factory: pytest.TempPathFactory, web_port: int
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("interop")
    proc = serve_interop(tmp, "--web-host=127.0.0.1", f"--web-port={web_port}")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    tmp = tmp_path_factory.mktemp("tls")
    ca = certs.make_ca(tmp)
    leaf = certs.make_leaf(tmp, "server", ["127.0.0.1"], ca)
    proc = serve_interop(tmp, f"--tls-cert={leaf.cert}", f"--tls-key={leaf.key}")
    yield proc, ca.cert
    proc.stop()


def test_every_case_passes_against_the_interop_server(
    interop_server: ServerProcess, tmp_path: Path
) -> None:
    out, junit = tmp_path / "check.json", tmp_path / "check.xml"
    done = check_cli(
        interop_server.address, "--plaintext", "--max-wait", MAX_WAIT,
        "-O", "json", "-o", str(out), "--junit", str(junit),
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "passed, 0 failed" in done.stdout
    report = json.loads(out.read_text())
    jsonschema.validate(report, schema())
    statuses = {c["name"]: c["status"] for c in report["cases"]}
    assert list(statuses) == list(registry()), "every case, in the registry's order"
    assert set(INTEROP_CASES) <= set(statuses)
    not_passed = {n: s for n, s in statuses.items() if s != "PASS"}
    assert not_passed == {"alpn_h2": "SKIP"}, [c for c in report["cases"] if c["status"] != "PASS"]
    assert report["interop"] is True
    by_name = {c["name"]: c for c in report["cases"]}
    assert "plaintext" in by_name["alpn_h2"]["detail"]
    # The size cases step up to 8 MiB; what the pod refused was its own limit, and said so.
    for name in ("request_size", "response_size"):
        measured = by_name[name]["measured"]
        assert measured["largest_passed"] >= 4 * 1024 * 1024, by_name[name]
        if "first_refused" in measured:
            assert measured["refused_by"] == "pod", by_name[name]
    # 16 KiB of metadata reaches the pod (grpc-core's limits follow max_metadata_size)
    assert by_name["metadata_large"]["measured"] == {"sizes": [8192, 16384]}, by_name
    assert by_name["slow_unary"]["measured"]["longest_survived_s"] == 2.0
    assert by_name["stream_gaps"]["measured"]["longest_survived_s"] == 2.0
    assert by_name["deadline_honoured"]["measured"]["pod"] == "check-pod-0"
    assert by_name["cancel_reaches_pod"]["measured"]["pod_code"] == "CANCELLED"
    assert_junit_agrees(report, junit.read_text())


def test_text_output_has_one_line_per_case_and_a_summary(interop_server: ServerProcess) -> None:
    only = "empty_unary,health,unimplemented_service"
    done = check_cli(interop_server.address, "--plaintext", "--only", only, "--skip", "health")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["PASS", "empty_unary"],
        ["PASS", "unimplemented_service"],
    ]
    assert lines[-1].startswith("ok: 2 passed, 0 failed, 0 skipped (2 cases)")


async def test_alpn_h2_passes_over_tls(tls_server: tuple[ServerProcess, Path]) -> None:
    proc, ca = tls_server
    target = Target(address=proc.address, cacert=str(ca))
    run = await run_check(target, choose(["alpn_h2", "health", "large_unary"]), max_wait=1.0)
    report = to_dict(run)
    jsonschema.validate(report, schema())
    assert {c["name"]: c["status"] for c in report["cases"]} == {
        "alpn_h2": "PASS",
        "health": "PASS",
        "large_unary": "PASS",
    }, report
    alpn = next(c for c in report["cases"] if c["name"] == "alpn_h2")
    assert alpn["measured"]["alpn"] == "h2"
    assert_junit_agrees(report, to_junit(run))


async def test_grpc_web_runs_what_it_can_carry_and_skips_the_rest(
    interop_server: ServerProcess, web_port: int
) -> None:
    target = Target(address=f"127.0.0.1:{web_port}")
    run = await run_check(target, choose(), max_wait=1.0, protocol="grpc-web")
    report = to_dict(run)
    jsonschema.validate(report, schema())
    cases = registry()
    for c in report["cases"]:
        if cases[c["name"]].web_skip:
            assert c["status"] == "SKIP", c
            assert "gRPC-Web" in c["detail"], c
        elif c["name"] != "alpn_h2":
            assert c["status"] == "PASS", c


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``greeter check ARGS`` through the command line's own main(): (exit code, stderr)."""
    try:
        code = main(["check", *args])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_bad_arguments_exit_2_naming_the_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = in_process(capsys, "127.0.0.1:1", "--only", "empty_unary,no_such_case")
    assert code == 2
    assert "no such case: no_such_case" in err
    assert "empty_unary, large_unary" in err, "lists the case names"
    assert in_process(capsys, "127.0.0.1:1", "--skip", "nope")[0] == 2
    code, err = in_process(capsys, "127.0.0.1:1", "--max-wait", "soon")
    assert code == 2
    assert "--max-wait" in err
    code, err = in_process(capsys, "127.0.0.1:1", "--plaintext", "--insecure")
    assert code == 2
    assert "contradict" in err


def test_an_unreachable_target_exits_3_with_load_s_hints(
    interop_server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = check_cli(f"127.0.0.1:{free_port()}", "--plaintext")
    assert closed.returncode == 3, closed.stderr
    assert "cannot connect" in closed.stderr
    assert "Traceback" not in closed.stderr
    code, err = in_process(capsys, f"127.0.0.1:{free_port()}", "--protocol", "grpc-web")
    assert code == 3, err
    assert "cannot connect" in err
    code, err = in_process(capsys, interop_server.address, "--tls")
    assert code == 3
    assert "speaks plaintext gRPC" in err


def test_without_interop_the_interop_cases_skip_naming_the_flag(tmp_path: Path) -> None:
    env = outside_env()
    port = free_port()
    env.update({"GREETER_HOST": "127.0.0.1", "GREETER_PORT": str(port)})
    env.update({"GREETER_METRICS_PORT": str(free_port()), "GREETER_DRAIN_DELAY": "0"})
    proc = ServerProcess([], env, port, 0, tmp_path)
    try:
        proc.wait_ready()
        run = asyncio.run(run_check(Target(proc.address), choose(["empty_unary", "health"]), 1.0))
    finally:
        proc.stop()
    empty, health = run.results
    assert empty.status == "SKIP"
    assert "--interop" in empty.detail
    assert health.status == "PASS"


def test_the_registry_and_the_docs_table_agree() -> None:
    cases = registry()
    assert [c.group for c in cases.values()] == sorted(
        (c.group for c in cases.values()), key=lambda g: g != INTEROP
    )
    assert {c.group for c in cases.values()} == {INTEROP, GATEWAY}
    for case in cases.values():
        assert case.proves, case.name
        assert case.fix, case.name
    page = (ROOT / "docs" / "check.md").read_text()
    assert markdown_table() in page
    assert with_table(page) == page, (
        "docs/check.md's table is stale: python -m greeter.check.docs --write docs/check.md"
    )


def test_a_target_refusing_every_call_fails_rather_than_skips(tmp_path: Path) -> None:
    """Only UNIMPLEMENTED means "no interop service here"; a refusal (no token) runs the
    cases, which fail; with -m the token, they pass."""
    proc = serve_interop(tmp_path, "--auth-enabled=true", "--auth-tokens=secret-token")
    try:
        only = ("--only", "empty_unary,large_unary")
        refused, allowed = check_clis(
            [proc.address, "--plaintext", *only],
            [proc.address, "--plaintext", *only, "-m", "authorization:Bearer secret-token"],
        )
    finally:
        proc.stop()
    assert refused.returncode == 1, refused.stdout
    assert refused.stdout.count("FAIL ") == 2
    assert "UNAUTHENTICATED" in refused.stdout
    assert allowed.returncode == 0, allowed.stdout
