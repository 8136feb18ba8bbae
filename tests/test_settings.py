"""Settings: flags over GREETER_* env over defaults; every bad value names its setting."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import grpc
import pytest

from greeter import settings
from greeter.settings import Settings, SettingsError


def test_defaults_are_the_documented_names():
    s = settings.load({}, {})
    assert (s.port, s.metrics_port) == (50051, 9090)
    assert s.reflection is True
    assert s.auth_enabled is False
    assert s.fault_enabled is False
    assert s.pod_name  # the host name


def test_flags_win_over_env_and_env_over_defaults():
    env = {"GREETER_PORT": "6000", "GREETER_DRAIN_DELAY": "7.5", "GREETER_CLUSTER_NAME": "east"}
    s = settings.load({"port": "6001"}, env)
    assert s.port == 6001
    assert s.drain_delay == 7.5
    assert s.cluster_name == "east"


def test_list_bool_and_status_values_parse():
    env = {
        "GREETER_REFLECTION": "off",
        "GREETER_AUTH_EXEMPT": "health",
        "GREETER_FAULT_STATUS": "14",
    }
    s = settings.load({}, env)
    assert s.reflection is False
    assert s.auth_exempt == ("health",)
    assert s.fault_status is grpc.StatusCode.UNAVAILABLE


def test_identity_leaves_out_empty_values():
    s = settings.load({}, {"GREETER_CLUSTER_NAME": "c1", "GREETER_POD_NAME": "p1"})
    assert s.identity == {"x-greeter-cluster": "c1", "x-greeter-pod": "p1"}


def test_secrets_are_masked_in_public_view():
    s = settings.load({}, {"GREETER_AUTH_TOKENS": "s3cret-token"})
    assert "s3cret-token" not in repr(s.public())


BAD_VALUES = [
    ("port", "70000"),
    ("port", "http"),
    ("metrics_port", "-1"),
    ("drain_delay", "-1"),
    ("drain_delay", "soon"),
    ("grace_period", "nan"),
    ("keepalive_time", "0"),
    ("max_concurrent_streams", "0"),
    ("max_recv_message_size", "10"),
    ("stream_count", "100000000"),
    ("stream_max", "0"),
    ("fault_delay_percent", "101"),
    ("fault_status", "NOPE"),
    ("fault_status", "OK"),
    ("access_log_sample", "2"),
    ("log_level", "loud"),
    ("log_format", "xml"),
    ("reflection", "maybe"),
    ("server_timing", "sometimes"),
    ("auth_exempt", "everything"),
    ("tls_cert", "/does/not/exist.pem"),
    ("tls_client_ca", "/does/not/exist.pem"),
    ("auth_tokens_file", "/does/not/exist"),
    ("event_loop", "trio"),
    ("thread_policy", "realtime"),
    ("listeners", "0"),
    ("listeners", "65"),
    ("accept_depth", "0"),
    ("accept_depth", "257"),
    ("accept_depth", "many"),
    ("admission_control", "perhaps"),
    ("admission_queue_target", "-0.1"),
    ("admission_queue_target", "11"),
    ("admission_queue_target", "inf"),
    ("admission_limit", "-1"),
    ("admission_limit", "lots"),
    ("admission_core_wait", "0"),
    ("admission_core_wait", "0.5"),
    ("admission_core_wait", "3601"),
    ("workers", "999"),
    ("host", ""),
    ("interop", "maybe"),
    ("interop_max_message_size", "-1"),
    ("interop_max_interval", "-1"),
    ("interop_max_interval", "3000"),
    ("interop_max_duration", "10"),  # shorter than interop_max_interval (300)
    ("interop_max_messages", "0"),
    ("interop_max_messages", "lots"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_every_bad_value_is_rejected_naming_the_setting(name, value):
    env_name = settings.env_name(name)
    with pytest.raises(SettingsError) as flag_error:
        settings.load({name: value}, {})
    with pytest.raises(SettingsError) as env_error:
        settings.load({}, {env_name: value})
    for error in (flag_error, env_error):
        assert name in str(error.value)
        assert env_name in str(error.value)


def test_combinations_are_checked():
    with pytest.raises(SettingsError, match="auth_enabled"):
        settings.load({}, {"GREETER_AUTH_ENABLED": "true"})
    with pytest.raises(SettingsError, match="metrics_port"):
        settings.load({"port": "9000", "metrics_port": "9000"}, {})


def test_every_problem_is_reported_at_once():
    """One run names every bad setting, not only the first: unparsable values together, then
    each value's own check and the checks across settings together."""
    with pytest.raises(SettingsError) as unparsable:
        settings.load({"port": "http"}, {"GREETER_DRAIN_DELAY": "soon"})
    assert "port (--port / GREETER_PORT)" in str(unparsable.value)
    assert "drain_delay (--drain-delay / GREETER_DRAIN_DELAY)" in str(unparsable.value)
    with pytest.raises(SettingsError) as invalid:
        settings.load({"port": "70000", "log_level": "loud"}, {"GREETER_AUTH_ENABLED": "true"})
    lines = str(invalid.value).splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("port (--port / GREETER_PORT): 70000 is not a valid port")
    assert "log_level (--log-level / GREETER_LOG_LEVEL): 'loud' is not one of" in lines[1]
    assert lines[2].startswith("auth_enabled (")  # across settings: after each one's own


def test_enumerated_flags_offer_their_choices(capsys):
    """A setting with a fixed set of values (typed as a Literal) gives argparse its choices:
    a flag outside them exits 2 naming the flag and the choices."""
    assert serve_flags("--log-level", "debug").log_level == "debug"
    with pytest.raises(SystemExit) as exc:
        serve_flags("--event-loop", "trio")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--event-loop" in err, err
    assert "'uvloop'" in err, err


def test_settings_are_frozen():
    s = settings.load({}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


def test_every_setting_has_a_flag_and_help():
    names = {f.name for f in dataclasses.fields(Settings)}
    out = subprocess.run(
        [sys.executable, "-m", "greeter", "serve", "--help"], capture_output=True, text=True
    ).stdout
    for name in names:
        assert settings.flag_name(name) in out
        assert settings.env_name(name) in out


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--port", "abc"], {}, "GREETER_PORT"),
        ([], {"GREETER_DRAIN_DELAY": "-3"}, "drain_delay"),
        ([], {"GREETER_INTEROP": "1", "GREETER_INTEROP_MAX_MESSAGES": "0"}, "interop_max_messages"),
        ([], {"GREETER_TLS_CERT": "/nope.pem", "GREETER_TLS_KEY": "/nope.key"}, "tls_cert"),
    ],
)
def test_serve_fails_at_startup_naming_the_setting(args, env, needle, spawn_server):
    proc = spawn_server(*args, env=env, wait=False)
    rc, _, err = proc.wait(timeout=20)
    assert rc == 2
    assert needle in err
    assert "Traceback" not in err


def test_port_clash_fails_at_startup_instead_of_sharing(spawn_server):
    first = spawn_server()
    second = spawn_server(env={"GREETER_PORT": str(first.port)}, wait=False)
    rc, _, err = second.wait(timeout=20)
    assert rc == 3
    assert "cannot listen" in err


def serve_flags(*argv: str, env: dict[str, str] | None = None) -> Settings:
    """The real ``greeter serve`` parser, then settings.load (environment: ``env`` only).
    A token is always given, so turning auth on is valid on its own."""
    from greeter.cli import build_parser

    args = build_parser().parse_args(["serve", "--auth-tokens", "t0k3n", *argv])
    return settings.load({name: getattr(args, name) for name in vars(args)}, env or {})


BOOLEANS = sorted(f.name for f in dataclasses.fields(Settings) if isinstance(f.default, bool))


@pytest.mark.parametrize("name", BOOLEANS)
def test_every_boolean_setting_takes_a_bare_switch_a_no_form_and_a_value(name):
    flag = settings.flag_name(name)
    default = getattr(settings.load({}, {}), name)
    assert getattr(serve_flags(flag), name) is True
    assert getattr(serve_flags("--no-" + flag[2:]), name) is False
    assert getattr(serve_flags(flag, "false"), name) is False
    assert getattr(serve_flags(flag, "yes"), name) is True
    assert getattr(serve_flags(), name) is default
    # The env variable is unchanged, and a flag still wins over it.
    assert getattr(serve_flags(env={settings.env_name(name): "false"}), name) is False
    assert getattr(serve_flags(env={settings.env_name(name): "true"}), name) is True
    assert getattr(serve_flags(flag, env={settings.env_name(name): "false"}), name) is True


def test_a_bare_switch_before_another_flag_keeps_both():
    s = serve_flags("--auth-enabled", "--auth-tokens", "s3cret", "--access-log", "--port", "6001")
    assert (s.auth_enabled, s.auth_tokens, s.access_log, s.port) == (True, ("s3cret",), True, 6001)


def test_a_switch_and_its_no_form_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        serve_flags("--reflection", "--no-reflection")
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_bad_boolean_value_names_the_setting():
    named = r"auth_enabled \(--auth-enabled / GREETER_AUTH_ENABLED\)"
    with pytest.raises(SettingsError, match=named):
        serve_flags("--auth-enabled", "maybe")


def test_the_default_install_carries_uvloop_and_serves_on_it(spawn_server):
    # uvloop is a regular dependency (not only an extra), so `pip install .` and the image
    # run the loop docs/performance.md measured; the serving line says which loop runs.
    from importlib.metadata import requires

    from conftest import serving_line

    plain = [r for r in requires("greeter") or [] if "extra ==" not in r]
    assert any(r.startswith("uvloop") for r in plain), plain
    server = spawn_server()
    code, _, err = server.stop()
    assert code == 0
    assert serving_line(err)["event_loop"] == "uvloop"


def test_event_loop_asyncio_is_honoured_and_logged(spawn_server):
    from conftest import serving_line

    server = spawn_server(env={"GREETER_EVENT_LOOP": "asyncio"})
    code, _, err = server.stop()
    assert code == 0
    assert serving_line(err)["event_loop"] == "asyncio"


def test_interop_raises_the_message_limits_to_fit_its_payloads():
    plain = settings.load({}, {})
    assert plain.send_message_limit == plain.max_send_message_size == 4 * 1024 * 1024
    on = settings.load({}, {"GREETER_INTEROP": "true"})
    for limit in (on.send_message_limit, on.recv_message_limit):
        assert limit == on.interop_max_message_size + settings.INTEROP_FRAMING
    bigger = settings.load({"interop": "1", "max_send_message_size": str(64 << 20)}, {})
    assert bigger.send_message_limit == 64 << 20
