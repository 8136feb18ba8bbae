"""The split gate: does the spread of successful calls over clusters (``by_cluster``)
follow the expected one (``--expect-split cluster-a=80,cluster-b=20``), or did every
call reach one cluster (``--expect-cluster NAME``)?

The test, per cluster: an exact two-sided binomial test of its observed count of
successful calls against its expected share, with the Clopper-Pearson interval as the
report's "where the true share lies", Bonferroni-corrected over the clusters compared
(one comparison when there are two: their counts are complements). A cluster the
expectation does not name has an expected share of 0, so a single call it served
fails the split. The verdict is one of:

- ``pass``: every expected share lies within its interval, and the run had enough
  calls to have caught a deviation of ``DETECT`` (10 points) with probability
  ``POWER`` (0.9);
- ``off``: some expected share lies outside its interval (exit 1);
- ``undecided``: nothing is off, but too few calls to tell (exit 1 too: a gate that
  passes on a sample that could not have failed proves nothing). The message says
  how many calls would do.

docs/load.md ("The split gate") has the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from greeter.load import stats
from greeter.load.config import LoadConfig

DETECT = 0.10  # the deviation (in share) a run must be able to see...
POWER = 0.90  # ...with this probability, or the verdict is "undecided"
METHOD = "exact binomial test per cluster (Clopper-Pearson intervals), Bonferroni-corrected"


@dataclass(frozen=True)
class Cell:
    name: str
    expected: float  # share, 0..1
    observed: int  # successful calls this cluster served


def expectation(config: LoadConfig) -> tuple[str, tuple[tuple[str, float], ...]] | None:
    """("split" or "cluster", ((name, share 0..1), ...)) for the gate asked, or None."""
    if config.expect_cluster is not None:
        return "cluster", ((config.expect_cluster, 1.0),)
    if config.expect_split is not None:
        return "split", tuple((name, percent / 100) for name, percent in config.expect_split)
    return None


def successes_by_cluster(data: dict[str, Any]) -> dict[str, int]:
    """Successful calls per cluster, from the report's by_cluster table."""
    return {name: row["count"] - row["errors"] for name, row in data["by_cluster"].items()}


def comparisons(cells: int) -> int:
    """Bonferroni's m: with two cells (or one) a single comparison decides."""
    return 1 if cells <= 2 else cells


def calls_needed(expected: tuple[tuple[str, float], ...], alpha: float) -> int:
    """The calls a run needs so that a DETECT deviation of any expected share is caught
    with probability POWER at family-wise level ``alpha``."""
    m = comparisons(len(expected))
    return max(stats.calls_to_detect(share, DETECT, alpha / m, POWER) for _, share in expected)


def evaluate(
    kind: str, expected: tuple[tuple[str, float], ...], counts: dict[str, int], confidence: float
) -> dict[str, Any]:
    """The ``split`` section of the report for these successful-call counts."""
    alpha = 1.0 - confidence
    named = {name for name, _ in expected}
    cells = [Cell(name, share, counts.get(name, 0)) for name, share in expected]
    strays = sorted(
        ((name, n) for name, n in counts.items() if name not in named and n > 0),
        key=lambda kv: (-kv[1], kv[0]),
    )
    cells += [Cell(name, 0.0, n) for name, n in strays]
    total = sum(counts.values())
    m = comparisons(len(cells))
    level = 1.0 - alpha / m
    rows: list[dict[str, Any]] = []
    p_values: list[float] = []
    for cell in cells:
        low, high = stats.clopper_pearson(cell.observed, total, level)
        p_value = min(1.0, m * stats.binom_test(cell.observed, total, cell.expected))
        p_values.append(p_value)
        within = total == 0 or low <= cell.expected <= high
        rows.append(
            {
                "name": cell.name,
                "expected_share": round(cell.expected, 6),
                "count": cell.observed,
                "share": round(cell.observed / total, 6) if total else 0.0,
                "low": round(low, 6),
                "high": round(high, 6),
                "p_value": p_value,
                "within": within,
            }
        )
    needed = calls_needed(expected, alpha)
    if not all(row["within"] for row in rows):
        decision = "off"
    elif total < needed:
        decision = "undecided"
    else:
        decision = "pass"
    return {
        "kind": kind,
        "decision": decision,
        "confidence": confidence,
        "method": METHOD,
        "comparisons": m,
        "interval_confidence": round(level, 6),
        "calls": total,
        "calls_needed": needed,
        "detect": DETECT,
        "power": POWER,
        "p_value": min(p_values, default=1.0),
        "clusters": rows,
    }


def failure(section: dict[str, Any]) -> str | None:
    """The line a missed gate prints, or None when it passed."""
    flag = "--expect-cluster" if section["kind"] == "cluster" else "--expect-split"
    confidence = f"{section['confidence']:.4g}"
    if section["decision"] == "off" and section["kind"] == "cluster":
        [want, *others] = section["clusters"]
        strays = ", ".join(f"{row['name']}: {row['count']}" for row in others)
        return (
            f"{flag}: {section['calls'] - want['count']} of {section['calls']} successful "
            f"calls were served by other clusters than {want['name']} ({strays})"
        )
    if section["decision"] == "off":
        unnamed = [row for row in section["clusters"] if row["expected_share"] == 0]
        off = [row for row in section["clusters"] if not row["within"]]
        # a cluster that should see nothing is the clearest sign; else the worst fit
        worst = (unnamed or sorted(off, key=lambda row: row["p_value"]))[0]
        if worst["expected_share"] == 0:
            expect = "which the expectation does not name"
        else:
            expect = f"expected {worst['expected_share']:.1%}"
        return (
            f"{flag}: the split is off at confidence {confidence}: {worst['name']} served "
            f"{worst['count']} of {section['calls']} successful calls ({worst['share']:.1%}, "
            f"interval {worst['low']:.1%}-{worst['high']:.1%}), {expect}"
        )
    if section["decision"] == "undecided":
        return (
            f"{flag}: undecided: {section['calls']} successful calls cannot tell a "
            f"{section['detect'] * 100:.0f}-point deviation at confidence {confidence} (power "
            f"{section['power']:.0%}); run at least {section['calls_needed']} calls "
            f"(e.g. -n {section['calls_needed']})"
        )
    return None


def check(config: LoadConfig, data: dict[str, Any]) -> tuple[dict[str, Any], str | None] | None:
    """The gate for ``config`` over a built report: (its ``split`` section, the failure
    line or None), or None when no split gate was asked."""
    expected = expectation(config)
    if expected is None:
        return None
    kind, shares = expected
    section = evaluate(kind, shares, successes_by_cluster(data), config.split_confidence)
    return section, failure(section)
