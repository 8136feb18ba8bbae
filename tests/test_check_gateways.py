"""``greeter check`` through real gateways.

The rehearsal's nginx and Envoy with their shipped configurations (pods with ``--interop``):
every case passes, or skips for a reason stated here. Then deliberately broken gateways, each
a real nginx or Envoy started here in front of one ``greeter serve --interop`` on loopback
(their configurations are bench.gateway's, with the one setting changed): each ``greeter
check`` exits 1, naming the right case and the limit it measured.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bench.gateway import ENVOY_HINT, NGINX_HINT, envoy_config, find, nginx_config, wait_ready
from bench.run import stop
from greeter.check import choose, run_check, schema
from greeter.check.report import to_dict
from greeter.rehearse.fleet import Rehearsal, RehearsalConfig
from tests.check_support import assert_junit_agrees, serve_interop
from tests.conftest import IN_CI, ServerProcess, free_port, outside_env, require_tool

# Short waits keep CI cheap (2 s); against the broken Envoy 4 s, so that its route timeout
# sits between the long cases' steps (1 s, 4 s).
MAX_WAIT_S = 4.0
ROUTE_TIMEOUT_S = 3


def _require(binary: str, hint: str) -> str:
    try:
        return find(binary, hint)
    except Exception as exc:  # bench.gateway.GatewayError: missing
        if IN_CI:
            pytest.fail(f"{exc} (CI must install it)")
        pytest.skip(str(exc))
        raise AssertionError("unreachable") from exc


def failed(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["cases"] if c["status"] == "FAIL"}


def skipped(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["cases"] if c["status"] == "SKIP"}


# -- the rehearsal's gateways, as shipped --------------------------------------------------
@pytest.mark.parametrize("gateway", ["nginx", "envoy"])
async def test_the_rehearsal_gateways_carry_every_case(gateway: str, tmp_path: Path) -> None:
    if gateway == "nginx":
        require_tool("nginx", NGINX_HINT)
    else:
        _require("envoy", ENVOY_HINT)
    config = RehearsalConfig(
        port=0,
        gateway=gateway,
        drain_delay=0.5,
        grace_period=5.0,
        workdir=tmp_path / "rehearsal",
        server_args=("--interop",),
    )
    async with Rehearsal(config) as rehearsal:
        run = await run_check(rehearsal.target(), choose(), max_wait=2.0)
        pods = {b.pod for cluster in config.clusters for b in rehearsal.cluster(cluster)}
    report = to_dict(run)
    jsonschema.validate(report, schema())
    assert report["interop"] is True
    assert not failed(report), failed(report)
    # Nothing skips through a TLS gateway: alpn_h2 runs, and the lookups reach the pods.
    assert not skipped(report), skipped(report)
    by_name = {c["name"]: c for c in report["cases"]}
    assert by_name["alpn_h2"]["measured"]["alpn"] == "h2"
    # The lookups found the pods that served the calls, among the fleet's.
    assert by_name["deadline_honoured"]["measured"]["pod"] in pods
    assert by_name["cancel_reaches_pod"]["measured"]["pod"] in pods


# -- deliberately broken gateways -----------------------------------------------------------
@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = serve_interop(tmp_path_factory.mktemp("backend"), pod="broken-gw-pod")
    yield proc
    proc.stop()


@contextlib.contextmanager
def running_gateway(name: str, argv: list[str], port: int, folder: Path) -> Iterator[int]:
    log = folder / "stderr.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)
    try:
        wait_ready(port, name, proc, log)
        yield port
    finally:
        stop(proc, 10)


@contextlib.contextmanager
def broken_envoy(backend_port: int, folder: Path, route_timeout: str) -> Iterator[int]:
    envoy = _require("envoy", ENVOY_HINT)
    port, admin = free_port(), free_port()
    config = envoy_config(port, backend_port, admin)
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["timeout"] = route_timeout
    path = folder / "envoy.json"
    path.write_text(json.dumps(config))
    argv = [envoy, "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "-l", "error"]
    with running_gateway("envoy", argv, port, folder) as gw:
        yield gw


@contextlib.contextmanager
def broken_nginx(backend_port: int, folder: Path, *directives: str) -> Iterator[int]:
    nginx = require_tool("nginx", NGINX_HINT)
    port = free_port()
    text = nginx_config(port, backend_port, folder)
    server = "        location / {"
    assert server in text
    text = text.replace(server, "".join(f"        {d};\n" for d in directives) + server)
    path = folder / "nginx.conf"
    path.write_text(text)
    argv = [nginx, "-p", str(folder), "-c", str(path), "-e", str(folder / "error.log")]
    with running_gateway("nginx", argv, port, folder) as gw:
        yield gw


def check_through(
    port: int, folder: Path, max_wait: float = 2.0
) -> tuple[int, dict[str, Any], str]:
    """The real command through the gateway: exit code, JSON report, text output."""
    out, junit = folder / "check.json", folder / "check.xml"
    done = subprocess.run(
        [
            sys.executable, "-m", "greeter", "check", f"127.0.0.1:{port}", "--plaintext",
            "--max-wait", f"{max_wait:g}s", "-O", "json", "-o", str(out), "--junit", str(junit),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=outside_env(),
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(out.read_text())
    jsonschema.validate(report, schema())
    assert_junit_agrees(report, junit.read_text())
    return done.returncode, report, done.stdout


def test_envoy_with_a_3s_route_timeout_fails_the_long_calls_at_3s(
    backend: ServerProcess, tmp_path: Path
) -> None:
    with broken_envoy(backend.port, tmp_path, f"{ROUTE_TIMEOUT_S}s") as port:
        code, report, summary = check_through(port, tmp_path, MAX_WAIT_S)
    assert code == 1, summary
    assert set(failed(report)) == {"slow_unary", "stream_gaps"}, failed(report)
    for case in failed(report).values():
        measured = case["measured"]
        assert measured["longest_survived_s"] == 1.0, case
        assert ROUTE_TIMEOUT_S - 0.2 <= measured["cut_at_s"] <= ROUTE_TIMEOUT_S + 1.0, case
        assert re.search(r"cut at [23]\.\d s", case["detail"]), case
        assert "route timeout" in case["detail"], "names the likely setting"
    assert "FAILED: " in summary
    assert "1 failed" not in summary


def test_nginx_with_client_max_body_size_1m_reports_the_first_refused_size(
    backend: ServerProcess, tmp_path: Path
) -> None:
    directives = ("client_max_body_size 1m", "underscores_in_headers on")
    with broken_nginx(backend.port, tmp_path, *directives) as port:
        code, report, summary = check_through(port, tmp_path)
    assert code == 1, summary
    assert set(failed(report)) == {"request_size"}, failed(report)
    case = failed(report)["request_size"]
    assert case["measured"]["first_refused"] == 1024 * 1024, case
    assert case["measured"]["largest_passed"] == 512 * 1024, case
    assert case["measured"]["refused_by"] == "gateway", case
    assert "1 MiB refused" in case["detail"]
    assert "client_max_body_size" in case["detail"]


def test_nginx_dropping_underscored_headers_fails_metadata_underscore(
    backend: ServerProcess, tmp_path: Path
) -> None:
    with broken_nginx(
        backend.port, tmp_path, "client_max_body_size 0", "underscores_in_headers off"
    ) as port:
        code, report, summary = check_through(port, tmp_path)
    assert code == 1, summary
    assert set(failed(report)) == {"metadata_underscore"}, failed(report)
    assert "underscores_in_headers" in failed(report)["metadata_underscore"]["detail"]
