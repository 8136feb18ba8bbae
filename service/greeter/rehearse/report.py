"""A scenario's report: lines for people, and an HTML page (``--html``).

The page is ``greeter load``'s HTML report of the scenario's traffic (its ``load`` report:
totals, tables, the per-interval timeline stacked by cluster with errors marked), headed by
the scenario's verdict and its events, with the events drawn on the timeline and a second
timeline stacked by pod. The events' clock began before the traffic's; the page shows every
time on the traffic's clock (seconds since its first call), which is the timeline's.
"""

from __future__ import annotations

import html
from typing import Any

from greeter.load import render
from greeter.load.engine import UNKNOWN
from greeter.load.report import Report
from greeter.rehearse import findings, scenarios
from greeter.wording import plural

# What each scenario did, for the line under the verdict.
WHAT: dict[findings.ScenarioName, str] = {
    "drain": "SIGTERM each backend in turn under greeter load, restart it",
    "outage": "SIGKILL every backend of {cluster} under traffic, then restart them",
    "failover": "{fault} the active {active}; the standby {standby} takes the calls",
    "partition": "drop every packet between the gateway and {cluster} (no reset) for "
    "{partition_for:g} s, then heal",
    "overload": "the fleet's capacity through the gateway (closed loop), then {level:g}x it "
    "(open loop, deadline {deadline:g} s)",
}
FAULT_WORDS = {"kill": "SIGKILL", "cut": "cut off (packets dropped)"}
NO_BACKEND = "no backend (gateway 502)"  # nginx: no backend took the call
NO_BACKEND_ENVOY = "no backend (gateway 503)"  # Envoy: no healthy pod, or the pod's link broke
NO_IDENTITY = "no backend named"  # failed without naming a backend, and not the gateway's own
# What each gateway says when it answered a call itself, no backend having taken it.
_GATEWAY_SAYS = (
    ("502", NO_BACKEND),
    ("upstream connect error", NO_BACKEND_ENVOY),
    ("no healthy upstream", NO_BACKEND_ENVOY),
)


def _no_backend(text: str) -> str:
    """The label of a failure the gateway answered itself ("" if ``text`` is not one)."""
    return next((label for says, label in _GATEWAY_SAYS if says in text), "")


LABEL = 15  # the width of the report's left column


def report_lines(summary: dict[str, Any], allowed: int | None = None) -> list[str]:
    """A scenario's summary for people (``--json`` prints the summary itself): the verdict
    first, then aligned lines; every time on the traffic's clock. ``allowed``: failed calls
    the scenario may have (default: the scenario's own)."""
    if allowed is None:
        allowed = findings.allowed_failures(summary["scenario"])
    return [verdict_line(summary, allowed), *detail_lines(summary), allowed_line(summary, allowed)]


# Why each scenario may fail that many calls (its default), for the "allowed" row.
ALLOWED_WHY: dict[findings.ScenarioName, str] = {
    "drain": "a drain must lose no call",
    "outage": "the calls already sent to a killed backend (a gateway cannot replay a "
    "gRPC request it has started to send; every later call is retried elsewhere)",
    "failover": f"the calls in flight at the SIGKILL (the probe keeps at most "
    f"{findings.PROBE_CONCURRENCY}) plus the outage's {findings.OUTAGE_MAX_FAILED}",
}
# The outage's and the failover's bound on when a failed call may have been sent.
WINDOW_WHY = "a call sent any later must reach a live backend"


def allowed_line(summary: dict[str, Any], allowed: int) -> str:
    """The verdict's "(allowed N)" explained: the scenario's reason, or --max-failed; the
    overload's bound instead (refusals past capacity are its point, not failures)."""
    if "min_goodput" in summary:
        return _row(
            "bound",
            f"goodput at least {summary['min_goodput']:g}x the capacity (--min-goodput); "
            "calls refused past capacity are not failures",
        )
    name = summary["scenario"]
    default = findings.allowed_failures(name)
    why = ALLOWED_WHY.get(name, "") if allowed == default else "as --max-failed set"
    return _row("allowed", f"{plural(allowed, 'failed call')}: {why}")


def verdict_line(summary: dict[str, Any], allowed: int) -> str:
    """``PASSED: 1 failed of 2,925 calls (allowed 10)`` or ``FAILED: ...``; the overload's
    ``PASSED: goodput 1,734/s = 0.93x the capacity 1,860/s (min 0.9x)``."""
    ok = findings.passed(summary, allowed)
    if "min_goodput" in summary:
        return (
            f"{'PASSED' if ok else 'FAILED'}: goodput {summary['goodput']:,.0f}/s = "
            f"{summary['goodput_x']:.2f}x the capacity {summary['capacity']:,.0f}/s "
            f"(min {summary['min_goodput']:g}x)"
        )
    line = (
        f"{summary['failed']:,} failed of {plural(summary['count'], 'call')} (allowed {allowed:,})"
    )
    late = findings.failures_after_dead(summary)
    if late:
        line += f"; {late:,} sent after the active backends had exited{_grace(summary)} (allowed 0)"
    if summary.get("slowest_bound_ms") is not None:
        line += (
            f"; slowest {summary['latency_ms']['max']:,.0f} ms "
            f"(bound {summary['slowest_bound_ms']:,.0f} ms)"
        )
    return f"{'PASSED' if ok else 'FAILED'}: {line}"


def _grace(summary: dict[str, Any]) -> str:
    """How long after the exit a call still counted as sent before it (Envoy: see
    ``Rehearsal.dead_grace_s``), in words; "" when none."""
    grace = float(summary.get("dead_grace_s") or 0.0)
    return (
        f" (by more than {grace:g} s, the time Envoy may take to see a dead pod's connection close)"
        if grace
        else ""
    )


def _row(label: str, text: str) -> str:
    return f"  {label.ljust(LABEL - 1)} {text}"


def _rows(label: str, texts: list[str]) -> list[str]:
    """The first line labelled, the others under it."""
    return [_row(label if i == 0 else "", t) for i, t in enumerate(texts)] or [_row(label, "-")]


def _unnamed_label(summary: dict[str, Any]) -> str:
    """How the calls that failed without naming a backend are labelled: the gateway's own
    answers (nginx's 502, Envoy's 503) or just unnamed; in an overload just unnamed (the pods'
    refusals name no pod either, and are not the gateway's)."""
    if "min_goodput" in summary:
        return NO_IDENTITY
    texts = [str(s.get("details", "")) for s in summary.get("failure_samples", [])]
    texts += [str(k) for k in (summary.get("errors") or {})]
    return next((label for label in map(_no_backend, texts) if label), NO_IDENTITY)


def _served_by(summary: dict[str, Any], key: str) -> list[str]:
    """The by-cluster or by-pod table: the successful calls each served, and the calls that
    reached no backend, each with its share of all calls."""
    count = summary["count"]
    served = {name: n for name, n in summary[key].items() if name and name != UNKNOWN}
    unnamed = count - sum(served.values()) if key == "by_cluster" else None
    if unnamed is None:  # by pod: what by cluster counted as unnamed
        unnamed = count - sum(n for name, n in summary["by_cluster"].items() if name != UNKNOWN)
    rows = sorted(served.items())
    if unnamed > 0:
        rows.append((_unnamed_label(summary), unnamed))
    width = max((len(name) for name, _ in rows), default=0)
    digits = max((len(f"{n:,}") for _, n in rows), default=0)
    return [f"{name:<{width}}  {n:>{digits},}  {_share(n, count):>6}" for name, n in rows]


def _share(n: int, count: int) -> str:
    """``n`` of ``count`` as a percentage; a few calls of many show as <0.1%, not 0.0%."""
    share = n / count if count else 0.0
    return "<0.1%" if 0 < share < 0.0005 else f"{share:.1%}"


# The load process's own lifecycle: the scenario starts it and stops it with Ctrl-C when the
# last backend is back (which reads like a failure); the traffic row and the drained rows
# say what matters, so these are not shown.
UNSHOWN_EVENTS = ("greeter load started", "greeter load interrupted", "greeter load done")


def shown_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] not in UNSHOWN_EVENTS]


def _event_lines(summary: dict[str, Any]) -> list[str]:
    t0 = float(summary.get("traffic_started_at_s") or 0.0)
    events = shown_events(summary["events"])
    times = [f"{e['at_s'] - t0:.3f}" for e in events]
    width = max(map(len, times), default=0)
    names = max((len(e["event"]) for e in events), default=0)
    lines = []
    for t, e in zip(times, events, strict=True):
        details = scenarios.event_details(
            {k: v for k, v in e.items() if k not in ("at_s", "event")}
        )
        lines.append(f"{t:>{width}}  {e['event']:<{names}}  {details}".rstrip())
    return lines


def detail_lines(summary: dict[str, Any], events: bool = True) -> list[str]:
    """Everything but the verdict (the page shows the events in a table of its own)."""
    name = summary["scenario"]
    what = WHAT.get(name, "").format(
        cluster=summary.get("cluster") or "one cluster",
        active=", ".join(summary.get("active", [])),
        standby=", ".join(summary.get("standby", [])),
        fault=FAULT_WORDS[summary.get("fault", "kill")],
        partition_for=float(summary.get("partition_for_s") or 0.0),
        level=float(summary.get("level") or 0.0),
        deadline=float(summary.get("deadline_s") or 0.0),
    )
    codes = ", ".join(f"{code} {n:,}" for code, n in summary["status_codes"].items())
    started = float(summary.get("traffic_started_at_s") or 0.0)
    lines = [
        f"{name}: {what}",
        _row(
            "traffic",
            f"{plural(summary['count'], 'call')} in {summary['duration_s']} s ({summary['rps']}/s)",
        ),
        _row(
            "times",
            "seconds since the traffic's first call (the live lines' rehearsal clock "
            f"began {started:.3f} s earlier)",
        ),
        _row("status codes", codes or "-"),
        *_rows("by cluster", _served_by(summary, "by_cluster")),
        *_rows("by pod", _served_by(summary, "by_pod")),
    ]
    if "slow_calls" in summary:
        lines.append(_row("slow calls", slow_line(summary)))
    if events:
        lines += _rows("events", _event_lines(summary))
    if "covered_all_restarts" in summary:
        covered = "covered" if summary["covered_all_restarts"] else "did NOT cover"
        lines.append(_row("restarts", f"the traffic {covered} every restart"))
        lines += _rows("drained", drained_lines(summary))
    if "kill_at_s" in summary:  # the outage and the failover: when its failures happened
        lines.append(_row("failed calls", _failures(summary)))
    if "phases" in summary:  # the failover: where the calls went
        lines += failover_lines(summary)
    if "revived_at_s" in summary and "partition_for_s" not in summary:  # killed, revived
        lines.append(return_line(summary))
    if "partition_for_s" in summary:
        lines += partition_lines(summary)
    if "min_goodput" in summary:
        lines += overload_lines(summary)
    lines += _rows("failed", _samples(summary)) if summary.get("failure_samples") else []
    return lines


def drained_lines(summary: dict[str, Any]) -> list[str]:
    """For each pod the drain sent SIGTERM: when, when its calls stopped and when they came
    again, on the traffic's clock (to the timeline's bucket the calls were answered in)."""
    spans = summary.get("served_spans_s")
    t0 = float(summary.get("traffic_started_at_s") or 0.0)
    sigterms = [e for e in summary["events"] if e["event"] == "sigterm"]
    if spans is None or not sigterms:
        return []
    rows = []
    for e in sigterms:
        at = e["at_s"] - t0
        stretches = spans.get(e["pod"], [])
        before = [s for s in stretches if s[0] <= at]
        after = [s for s in stretches if s[0] > at]
        stopped = f"calls until {before[-1][1]:.1f} s" if before else "no calls before it"
        again = f"again from {after[0][0]:.1f} s" if after else "no calls after it"
        rows.append((e["pod"], f"SIGTERM {at:.3f} s", stopped, again))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [
        "when each pod's calls stopped and came again (to the "
        f"{summary.get('timeline_interval_s') or 1:g} s bucket they were answered in)",
        *(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
            + f"  {row[3]}"
            for row in rows
        ),
    ]


def _cut(summary: dict[str, Any]) -> bool:
    """Whether the victims were cut off (a partition) rather than killed."""
    return summary.get("fault") == "cut"


def _failures(summary: dict[str, Any]) -> str:
    kill = f"the {'cut' if _cut(summary) else 'SIGKILL'} at {summary['kill_at_s']:.3f} s"
    failed = summary["failed"]
    if not failed:
        return f"none ({kill})"
    first = summary["first_failure_s"]
    last = first + summary["failure_window_s"]
    return (
        f"{failed:,}, answered {first:.3f}-{last:.3f} s; the last sent "
        f"{_after(summary['last_failure_sent_after_kill_s'], 3)} {kill} (bound "
        f"{findings.OUTAGE_MAX_WINDOW_S:g} s: {WINDOW_WHY})"
    )


def _after(seconds: float, digits: int | None = None) -> str:
    """``0.010 s after`` or, for a negative time, ``0.005 s before``."""
    shown = f"{abs(seconds):.{digits}f}" if digits is not None else f"{abs(seconds):g}"
    return f"{shown} s {'before' if seconds < 0 else 'after'}"


def _samples(summary: dict[str, Any]) -> list[str]:
    """The first failed calls, one aligned line each."""
    samples = summary.get("failure_samples", [])
    width = max(len(s["code"]) for s in samples)
    lines = []
    for s in samples:
        details = str(s["details"])
        label = _no_backend(details)
        if label:
            details = f"{label}: {details}"
        lines.append(
            f"sent {s['sent_s']:7.3f} s  answered {s['at_s']:7.3f} s  "
            f"{s['code']:<{width}}  {details}"
        )
    return lines


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def failover_lines(summary: dict[str, Any]) -> list[str]:
    standby, active = ", ".join(summary["standby"]), ", ".join(summary["active"])
    phases = []
    for key, what in (
        ("before_kill", f"before the {'cut' if _cut(summary) else 'kill'}"),
        ("active_down", f"while {active} was down"),
        (
            "returned",
            f"{summary['return_bound_s']:g} s after {active} was SERVING, by when the gateway "
            "sends it calls again: nginx's fail_timeout or Envoy's health checks, plus 1 s",
        ),
    ):
        phase = summary["phases"][key]
        served = ", ".join(f"{name} {n:,}" for name, n in phase["by_cluster"].items()) or "-"
        phases.append(
            f"{what} (calls {phase['calls']} {phase['from_s']:.3f}-{phase['to_s']:.3f} s): "
            f"{plural(phase['count'], 'call')}, {phase['failed']:,} failed; served: {served}"
        )
    share = (
        f"{standby}: {_percent(summary['standby_share_before_kill'])} before the "
        f"{'cut' if _cut(summary) else 'kill'}, "
        f"{_percent(summary['standby_share_after_kill'])} while {active} was down"
    )
    return [*_rows("phases", phases), _row("standby share", share)]


def slow_line(summary: dict[str, Any]) -> str:
    """``12 over 1 s; slowest 1,043 ms (sent 2.345 s)``: calls that hung a while."""
    slow = summary["slow_calls"]
    sent = slow.get("slowest_sent_s")
    at = "" if sent is None else f" (sent {sent:.3f} s)"
    return f"{slow['count']:,} over {slow['over_s']:g} s; slowest {slow['slowest_ms']:,.0f} ms{at}"


def partition_lines(summary: dict[str, Any]) -> list[str]:
    """The partition: failed calls by code, when the cut cluster stopped and got calls again,
    and the gateway's own count beside the probe's."""
    codes = ", ".join(f"{code} {n:,}" for code, n in summary["failed_by_code"].items())
    cut, healed = summary["cut_at_s"], summary["healed_at_s"]
    stopped = summary["stopped_after_s"]
    held = (
        "no call held by it"
        if stopped is None
        else f"the last call it held ({summary['held_s']:g} s or more) was sent at "
        f"{summary['last_held_sent_s']:.3f} s "
        f"({stopped:.3f} s after the cut)"
    )
    back = summary["returned_at_s"]
    lines = [
        _row("failed calls", codes or "none"),
        _row(
            summary["cluster"],
            f"cut at {cut:.3f} s, healed at {healed:.3f} s; {held}; first call again at "
            f"{'-' if back is None else f'{back:.3f} s'}",
        ),
    ]
    counts = summary.get("gateway_counts")
    if counts:
        agree = "the same as the probe's" if counts["agrees"] else "NOT the probe's"
        served = ", ".join(f"{pod} {n:,}" for pod, n in sorted(counts["by_pod"].items()))
        lines += _rows(
            "gateway log",
            [
                f"{counts['calls']:,} calls ({counts['retried']:,} tried on more than one pod); "
                f"by pod {agree}",
                served or "-",
            ],
        )
    return lines


def overload_lines(summary: dict[str, Any]) -> list[str]:
    """The overload: capacity, what was asked and sent, the calls by code, each pod's part."""
    codes = summary["codes"]
    count = summary["count"]
    kept = "yes" if summary["kept_up"] else "NO: the fleet was asked less than the level"
    where = (
        f"load tester on core {summary['client_core']}, pods on core {summary['pod_cores']}"
        if summary["client_core"] is not None
        else "load tester and pods not pinned"
    )
    cap_codes = ", ".join(f"{c} {n:,}" for c, n in summary["capacity_codes"].items())
    lines = [
        _row("capacity", f"{summary['capacity']:,.0f} OK calls/s (closed loop; {cap_codes})"),
        _row(
            "asked",
            f"{summary['asked_rps']:,.0f}/s ({summary['level']:g}x); sent "
            f"{summary['sent_rps']:,.0f}/s; client kept up: {kept} ({where})",
        ),
        _row(
            "goodput",
            f"{summary['goodput']:,.0f} OK calls/s = {summary['goodput_x']:.2f}x the capacity",
        ),
        *_rows(
            "calls",
            [
                f"{code:<18} {n:>8,}  {_share(n, count):>6}"
                for code, n in codes.items()
                if n or code != "other"
            ],
        ),
        _row(
            "refused",
            f"{summary['refused']:,} (RESOURCE_EXHAUSTED + CANCELLED); past their deadline "
            f"{summary['past_deadline']:,} (DEADLINE_EXCEEDED)",
        ),
    ]
    pods = summary["pods"]
    width = max((len(pod) for pod in pods), default=0)
    rows = [
        f"{pod:<{width}}  {_cores(p['cores'])}  OK {p['ok']:>7,}  refused {p['refused']:>7,}  "
        f"other {p['other']:>5,}  throttled {p['throttled_s']:.1f} s"
        for pod, p in pods.items()
    ]
    lines += _rows("pods", [*rows, "(the gateway's access log: the whole run, warm-up included)"])
    itself = summary["gateway_answered"].items()
    answered = ", ".join(f"{GATEWAY_FLAGS.get(flags, flags)} {n:,}" for flags, n in itself)
    lines.append(
        _row(
            "gateway",
            f"{summary['gateway_retried']:,} calls tried on more than one pod; answered itself: "
            f"{answered or 'none'}",
        )
    )
    return lines


# What Envoy's response flags on a call it answered itself mean.
GATEWAY_FLAGS = {"UO": "UO (circuit breaker: max_requests in flight)", "UH": "UH (no healthy pod)"}


def _cores(cores: float | None) -> str:
    return "no quota" if cores is None else f"{cores:g} core".ljust(10)


def _killed(summary: dict[str, Any]) -> str:
    """The clusters the outage or the failover killed."""
    return ", ".join(summary["active"]) if "active" in summary else str(summary["cluster"])


def return_line(summary: dict[str, Any]) -> str:
    returned = summary["returned_at_s"]
    back = "first call again at " + ("-" if returned is None else f"{returned:.3f} s")
    if _cut(summary):
        line = f"healed at {summary['revived_at_s']:.3f} s, {back}"
    else:
        line = (
            f"restarted at {summary['reviving_at_s']:.3f} s, SERVING at "
            f"{summary['revived_at_s']:.3f} s, {back}"
        )
    if "phases" in summary:
        line += (
            f", share {_percent(summary['active_share_after_return'])} from "
            f"{summary['phases']['returned']['from_s']:.3f} s"
        )
    return _row(_killed(summary), line)


def _names(event: dict[str, Any]) -> str:
    clusters = event.get("clusters") or [event.get("cluster", "")]
    return ", ".join(clusters)


TEXT_CELL = 'style="text-align:left"'  # the load report's cells are numbers, right-aligned
# What the timeline marks, by event; the other events are in the page's table only.
MARKED = {
    "sigterm": lambda e: f"drain {e['pod']}",
    "serving again": lambda e: f"{e['pod']} back",
    "sigkill": lambda e: f"kill {_names(e)}",
    "reviving": lambda e: f"restart {_names(e)}",
    "revived": lambda e: f"{_names(e)} back",
    "partition": lambda e: f"cut {_names(e)}",
    "heal": lambda e: f"heal {_names(e)}",
}


def markers(result: scenarios.ScenarioResult) -> list[tuple[float, str]]:
    """The events to draw on the timeline: (seconds on the traffic's clock, label)."""
    return [
        (round(e["at_s"] - result.traffic_started_at_s, 3), MARKED[e["event"]](e))
        for e in result.events
        if e["event"] in MARKED
    ]


def _verdict(summary: dict[str, Any], allowed: int) -> str:
    ok = findings.passed(summary, allowed)
    parts = [verdict_line(summary, allowed).split(": ", 1)[1]]
    if "kill_at_s" in summary:
        late = summary["last_failure_sent_after_kill_s"]
        if late is not None:
            parts.append(
                f"the last failed call was sent {_after(late)} the SIGKILL (bound "
                f"{findings.OUTAGE_MAX_WINDOW_S:g} s: {WINDOW_WHY})"
            )
        after = summary["failures_sent_after_dead"]
        parts.append(
            f"{plural(after, 'failed call')} {'was' if after == 1 else 'were'} sent after the "
            f"killed backends had exited{_grace(summary)}"
        )
    if "covered_all_restarts" in summary:
        covered = "covered" if summary["covered_all_restarts"] else "did NOT cover"
        parts.append(f"the traffic {covered} every restart")
    if "slow_calls" in summary and "min_goodput" not in summary:
        parts.append(f"slow calls: {slow_line(summary)}")
    word = "passed" if ok else "FAILED"
    return (
        f'<p class="verdict" data-passed="{str(ok).lower()}"><strong>{word}</strong>: '
        f"{html.escape('; '.join(parts))}.</p>"
    )


def _events_table(result: scenarios.ScenarioResult) -> str:
    rows = []
    for e in shown_events(result.events):
        t = e["at_s"] - result.traffic_started_at_s
        details = scenarios.event_details(
            {k: v for k, v in e.items() if k not in ("at_s", "event")}
        )
        rows.append(
            f"<tr><td>{t:.3f}</td><td {TEXT_CELL}>{html.escape(e['event'])}</td>"
            f"<td {TEXT_CELL}>{html.escape(details)}</td></tr>"
        )
    return (
        f'<table class="events"><tr><th>t, s</th><th {TEXT_CELL}>event</th>'
        f"<th {TEXT_CELL}>details</th></tr>{''.join(rows)}</table>"
    )


def to_html(result: scenarios.ScenarioResult, allowed: int) -> str:
    """The scenario's page (self-contained, no scripts), ``allowed`` failed calls."""
    if result.load is None:
        raise ValueError(f"{result.name}: no load report to draw")
    summary = result.summary()
    esc = html.escape
    # The events are in the table, on the traffic's clock; the text has the rest.
    text = [*detail_lines(summary, events=False), allowed_line(summary, allowed)]
    preface = (
        f"{_verdict(summary, allowed)}\n<h2>Events</h2>\n<p>Times in seconds since the "
        f"traffic's first call (the timeline's clock; the rehearsal's own began "
        f"{result.traffic_started_at_s:.3f}s earlier).</p>\n{_events_table(result)}\n"
        f'<pre class="report">{esc(chr(10).join(text))}</pre>\n'
    )
    # The load tables' row of calls that named no backend, labelled as in the text.
    label = _unnamed_label(summary)
    load = dict(result.load)
    for key in ("by_cluster", "by_pod"):
        load[key] = {label if k == UNKNOWN else k: v for k, v in load[key].items()}
    return render.to_html(
        Report(load),
        heading=f"greeter rehearse: {result.name}",
        preface=preface,
        markers=markers(result),
        by_pod=True,
        unnamed=label,
    )
