"""LoadConfig: validation names the flag, shares add up, schedules and parsers."""

from __future__ import annotations

import pytest

from greeter.client import Target
from greeter.load.config import (
    ConfigError,
    LoadConfig,
    call_name,
    parse_duration,
    parse_threshold,
)

T = Target("127.0.0.1:1")


@pytest.mark.parametrize("procs", [2, 3, 7])
def test_shares_add_up_exactly(procs: int) -> None:
    whole = LoadConfig(target=T, concurrency=50, total=1001, rps=333.0, connections=10)
    parts = [whole.share(i, procs) for i in range(procs)]
    assert sum(p.concurrency for p in parts) == 50
    assert sum(p.total or 0 for p in parts) == 1001
    assert sum(p.connections for p in parts) == 10
    assert sum(p.rps or 0 for p in parts) == pytest.approx(333.0)


def test_schedules() -> None:
    step = LoadConfig(
        target=T, schedule="step", load_start=10, load_step=5, load_step_duration=2, load_end=20
    )
    assert [step.rate_at(t) for t in (0, 1.9, 2, 4, 60)] == [10, 10, 15, 20, 20]
    assert step.schedule_end() == 6
    line = LoadConfig(target=T, schedule="line", load_start=10, load_step=2, load_end=20)
    assert line.rate_at(2.5) == 15
    assert line.schedule_end() == 5


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"concurrency": 0}, "-c/--concurrency"),
        ({"rps": 0}, "--rps"),
        ({"connections": 3, "concurrency": 2}, "--connections"),
        ({"schedule": "step", "load_start": 5}, "--load-step"),
        ({"max_error_rate": 2}, "--max-error-rate"),
        ({"percentiles": (0.0,)}, "--percentiles"),
    ],
)
def test_errors_name_the_flag(overrides: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        LoadConfig(target=T, **overrides)  # type: ignore[arg-type]


def test_parsers() -> None:
    assert parse_duration("1m30s") == 90
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2") == 2
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")
    assert parse_threshold("p99=250ms").limit_ms == 250
    assert parse_threshold("p99.9<=1s") == parse_threshold("p99.9=1000")
    assert parse_threshold("mean=20").stat == "mean"
    with pytest.raises(ValueError, match="p<percent>"):
        parse_threshold("p200=1")
    # The latency split: server.STAT and outside.STAT; total. is the plain form.
    outside = parse_threshold("outside.p99=20ms")
    assert (outside.scope, outside.stat, outside.limit_ms, outside.name) == (
        "outside",
        "p99",
        20,
        "outside.p99",
    )
    assert parse_threshold("server.mean<=2").scope == "server"
    assert parse_threshold("total.p99.9=1s") == parse_threshold("p99.9=1s")
    for bad in ("inside.p99=1ms", "outside.=1ms", "outside.p99", "server.p0=1ms"):
        with pytest.raises(ValueError, match=r"p99=250ms|p<percent>|positive"):
            parse_threshold(bad)
    assert call_name("helloworld.Greeter.SayHello") == "SayHello"
    assert call_name("/grpc.health.v1.Health/Check") == "Check"
