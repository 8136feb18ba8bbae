"""The split gate (``--expect-split``, ``--expect-cluster``): the statistics against
known values, and the gate against real servers on 127.0.0.1 standing in for clusters,
spread by the client's own round_robin over their addresses.

Why the real-server verdicts are not luck. Round robin hands calls out in turn, so the
observed spread is the configured one up to the few calls made before every subchannel
is READY (far below binomial noise). With N = 400 successful calls:

- a true 50/50 passing an 80/20 gate would need cluster-a's count inside the 80/20
  acceptance region (299-340 of 400); under Binomial(400, 0.5) that has probability
  3.9e-24 (computed exactly in test_power_of_the_real_server_runs), far below 1e-9;
- a true 80/20 passing a 50/50 gate (acceptance region 174-226) has probability
  1.5e-26 under Binomial(400, 0.8);
- a right split is called off with probability at most 1 - confidence = 1% even if
  calls were independent random draws; round robin's spread is tighter than that.
- 400 is above the calls either gate needs (368 for 50/50, 262 for 80/20), so neither
  right split comes out "undecided".
"""

from __future__ import annotations

import csv
import io
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from load_support import load_cli

from greeter.load import schema, stats
from greeter.load import split as gate
from greeter.load.config import LoadConfig, parse_split
from greeter.load.report import EXIT_BAD_ARGS, EXIT_FAILED

Spawn = Any
N = 400


# --- the statistics ---------------------------------------------------------------


def exact_sf(k: int, n: int, p: Fraction) -> Fraction:
    """P(X >= k), X ~ Binomial(n, p), as an exact fraction."""
    return sum(
        (Fraction(math.comb(n, i)) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)),
        Fraction(0),
    )


@pytest.mark.parametrize(
    ("p", "z"),
    [(0.975, 1.959964), (0.995, 2.575829), (0.9995, 3.290527), (0.9, 1.281552), (0.5, 0.0)],
)
def test_normal_quantile_matches_the_table(p: float, z: float) -> None:
    assert stats.normal_quantile(p) == pytest.approx(z, abs=1e-6)
    assert stats.normal_quantile(1 - p) == pytest.approx(-z, abs=1e-6)


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(1, 1, "3/10"), (3, 10, "1/5"), (50, 100, "1/2"), (7, 20, "9/10"), (400, 1000, "41/100")],
)
def test_binomial_tails_equal_exact_sums(k: int, n: int, p: str) -> None:
    exact = float(exact_sf(k, n, Fraction(p)))
    assert stats.binom_sf(k, n, float(Fraction(p))) == pytest.approx(exact, rel=1e-9)
    assert stats.binom_cdf(k - 1, n, float(Fraction(p))) == pytest.approx(1 - exact, abs=1e-12)
    # I_x(a, b) for integer a, b is that same binomial tail
    assert stats.betainc(k, n - k + 1, float(Fraction(p))) == pytest.approx(exact, rel=1e-9)


def test_betainc_known_values_and_symmetry() -> None:
    assert stats.betainc(0.5, 0.5, 0.5) == pytest.approx(0.5, abs=1e-12)
    # I_x(1, b) = 1 - (1 - x)^b ; I_x(a, 1) = x^a
    assert stats.betainc(1, 7, 0.2) == pytest.approx(1 - 0.8**7, rel=1e-12)
    assert stats.betainc(3.5, 1, 0.6) == pytest.approx(0.6**3.5, rel=1e-12)
    assert stats.betainc(2.5, 4, 0.3) == pytest.approx(1 - stats.betainc(4, 2.5, 0.7), abs=1e-12)
    with pytest.raises(ValueError, match="a > 0"):
        stats.betainc(0, 1, 0.5)


def test_clopper_pearson_known_intervals() -> None:
    # Published values: 0 of 10 at 95% -> [0, 0.3085]; 5 of 10 -> [0.1871, 0.8129].
    low, high = stats.clopper_pearson(0, 10, 0.95)
    assert low == 0.0
    assert high == pytest.approx(0.30850, abs=1e-5)
    low, high = stats.clopper_pearson(5, 10, 0.95)
    assert (low, high) == (pytest.approx(0.18709, abs=1e-5), pytest.approx(0.81291, abs=1e-5))
    # Each bound leaves (1 - confidence) / 2 in its tail, exactly.
    low, high = stats.clopper_pearson(37, 200, 0.99)
    assert stats.binom_sf(37, 200, low) == pytest.approx(0.005, rel=1e-6)
    assert stats.binom_cdf(37, 200, high) == pytest.approx(0.005, rel=1e-6)
    assert stats.clopper_pearson(0, 0, 0.99) == (0.0, 1.0)


def test_the_test_and_the_interval_agree() -> None:
    for x in range(0, 61, 3):
        low, high = stats.clopper_pearson(x, 60, 0.95)
        for p in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
            inside = low < p < high
            assert inside == (stats.binom_test(x, 60, p) > 0.05), (x, p)


def test_calls_to_detect_by_hand() -> None:
    # 80/20 at a = 0.01, power 0.9, a 10-point deviation (q = 0.3 is the harder side):
    # ((2.5758 * sqrt(.16) + 1.2816 * sqrt(.21)) / 0.1)^2 = (1.0303 + 0.5873)^2 * 100 = 261.7
    assert stats.calls_to_detect(0.2, 0.1, 0.01, 0.9) == 262
    assert stats.calls_to_detect(0.8, 0.1, 0.01, 0.9) == 262
    # 50/50: ((2.5758 * 0.5 + 1.2816 * sqrt(.24)) / 0.1)^2 = (1.2879 + 0.6278)^2 * 100 = 367.0
    assert stats.calls_to_detect(0.5, 0.1, 0.01, 0.9) == 368
    # one cluster for everything: 1 - 0.9^n >= 0.9 from n = 22
    assert stats.calls_to_detect(1.0, 0.1, 0.01, 0.9) == 22
    assert 0.9**22 <= 0.1 < 0.9**21


def test_evaluate_decisions() -> None:
    expect = (("a", 0.8), ("b", 0.2))
    assert gate.evaluate("split", expect, {"a": 320, "b": 80}, 0.99)["decision"] == "pass"
    off = gate.evaluate("split", expect, {"a": 200, "b": 200}, 0.99)
    assert off["decision"] == "off"
    assert [row["within"] for row in off["clusters"]] == [False, False]
    assert gate.failure(off) is not None
    few = gate.evaluate("split", expect, {"a": 80, "b": 20}, 0.99)
    assert (few["decision"], few["calls_needed"]) == ("undecided", 262)
    assert "run at least 262 calls" in str(gate.failure(few))
    assert gate.evaluate("split", expect, {}, 0.99)["decision"] == "undecided"
    # One call from a cluster nobody named fails the split.
    stray = gate.evaluate("split", expect, {"a": 320, "b": 79, "c": 1}, 0.99)
    assert stray["decision"] == "off"
    assert stray["comparisons"] == 3
    assert stray["clusters"][2] == {**stray["clusters"][2], "name": "c", "within": False}
    three = (("a", 0.5), ("b", 0.3), ("c", 0.2))
    ok3 = gate.evaluate("split", three, {"a": 500, "b": 300, "c": 200}, 0.99)
    assert (ok3["decision"], ok3["comparisons"], ok3["interval_confidence"]) == (
        "pass",
        3,
        pytest.approx(1 - 0.01 / 3),
    )


def test_power_of_the_real_server_runs() -> None:
    """The claims in this module's docstring, computed exactly."""

    def accepted(expect: tuple[tuple[str, float], ...]) -> list[int]:
        return [
            x
            for x in range(N + 1)
            if gate.evaluate("split", expect, {"a": x, "b": N - x}, 0.99)["decision"] == "pass"
        ]

    def chance(region: list[int], p: Fraction) -> Fraction:
        terms = (Fraction(math.comb(N, x)) * p**x * (1 - p) ** (N - x) for x in region)
        return sum(terms, Fraction(0))

    accept_80 = accepted((("a", 0.8), ("b", 0.2)))
    assert (min(accept_80), max(accept_80)) == (299, 340)
    assert chance(accept_80, Fraction(1, 2)) < Fraction(1, 10**23)
    accept_50 = accepted((("a", 0.5), ("b", 0.5)))
    assert (min(accept_50), max(accept_50)) == (174, 226)
    assert chance(accept_50, Fraction(4, 5)) < Fraction(1, 10**25)
    # and a right split passes its own gate with probability at least the confidence
    assert chance(accept_50, Fraction(1, 2)) > Fraction(99, 100)


def test_split_specs_parse() -> None:
    assert parse_split("cluster-a=80,cluster-b=20") == (("cluster-a", 80.0), ("cluster-b", 20.0))
    assert parse_split(" a = 33.3, b=33.3,c=33.4% ") == (("a", 33.3), ("b", 33.3), ("c", 33.4))


# --- against real servers ---------------------------------------------------------


@pytest.fixture
def spawn_server(spawn_server: Spawn) -> Spawn:
    """Access log off: nobody reads the server's stderr pipe."""

    def spawn(*args: str, env: dict[str, str] | None = None) -> Any:
        return spawn_server(*args, env={"GREETER_ACCESS_LOG": "false", **(env or {})})

    return spawn


def clusters(spawn_server: Spawn, *names: str) -> str:
    """One server per name (its GREETER_CLUSTER_NAME), as one round_robin target."""
    servers = [
        spawn_server(env={"GREETER_CLUSTER_NAME": name, "GREETER_POD_NAME": f"{name}-{i}"})
        for i, name in enumerate(names)
    ]
    return "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)


def run(target: str, *args: str) -> Any:
    return load_cli(
        target, "--lb-policy", "round_robin", "-n", str(N), "-c", "4", "--procs", "1", *args
    )


def test_an_even_split_passes_50_50_and_fails_80_20(spawn_server: Spawn, tmp_path: Path) -> None:
    target = clusters(spawn_server, "cluster-a", "cluster-b")
    good = run(target, "--expect-split", "cluster-a=50,cluster-b=50", "-O", "json")
    assert good.returncode == 0, good.stderr
    report = json.loads(good.stdout)
    jsonschema.validate(report, schema())
    assert report["split"]["decision"] == "pass"
    assert report["split"]["calls"] == N
    assert [r["name"] for r in report["split"]["clusters"]] == ["cluster-a", "cluster-b"]
    [entry] = report["thresholds"]
    assert entry == {**entry, "name": "split", "op": ">=", "passed": True}

    page = tmp_path / "split.html"
    bad = run(target, "--expect-split", "cluster-a=80,cluster-b=20", "--html", str(page))
    assert bad.returncode == EXIT_FAILED, bad.stderr
    assert "--expect-split: the split is off at confidence 0.99: cluster-a served" in bad.stderr
    assert "expected 80.0%" in bad.stderr
    assert "Split (off;" in bad.stdout
    assert "OFF" in bad.stdout
    assert "<h2>Split: off</h2>" in page.read_text()
    as_json = json.loads(
        run(target, "--expect-split", "cluster-a=80,cluster-b=20", "-O", "json").stdout
    )
    jsonschema.validate(as_json, schema())
    assert as_json["passed"] is False
    assert as_json["split"]["decision"] == "off"
    assert as_json["thresholds"][0]["passed"] is False
    rows = list(
        csv.DictReader(
            io.StringIO(
                run(target, "--expect-split", "cluster-a=80,cluster-b=20", "-O", "csv").stdout
            )
        )
    )
    split_rows = {r["name"]: r for r in rows if r["kind"] == "split"}
    assert float(split_rows["cluster-a"]["expected_share"]) == 0.8
    assert (
        float(split_rows["cluster-a"]["share_low"])
        < 0.5
        < float(split_rows["cluster-a"]["share_high"])
    )


def test_an_80_20_split_passes_80_20_and_fails_50_50(spawn_server: Spawn) -> None:
    target = clusters(spawn_server, *["cluster-a"] * 4, "cluster-b")
    good = run(target, "--expect-split", "cluster-a=80,cluster-b=20", "--split-confidence", "99%")
    assert good.returncode == 0, good.stderr
    assert "Split (pass;" in good.stdout
    bad = run(target, "--expect-split", "cluster-a=50,cluster-b=50")
    assert bad.returncode == EXIT_FAILED
    assert "the split is off" in bad.stderr


def test_a_cluster_nobody_named_fails_the_split(spawn_server: Spawn) -> None:
    target = clusters(spawn_server, "cluster-a", "cluster-b")
    result = run(target, "--expect-split", "cluster-a=100")
    assert result.returncode == EXIT_FAILED
    assert "cluster-b served" in result.stderr
    assert "which the expectation does not name" in result.stderr


def test_expect_cluster(spawn_server: Spawn) -> None:
    one = clusters(spawn_server, "cluster-a")
    good = run(one, "--expect-cluster", "cluster-a", "-O", "json")
    assert good.returncode == 0, good.stderr
    report = json.loads(good.stdout)
    jsonschema.validate(report, schema())
    assert report["thresholds"] == [
        {"name": "cluster", "limit": 1.0, "value": 1.0, "passed": True, "op": ">="}
    ]
    assert report["split"]["kind"] == "cluster"
    both = clusters(spawn_server, "cluster-a", "cluster-b")
    bad = run(both, "--expect-cluster", "cluster-a")
    assert bad.returncode == EXIT_FAILED
    assert "successful calls were served by other clusters than cluster-a (cluster-b:" in bad.stderr


def test_too_few_calls_is_undecided(spawn_server: Spawn) -> None:
    target = clusters(spawn_server, "cluster-a", "cluster-b")
    result = load_cli(
        target,
        "--lb-policy",
        "round_robin",
        "-n",
        "60",
        "-c",
        "2",
        "--procs",
        "1",
        "--expect-split",
        "cluster-a=50,cluster-b=50",
    )
    assert result.returncode == EXIT_FAILED
    assert "undecided: 60 successful calls cannot tell a 10-point deviation" in result.stderr
    assert "run at least 368 calls (e.g. -n 368)" in result.stderr
    assert "Split (undecided;" in result.stdout


@pytest.mark.parametrize(
    ("args", "flag", "why"),
    [
        (["--expect-split", "cluster-a=80,cluster-b=30"], "--expect-split", "add up to 110"),
        (["--expect-split", "cluster-a=80;cluster-b=20"], "--expect-split", "not a percentage"),
        (["--expect-split", "cluster-a"], "--expect-split", "NAME=PERCENT"),
        (["--expect-split", "a=50,,b=50"], "--expect-split", "must look like"),
        (["--expect-split", "a=fifty,b=50"], "--expect-split", "not a percentage"),
        (["--expect-split", "a=50,a=50"], "--expect-split", "twice"),
        (["--expect-split", "a=150,b=-50"], "--expect-split", "between 0 and 100"),
        (["--expect-split", "a=100", "--split-confidence", "1"], "--split-confidence", "between"),
        (["--expect-split", "a=100", "--split-confidence", "0"], "--split-confidence", "between"),
        (["--expect-cluster", "a", "--split-confidence", "x"], "--split-confidence", "not a"),
        (["--split-confidence", "0.9"], "--split-confidence", "needs --expect-split"),
        (["--expect-cluster", "a", "--expect-split", "a=100"], "--expect-cluster", "combined"),
    ],
)
def test_bad_split_specs_exit_2_naming_the_flag(args: list[str], flag: str, why: str) -> None:
    # Bad arguments stop before any connection: no server needed.
    result = load_cli("127.0.0.1:1", "-n", "1", *args)
    assert result.returncode == EXIT_BAD_ARGS, result.stderr
    assert f"greeter load: {flag}:" in result.stderr
    assert why in result.stderr
    assert "Traceback" not in result.stderr


def test_the_api_rejects_a_bad_split_too() -> None:
    from greeter.client import Target
    from greeter.load.config import ConfigError

    with pytest.raises(ConfigError, match="--expect-split: shares add up to 90"):
        LoadConfig(target=Target("127.0.0.1:1"), expect_split=(("a", 50.0), ("b", 40.0)))
    with pytest.raises(ConfigError, match="--split-confidence"):
        LoadConfig(target=Target("127.0.0.1:1"), expect_cluster="a", split_confidence=1.5)
