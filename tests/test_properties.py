"""Property-based tests (hypothesis) on everything that parses outside input:
settings from flags and ``GREETER_*`` variables, fault-injection metadata,
stream-shape metadata (through a real server) and ``greeter load``'s flags."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import ServerProcess, free_port, outside_env
from greeter import settings as greeter_settings
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.client import TargetError
from greeter.interceptors.faults import MAX_DELAY_MS, parse_delay_ms, parse_status
from greeter.load.cli import add_arguments, config_from_args
from greeter.load.config import (
    ConfigError,
    LoadConfig,
    parse_duration,
    parse_split,
    parse_threshold,
)
from greeter.settings import Settings, SettingsError, describe, env_name

FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
PATH_FIELDS = ("tls_cert", "tls_key", "tls_client_ca", "auth_tokens_file")
STREAM_MAX = 50

# Text a user might type for a setting: numbers of every shape, words, junk.
numbers = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "1", "-1", "65536", "1e400", "nan", "-inf", " 7 ", "0x10", "1_000"]),
)
words = st.sampled_from(
    [
        "true",
        "false",
        "yes",
        "OFF",
        "auto",
        "debug",
        "json",
        "text",
        "uvloop",
        "UNAVAILABLE",
        "ok",
        "14",
        "99",
        "health,reflection",
        "health,bogus",
        "",
        " ",
        "/nonexistent/file",
    ]
)
raw_values = st.one_of(numbers, words, st.text(max_size=40))
# Paths stay short here: see test_settings_long_path_is_a_settings_error for long ones.
path_values = st.one_of(words, st.text(max_size=100))


@st.composite
def setting_sources(draw: st.DrawFn) -> tuple[dict[str, str | None], dict[str, str]]:
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=6, unique=True))
    flags: dict[str, str | None] = {}
    env: dict[str, str] = {}
    for name in names:
        value = draw(path_values if name in PATH_FIELDS else raw_values)
        if draw(st.booleans()):
            flags[name] = value
        else:
            env[env_name(name)] = value.replace("\x00", "")  # an environment has no NULs
    return flags, env


def _named_setting(message: str) -> str:
    name = message.split(" ", 1)[0]
    assert name in FIELDS, message
    assert message.startswith(describe(name)), message
    return name


@settings(max_examples=400, deadline=None)
@given(setting_sources())
@example(({"port": "99999"}, {}))
@example(({}, {"GREETER_WORKERS": "0"}))
@example(({"max_recv_message_size": "1e3"}, {}))
@example(({"fault_status": "0"}, {}))
def test_settings_load_gives_settings_or_names_the_setting(
    sources: tuple[dict[str, str | None], dict[str, str]],
) -> None:
    flags, env = sources
    try:
        loaded = greeter_settings.load(flags, env)
    except SettingsError as exc:
        name = _named_setting(str(exc))
        assert (
            name in flags
            or env_name(name) in env
            or name
            in {
                # cross-field checks can blame a setting that was left at its default
                "metrics_port",
                "stream_count",
                "auth_enabled",
                "tls_cert",
                "tls_key",
            }
        )
        return
    assert isinstance(loaded, Settings)
    for name, raw in flags.items():  # a flag wins over the environment and is parsed as given
        if raw is not None:
            assert getattr(loaded, name) == FIELDS[name].metadata["parse"](raw)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(FIELDS)), raw_values, raw_values)
def test_flag_wins_over_environment(name: str, flag: str, env: str) -> None:
    try:
        from_flag = FIELDS[name].metadata["parse"](flag)
    except ValueError:
        with pytest.raises(SettingsError) as info:
            greeter_settings.load({name: flag}, {env_name(name): env.replace("\x00", "")})
        assert _named_setting(str(info.value)) == name
        return
    try:
        loaded = greeter_settings.load({name: flag}, {env_name(name): env.replace("\x00", "")})
    except SettingsError as exc:
        _named_setting(str(exc))  # the value parsed but is out of range
        return
    assert getattr(loaded, name) == from_flag


@pytest.mark.parametrize("name", PATH_FIELDS)
def test_settings_long_path_is_a_settings_error(name: str) -> None:
    env = {"GREETER_TLS_CERT": "x", "GREETER_TLS_KEY": "y", env_name(name): "a" * 5000}
    with pytest.raises(SettingsError):
        greeter_settings.load({}, env)


# -- fault-injection metadata ------------------------------------------------------------


@settings(max_examples=500)
@given(st.one_of(numbers, st.text(max_size=30)))
@example("1" * 5000)
@example("300000.0000001")
def test_parse_delay_ms_is_seconds_in_range_or_value_error(text: str) -> None:
    try:
        seconds = parse_delay_ms(text)
    except ValueError:
        return
    assert math.isfinite(seconds)
    assert 0 <= seconds <= MAX_DELAY_MS / 1000


@settings(max_examples=500)
@given(st.one_of(numbers, st.sampled_from([c.name for c in grpc.StatusCode]), st.text(max_size=20)))
@example("0" * 5000)
@example("²")
@example("ß")
def test_parse_status_is_a_status_or_value_error(text: str) -> None:
    try:
        code = parse_status(text)
    except ValueError:
        return
    assert isinstance(code, grpc.StatusCode)
    raw = text.strip()
    assert code.name == raw.upper() or str(code.value[0]) == raw.lstrip("0") or raw.strip("0") == ""


# -- stream shape and fault metadata through a real server -------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helloworld_pb2_grpc.GreeterStub]:
    env = outside_env()
    port = free_port()
    env.update(
        {
            "GREETER_HOST": "127.0.0.1",
            "GREETER_PORT": str(port),
            "GREETER_METRICS_PORT": "0",
            "GREETER_DRAIN_DELAY": "0",
            "GREETER_ACCESS_LOG": "false",
            "GREETER_STREAM_MAX": str(STREAM_MAX),
            "GREETER_FAULT_ENABLED": "true",
        }
    )
    server = ServerProcess([], env, port, 0, tmp_path_factory.mktemp("servers"))
    server.wait_ready()
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield helloworld_pb2_grpc.GreeterStub(channel)
    finally:
        rc, _, err = server.stop()
        assert rc == 0, err


# gRPC metadata values are printable ASCII; leading/trailing blanks are not kept.
metadata_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(st.integers(-5, STREAM_MAX + 5).map(str), metadata_text))
@example("0" * 5000)
@example("007")
@example("1e1")
def test_stream_count_metadata(live: helloworld_pb2_grpc.GreeterStub, value: str) -> None:
    call = live.SayHelloStreamReply(
        helloworld_pb2.HelloRequest(name="p"),
        metadata=(("x-greeter-stream-count", value),),
        timeout=10,
    )
    # Past 4,300 digits int() refuses the text, so the server refuses it too.
    wanted = int(value) if value.isdigit() and len(value) <= 4300 else None
    if wanted is not None and wanted <= STREAM_MAX:
        assert len(list(call)) == wanted
        assert call.code() == grpc.StatusCode.OK
    else:
        with pytest.raises(grpc.RpcError):
            list(call)
        assert call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "x-greeter-stream-count" in call.details()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(st.floats(-100, 70_000).map(repr), st.integers(-5, 70_000).map(str), metadata_text)
)
@example("nan")
@example("inf")
@example("60000.0001")
def test_stream_interval_metadata(live: helloworld_pb2_grpc.GreeterStub, value: str) -> None:
    """One reply, so no pause is ever taken: only the parsing is under test."""
    try:
        valid = 0 <= float(value) / 1000 <= 60
    except ValueError:
        valid = False
    call = live.SayHelloStreamReply(
        helloworld_pb2.HelloRequest(name="i"),
        metadata=(("x-greeter-stream-count", "1"), ("x-greeter-stream-interval-ms", value)),
        timeout=10,
    )
    if valid:
        assert len(list(call)) == 1
    else:
        with pytest.raises(grpc.RpcError):
            list(call)
        assert call.code() == grpc.StatusCode.INVALID_ARGUMENT


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.sampled_from([c.name for c in grpc.StatusCode]),
        st.integers(-2, 20).map(str),
        metadata_text,
    )
)
def test_fault_status_metadata(live: helloworld_pb2_grpc.GreeterStub, value: str) -> None:
    try:
        expected = parse_status(value)
    except ValueError:
        expected = grpc.StatusCode.INVALID_ARGUMENT
    try:
        live.SayHello(
            helloworld_pb2.HelloRequest(name="f"),
            metadata=(("x-greeter-fault-status", value),),
            timeout=10,
        )
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    assert code == expected


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(st.integers(-5, 30).map(str), st.floats(-1, 30).map(repr), metadata_text))
def test_fault_delay_metadata(live: helloworld_pb2_grpc.GreeterStub, value: str) -> None:
    try:
        parse_delay_ms(value)
        expected = grpc.StatusCode.OK
    except ValueError:
        expected = grpc.StatusCode.INVALID_ARGUMENT
    try:
        live.SayHello(
            helloworld_pb2.HelloRequest(name="f"),
            metadata=(("x-greeter-fault-delay-ms", value),),
            timeout=10,
        )
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    assert code == expected


# -- greeter load's flags ------------------------------------------------------------------


class _Refused(Exception):
    """argparse refused the command line (it would have exited with 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Refused(message)


def _load_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="greeter load")
    add_arguments(parser)
    return parser


LOAD_FLAGS = {
    "-c": numbers,
    "-n": numbers,
    "-z": st.one_of(numbers, st.sampled_from(["10s", "500ms", "1m30s", "2h", "1us", "s", "0s"])),
    "--rps": numbers,
    "--connections": numbers,
    "--procs": numbers,
    "--warmup": st.sampled_from(["0", "1s", "-1", "x"]),
    "-t": st.sampled_from(["0", "1s", "20", "-2s", "nan"]),
    "--call": st.sampled_from(
        ["SayHello", "SayHelloStreamReply", "helloworld.Greeter.SayHello", "Nope", ""]
    ),
    "--stream-count": numbers,
    "--load-schedule": st.sampled_from(["const", "step", "line", "bogus"]),
    "--load-start": numbers,
    "--load-end": numbers,
    "--load-step": numbers,
    "--load-step-duration": st.sampled_from(["1s", "0", "-1s"]),
    "--percentiles": st.sampled_from(["50,90,99", "p99.9", "0", "101", "nan", "x", ""]),
    "--max-error-rate": st.sampled_from(["0.01", "1%", "150%", "-1", "%", "nan"]),
    "--max-latency": st.sampled_from(["p99=250ms", "mean=20", "p0=1", "p99=-1", "x", "p99="]),
    "-d": st.sampled_from(['{"name":"x"}', "[]", "{", "null"]),
    "-m": st.sampled_from(["k:v", "authorization:Bearer t", "novalue", '{"a":"b"}', "{"]),
    "--authority": st.sampled_from(["", "grpc.example.com"]),
    "--expect-split": st.sampled_from(
        ["a=80,b=20", "a=100", "a=50,a=50", "a=80,b=30", "a=nan,b=100", "a", "", "a=-5,b=105"]
    ),
    "--expect-cluster": st.sampled_from(["cluster-a", "", "a b", "a=1"]),
    "--split-confidence": st.sampled_from(["0.99", "99%", "1", "0", "nan", "x", "-0.5"]),
}


@st.composite
def load_argvs(draw: st.DrawFn) -> list[str]:
    argv = [draw(st.sampled_from(["127.0.0.1:50051", "[::1]:1", "dns:///x:1", "", "a:b:c"]))]
    for flag in draw(st.lists(st.sampled_from(sorted(LOAD_FLAGS)), max_size=6, unique=True)):
        argv += [flag, draw(LOAD_FLAGS[flag])]
    return argv


@settings(max_examples=400, deadline=None)
@given(load_argvs())
@example(["127.0.0.1:1", "-c", "1", "--connections", "2"])
@example(["127.0.0.1:1", "--load-schedule", "step", "--load-start", "5"])
def test_load_flags_give_a_config_or_a_usage_error(argv: list[str]) -> None:
    """Any command line either parses to a valid LoadConfig or is refused with a
    usage error (argparse, ConfigError, TargetError): never another exception."""
    try:
        args = _load_parser().parse_args(argv)
        config = config_from_args(args)
    except (_Refused, ConfigError, TargetError):
        return
    assert isinstance(config, LoadConfig)
    assert config.concurrency >= 1
    assert config.connections <= config.concurrency
    assert config.timeout > 0
    assert config.total is None or config.total >= 1
    assert 0 < config.split_confidence < 1
    if config.expect_split is not None:
        assert abs(sum(share for _, share in config.expect_split) - 100) <= 1e-6
        assert config.expect_cluster is None


@settings(max_examples=500)
@given(
    st.one_of(
        st.text(),
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c", "cluster-a", "", " x "]),
                st.one_of(numbers, st.sampled_from(["25", "50", "100", "50%", "nan", "inf"])),
            ),
            max_size=4,
        ).map(lambda pairs: ",".join(f"{name}={value}" for name, value in pairs)),
    )
)
def test_parse_split_adds_up_to_100_or_value_error(text: str) -> None:
    try:
        split = parse_split(text)
    except ValueError:
        return
    assert split
    assert abs(sum(share for _, share in split) - 100) <= 1e-6
    assert len({name for name, _ in split}) == len(split)
    assert all(0 <= share <= 100 and name.strip() == name for name, share in split)


@settings(max_examples=500)
@given(st.one_of(numbers, st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,3})?(ms|us|s|m|h){1,2}"), st.text()))
@example("1m30s")
def test_parse_duration_is_finite_or_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert math.isfinite(seconds)


def test_parse_duration_refuses_overflowing_units() -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration("1" * 400 + "s")


@settings(max_examples=500)
@given(
    st.one_of(
        st.text(max_size=20),
        st.tuples(
            st.sampled_from(["p50", "p99.9", "P99", "mean", "max", "min", "p0", "p101", "x"]),
            st.sampled_from(["=", "<=", ":"]),
            st.one_of(numbers, st.sampled_from(["250ms", "1s", "", "ms", "-1ms"])),
        ).map("".join),
    )
)
def test_parse_threshold_is_positive_or_value_error(text: str) -> None:
    try:
        threshold = parse_threshold(text)
    except ValueError:
        return
    assert threshold.limit_ms > 0
    assert threshold.stat in {"min", "mean", "max"} or threshold.stat.startswith("p")
