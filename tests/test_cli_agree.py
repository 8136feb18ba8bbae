"""``greeter call``, ``load``, ``health`` and ``check`` agree, as a new user meets them: the
same flags parsed the same way (durations with units, ``--method``/``--call``), the same
one-line answer for the same mistake (a misspelt flag, plaintext to a TLS port, a port where
nothing listens, for check also an unknown case), and the exit codes of the one table (health
keeps grpc-health-probe's). Every case runs the real command against real servers, all of
them side by side."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from conftest import free_port
from greeter.certs import make_leaf

# An answer must come at once: a command that waited out --connect-timeout 600s (instead of
# seeing the refusal or the TLS mismatch) is killed at this bound and fails the test. (The
# bound is generous: two dozen commands start side by side on a machine of two cores.)
PATIENCE_S = 180


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    code: int
    line: str  # the one line on stderr must contain this ("" for a success: stderr empty)


def cases(plain: str, tls: str, closed: str) -> list[Case]:
    load = ("-n", "3", "-c", "1", "--procs", "1", "-q")
    slow = ("--connect-timeout", "600s")
    tls_hint = f"cannot connect to {tls}: the server speaks TLS, not plaintext: add --tls"
    refused = f"cannot connect to {closed}: connection refused: nothing listens on port"
    return [
        # durations with units everywhere (and a bare number is seconds)
        Case(("call", plain, "-t", "2s"), 0, ""),
        Case(("health", plain, "-t", "2s", "--connect-timeout", "5"), 0, ""),
        Case(("load", plain, "-t", "2s", *load), 0, ""),
        Case(("check", plain, "--only", "health", "--max-wait", "2s"), 0, ""),
        Case(("call", plain, "-t", "2x"), 2, "greeter call: error: argument -t/--timeout: '2x'"),
        Case(("check", plain, "--max-wait", "2x"), 2, "greeter check: error: argument --max-wait"),
        Case(("health", plain, "-t", "2x"), 1, "greeter health: error: argument -t/--timeout"),
        # each command takes the other's name for the method
        Case(("call", plain, "--call", "SayHello"), 0, ""),
        Case(("load", plain, "--method", "SayHello", *load), 0, ""),
        Case(("call", plain, "--method", "Nope"), 2, "greeter call: error: argument --method"),
        # plaintext to a TLS port: the same hint, at once
        Case(("call", tls, *slow), 3, f"greeter call: {tls_hint}"),
        Case(("load", tls, *slow, *load), 3, f"greeter load: {tls_hint}"),
        Case(("load", tls, "--engine", "grpc", *slow, *load), 3, f"greeter load: {tls_hint}"),
        Case(("health", tls, *slow), 2, f"greeter health: {tls_hint}"),
        Case(("check", tls, *slow), 3, f"greeter check: {tls_hint}"),
        # nothing listens: the same hint, at once, with the command's prefix
        Case(("call", closed, *slow), 3, f"greeter call: {refused}"),
        Case(("load", closed, *slow, *load), 3, f"greeter load: {refused}"),
        Case(("health", closed, *slow), 2, f"greeter health: {refused}"),
        Case(("check", closed, *slow), 3, f"greeter check: {refused}"),
        # a misspelt flag: one line naming the flag meant, no usage
        Case(
            ("load", plain, "--concurency", "8"),
            2,
            "greeter load: no flag --concurency; did you mean --concurrency?",
        ),
        Case(
            ("call", plain, "--nmae", "Ada"),
            2,
            "greeter call: no flag --nmae; did you mean --name?",
        ),
        Case(("health", plain, "--servce", "x"), 1, "did you mean --service?"),
        Case(
            ("check", plain, "--max-wiat", "5s"),
            2,
            "greeter check: no flag --max-wiat; did you mean --max-wait?",
        ),
        Case(("check", plain, "--only", "nope"), 2, "greeter check: no such case: nope; the cases"),
        Case(
            ("load", plain, "--bogus-flag"),
            2,
            "greeter load: error: unrecognized arguments: "
            "--bogus-flag (greeter load --help lists the flags)",
        ),
        # bad values: the same words, each command's bad-arguments code
        Case(
            ("call", plain, "-m", "nocolon"), 2, "greeter call: metadata 'nocolon' must look like"
        ),
        Case(
            ("load", plain, "-m", "nocolon"), 2, "greeter load: metadata 'nocolon' must look like"
        ),
        Case(("health", plain, "-m", "nocolon"), 1, "greeter health: metadata 'nocolon' must"),
        Case(("call", plain, "-t", "0"), 2, "greeter call: --timeout must be positive"),
        Case(("check", plain, "--max-wait", "0"), 2, "greeter check: --max-wait must be positive"),
        Case(("call",), 2, "greeter call: error: the following arguments are required: address"),
    ]


def test_the_same_mistake_gets_the_same_one_line_answer(spawn_server, tmp_path) -> None:
    pair = make_leaf(tmp_path, "tls", ["grpc.example.com"])
    tls = spawn_server(env={"GREETER_TLS_CERT": str(pair.cert), "GREETER_TLS_KEY": str(pair.key)})
    plain = spawn_server()
    walk = cases(plain.address, tls.address, f"127.0.0.1:{free_port()}")
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "greeter", *case.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "100"},
        )
        for case in walk
    ]
    wrong = []
    for case, run in zip(walk, runs, strict=True):
        try:
            _, err = run.communicate(timeout=PATIENCE_S)
        except subprocess.TimeoutExpired:
            run.kill()
            run.communicate()
            wrong.append(f"{case.args}: no answer within {PATIENCE_S}s")
            continue
        lines = err.strip().splitlines()
        if run.returncode != case.code:
            wrong.append(f"{case.args}: exit {run.returncode}, not {case.code}: {err}")
        elif case.line and (len(lines) != 1 or case.line not in lines[0]):
            wrong.append(f"{case.args}: not one line with {case.line!r}: {err}")
        elif not case.line and lines:
            wrong.append(f"{case.args}: printed on stderr: {err}")
    assert not wrong, "\n".join(wrong)
