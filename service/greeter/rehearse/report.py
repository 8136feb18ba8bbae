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
from greeter.load.report import Report
from greeter.rehearse import scenarios


def report_lines(summary: dict[str, Any]) -> list[str]:
    """A scenario's summary for people (``--json`` prints the summary itself)."""
    lines = [
        f"{summary['scenario']}: {summary['count']} calls in {summary['duration_s']}s "
        f"({summary['rps']}/s), failed {summary['failed']}",
        f"  status codes: {summary['status_codes']}",
        f"  by cluster:   {summary['by_cluster']}",
        f"  by pod:       {summary['by_pod']}",
    ]
    lines += [f"  {event}" for event in summary["events"]]
    if "kill_at_s" in summary:  # the outage: when its failures happened, if any
        if summary["failed"]:
            lines.append(
                f"  failures from {summary['first_failure_s']}s, window "
                f"{summary['failure_window_s']}s (kill at {summary['kill_at_s']}s); last failed "
                f"call sent {summary['last_failure_sent_after_kill_s']}s after the kill"
            )
        else:
            lines.append(f"  no failed calls (kill at {summary['kill_at_s']}s)")
    if "phases" in summary:  # the failover: where the calls went
        lines += failover_lines(summary)
    if "revived_at_s" in summary:  # the outage and the failover: the victims' return
        lines.append(return_line(summary))
    lines += [f"  failed: {sample}" for sample in summary.get("failure_samples", [])]
    return lines


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def failover_lines(summary: dict[str, Any]) -> list[str]:
    standby, active = ", ".join(summary["standby"]), ", ".join(summary["active"])
    lines = []
    for key, what in (
        ("before_kill", "before the kill"),
        ("active_down", f"while {active} was down"),
        ("returned", f"{summary['return_bound_s']:g}s after {active} was SERVING"),
    ):
        phase = summary["phases"][key]
        lines.append(
            f"  {what} ({phase['calls']} {phase['from_s']}-{phase['to_s']}s): "
            f"{phase['count']} calls, failed {phase['failed']}, by cluster {phase['by_cluster']}"
        )
    lines.append(
        f"  standby {standby}: share {_percent(summary['standby_share_before_kill'])} before "
        f"the kill, {_percent(summary['standby_share_after_kill'])} while {active} was down"
    )
    return lines


def _killed(summary: dict[str, Any]) -> str:
    """The clusters the outage or the failover killed."""
    return ", ".join(summary["active"]) if "active" in summary else str(summary["cluster"])


def return_line(summary: dict[str, Any]) -> str:
    returned = summary["returned_at_s"]
    line = (
        f"  {_killed(summary)}: restarted at {summary['reviving_at_s']}s, SERVING at "
        f"{summary['revived_at_s']}s, first call again at "
        f"{'-' if returned is None else f'{returned}s'}"
    )
    if "phases" in summary:
        line += (
            f", share {_percent(summary['active_share_after_return'])} from "
            f"{summary['phases']['returned']['from_s']}s"
        )
    return line


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
}


def markers(result: scenarios.ScenarioResult) -> list[tuple[float, str]]:
    """The events to draw on the timeline: (seconds on the traffic's clock, label)."""
    return [
        (round(e["at_s"] - result.traffic_started_at_s, 3), MARKED[e["event"]](e))
        for e in result.events
        if e["event"] in MARKED
    ]


def _verdict(summary: dict[str, Any], allowed: int) -> str:
    ok = scenarios.passed(summary, allowed)
    parts = [f"{summary['failed']} failed of {summary['count']} calls, {allowed} allowed"]
    if "kill_at_s" in summary:
        late = summary["last_failure_sent_after_kill_s"]
        if late is not None:
            parts.append(
                f"the last failed call was sent {late:g}s after the SIGKILL (bound "
                f"{scenarios.OUTAGE_MAX_WINDOW_S:g}s)"
            )
        parts.append(
            f"{summary['failures_sent_after_dead']} failed calls were sent after the killed "
            "backends had exited"
        )
    if "covered_all_restarts" in summary:
        covered = "covered" if summary["covered_all_restarts"] else "did NOT cover"
        parts.append(f"the traffic {covered} every restart")
    word = "passed" if ok else "FAILED"
    return (
        f'<p class="verdict" data-passed="{str(ok).lower()}"><strong>{word}</strong>: '
        f"{html.escape('; '.join(parts))}.</p>"
    )


def _events_table(result: scenarios.ScenarioResult) -> str:
    rows = []
    for e in result.events:
        t = e["at_s"] - result.traffic_started_at_s
        details = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("at_s", "event"))
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
    text = report_lines({**summary, "events": []})
    preface = (
        f"{_verdict(summary, allowed)}\n<h2>Events</h2>\n<p>Times in seconds since the "
        f"traffic's first call (the timeline's clock; the rehearsal's own began "
        f"{result.traffic_started_at_s:.3f}s earlier).</p>\n{_events_table(result)}\n"
        f'<pre class="report">{esc(chr(10).join(text))}</pre>\n'
    )
    return render.to_html(
        Report(result.load),
        heading=f"greeter rehearse: {result.name}",
        preface=preface,
        markers=markers(result),
        by_pod=True,
    )
