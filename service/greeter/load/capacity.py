"""The capacity a step schedule found: the last step that met the gates.

With ``--load-schedule step`` and a gate (``--max-latency`` on the total latency,
``--max-error-rate``), each step of the run is judged on its own, from the timeline's buckets
that fall inside it: its error rate, and its latency statistics (of every call, as the gates
judge the whole run). The capacity is the rate asked in the last step that met every gate
before the first that did not ("capacity: 4,000 calls/s at p99 <= 50 ms"); a step the run
covered less than ``WHOLE_STEP`` of is left out. Steps need whole timeline intervals: a step
duration that is not a multiple of ``--timeline-interval`` gives no verdict, and says why.
"""

from __future__ import annotations

import math
from typing import Any

from greeter.load.config import LoadConfig, Threshold
from greeter.load.histogram import Histogram, bucket_bounds

_SLACK = 1e-6
# A step counts when the run covered this share of it: a schedule's run ends as its last call
# is sent, a little before the last step's end.
WHOLE_STEP = 0.9


def gate_text(config: LoadConfig) -> str:
    """The gates a step must meet, as a person reads them: ``p99 <= 50 ms, errors <= 0.1%``."""
    parts = [f"{t.stat} <= {t.limit_ms:g} ms" for t in _latency_gates(config)]
    if config.max_error_rate is not None:
        parts.append(f"errors <= {config.max_error_rate:.2%}")
    return ", ".join(parts)


def _latency_gates(config: LoadConfig) -> list[Threshold]:
    return [t for t in config.thresholds if t.scope == "total"]


def _stat(hist: Histogram, stat: str) -> float:
    if stat == "mean":
        value = hist.mean
    elif stat == "min":
        value = hist.min
    elif stat == "max":
        value = hist.max
    else:
        value = hist.percentile(float(stat[1:]))
    return round(value / 1000, 3)


def section(config: LoadConfig, timeline: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The report's ``capacity``, or None without a step schedule and a gate."""
    gates = _latency_gates(config)
    if config.schedule != "step" or not (gates or config.max_error_rate is not None):
        return None
    gate = gate_text(config)
    step_s = config.load_step_duration
    interval = config.timeline_interval
    ratio = step_s / interval
    if abs(ratio - round(ratio)) > _SLACK or round(ratio) < 1:
        why = (
            f"--load-step-duration {step_s:g}s is not a whole number of"
            f" --timeline-interval {interval:g}s"
        )
        return {"gate": gate, "rate": None, "steps": [], "note": why}
    per_step = round(ratio)
    steps: list[dict[str, Any]] = []
    for first in range(0, len(timeline), per_step):
        rows = timeline[first : first + per_step]
        seconds = sum(r["duration_s"] for r in rows)
        if seconds < step_s * WHOLE_STEP:
            break  # the run ended early in this step
        steps.append(_judge(config, gates, first // per_step, rows, seconds))
    rate = None
    for step in steps:
        if not step["met"]:
            break
        rate = step["rate"]
    return {"gate": gate, "rate": rate, "steps": steps}


def _judge(
    config: LoadConfig,
    gates: list[Threshold],
    index: int,
    rows: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    hist = Histogram()
    count = errors = 0
    for row in rows:
        count += row["count"]
        errors += row["errors"]
        for bucket, n in row["hdr"]:
            hist.counts[int(bucket)] += int(n)
    hist.count = count
    ok = count - errors
    # The buckets keep counts only: min, max and mean come from the bucket bounds.
    filled = [i for i, n in enumerate(hist.counts) if n]
    if filled:
        hist.min, hist.max = bucket_bounds(filled[0])[0], bucket_bounds(filled[-1])[1]
        hist.total = sum(n * sum(bucket_bounds(i)) // 2 for i, n in enumerate(hist.counts) if n)
    error_rate = errors / count if count else 0.0
    latency = {t.stat: (_stat(hist, t.stat) if count else None) for t in gates}
    met = bool(count) and all((v := latency[t.stat]) is not None and v <= t.limit_ms for t in gates)
    if config.max_error_rate is not None:
        met = met and error_rate <= config.max_error_rate
    return {
        "rate": round(config.rate_at(index * config.load_step_duration), 3),
        "t": round(index * config.load_step_duration, 6),
        "count": count,
        "goodput": round(ok / seconds, 3) if seconds > 0 else 0.0,
        "error_rate": round(error_rate, 6),
        "latency_ms": latency,
        "met": met,
    }


def summary_line(capacity: dict[str, Any]) -> str:
    """``capacity: 4,000 calls/s at p99 <= 50 ms`` (or why there is none)."""
    if capacity.get("note"):
        return f"capacity: not judged ({capacity['note']})"
    if capacity["rate"] is None:
        return f"capacity: no step met {capacity['gate']}"
    rate = capacity["rate"]
    shown = f"{rate:,.0f}" if math.isclose(rate, round(rate)) else f"{rate:,.1f}"
    return f"capacity: {shown} calls/s at {capacity['gate']}"
