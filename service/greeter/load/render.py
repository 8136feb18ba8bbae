"""The report for people (a summary with bars and the by-backend tables, an HTML page
with an inline SVG chart) and for spreadsheets (CSV)."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from typing import Any

from greeter.load import capacity, timeline_chart
from greeter.load.report import Report
from greeter.wording import plural

BAR_WIDTH = 40
UNKNOWN = "(none)"  # the report's key for calls that named no backend (greeter.load.recorder)


def backend_name(name: str, d: dict[str, Any]) -> str:
    """How a by-cluster or by-pod row is labelled: the calls that named no backend are
    ``no backend``, with the gateway's status when its answer says it (the words of
    ``greeter rehearse``'s reports)."""
    if name != UNKNOWN:
        return name
    said = " ".join(d.get("error_messages") or {})
    for code in ("502", "503"):
        if code in said:
            return f"no backend (gateway {code})"
    return "no backend"


# What a gRPC server's own refusals look like in ``error_messages`` ("CODE: details"):
# grpc-core drops a call its server has not taken in time with a bare CANCELLED (a greeter
# pod past capacity: admission_core_wait); a greeter pod's admission control sheds with
# RESOURCE_EXHAUSTED "overloaded: ...".
CORE_DROP = "CANCELLED: CANCELLED"
SHED_PREFIX = "RESOURCE_EXHAUSTED: overloaded: "


def refused_line(d: dict[str, Any]) -> str | None:
    """``the server refused 26,136 calls before running them ...``: why a load past capacity
    fails, in words (None when nothing was refused)."""
    messages: dict[str, int] = d.get("error_messages") or {}
    dropped = messages.get(CORE_DROP, 0)
    shed = sum(n for m, n in messages.items() if m.startswith(SHED_PREFIX))
    if not dropped and not shed:
        return None
    parts = []
    if dropped:
        parts.append(
            f"{dropped:,} with a bare CANCELLED (grpc-core drops a call its server has not"
            " taken in time; a greeter pod after admission_core_wait)"
        )
    if shed:
        parts.append(f"{shed:,} RESOURCE_EXHAUSTED overloaded (its admission control)")
    return (
        f"the server refused calls before running them: {' and '.join(parts)}; it is past its"
        ' capacity (docs/performance.md, "Overload")'
    )


def slow_line(d: dict[str, Any]) -> str:
    """``3 over 1.00 s, slowest 10.00 s``: the calls that hung."""
    slow = d.get("slow_calls")
    if not slow:
        return "n/a"
    return f"{slow['count']} over {_fmt_ms(slow['over_ms'])}, slowest {_fmt_ms(slow['slowest_ms'])}"


def _fmt_ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _pct_keys(latency: dict[str, float]) -> list[str]:
    return [k for k in latency if k.startswith("p")]


NA = "n/a"  # a part of the latency split no reply told (no server-timing): never a zero
SPLIT_PARTS = ("server", "outside")


def _part_ms(row: dict[str, Any], part: str, stat: str) -> float | None:
    """``stat`` of ``row``'s ``part`` (``total``, ``server``, ``outside``), None: n/a."""
    stats = row["latency_ms"] if part == "total" else row.get(f"{part}_ms")
    return None if stats is None else stats.get(stat)


def _fmt_part(value: float | None) -> str:
    return NA if value is None else _fmt_ms(value)


def _split_summary_lines(d: dict[str, Any]) -> list[str]:
    """Where the latency goes: total, server (its server-timing) and outside, side by side."""
    timed = d.get("timed", 0)
    if not timed:
        return [
            "Where the latency goes: n/a (no reply carried a server-timing trailer: the "
            "server does not send one)"
        ]
    stats = ["mean", *(p for p in ("p50", "p90", "p99", "p99.9") if p in d["latency_ms"])]
    share = f"{timed} of {d['count']} calls" if timed != d["count"] else f"all {timed} calls"
    lines = [f"Where the latency goes ({share} told their server time):"]
    rows = [["", *stats]]
    for part in ("total", *SPLIT_PARTS):
        rows.append([part, *(_fmt_part(_part_ms(d, part, s)) for s in stats)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append(
            "  "
            + "  ".join(
                [
                    r[0].ljust(widths[0]),
                    *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)),
                ]
            )
        )
    return lines


def _ok_failed_lines(d: dict[str, Any]) -> list[str]:
    """The latency of OK calls apart from failed ones, when some calls failed (a refusal is
    fast and a timeout slow: either would hide in the latency of all calls)."""
    ok, failed = d.get("ok_latency_ms"), d.get("failed_latency_ms")
    if failed is None:
        return []
    lines = ["Latency of OK and failed calls:"]
    for name, stats in (("OK", ok), ("failed", failed)):
        if stats is None:
            lines.append(f"  {name:<7} none")
            continue
        shown = [k for k in ("p50", "p90", "p99") if k in stats]
        lines.append(f"  {name:<7} " + "  ".join(f"{k} {_fmt_ms(stats[k])}" for k in shown))
    return [*lines, ""]


def summary(report: Report) -> str:
    d = report.data
    out: list[str] = []
    add = out.append
    title = "Summary (interrupted: partial)" if d["interrupted"] else "Summary"
    add(f"{title}:")
    add(f"  Target:\t{d['target']}  ({d['call']})")
    opts = d["options"]
    add(
        f"  Load:\t\t-c {opts['concurrency']}  --connections {opts['connections']}  "
        f"--procs {opts['procs']}" + (f"  --rps {opts['rps']:g}" if opts["rps"] else "")
    )
    for line in _window(d):
        add(line)
    errors = plural(d["errors"], "error")
    add(f"  Count:\t\t{d['count']}  ({d['ok']} OK, {errors}, {d['error_rate']:.2%})")
    add(f"  Total:\t\t{d['duration_s']:.2f} s")
    add(f"  Requests/sec:\t{d['rps']:.2f}")
    if "goodput" in d:  # reports from before it have none
        add(f"  Goodput:\t{d['goodput']:.2f} OK calls/sec")
    if d["call"] in ("SayHelloStreamReply", "SayHelloBidiStream"):
        add(f"  Replies:\t{d['replies']}")
    lat = d["latency_ms"]
    if d["count"]:
        add(
            f"  Latency:\tmin {_fmt_ms(lat['min'])}  mean {_fmt_ms(lat['mean'])}  "
            f"max {_fmt_ms(lat['max'])}"
        )
        add(f"  Slow calls:\t{slow_line(d)}")
        add("")
        add("Latency distribution:")
        for key in _pct_keys(lat):
            add(f"  {key:>7} in {_fmt_ms(lat[key])}")
        add("")
        add("Response time histogram:")
        top = max(bar["count"] for bar in d["histogram"]) or 1
        for bar in d["histogram"]:
            n = bar["count"]
            mark = "∎" * (round(n / top * BAR_WIDTH) if n else 0)
            add(f"  {bar['to_ms']:10.3f} ms [{n:>{len(str(top))}}]\t|{mark}")
        add("")
        out.extend(_split_summary_lines(d))
        out.extend(_ok_failed_lines(d))
    add("")
    add("Status code distribution:")
    for code, n in d["status_codes"].items():
        add(f"  [{code}]\t{n} responses")
    if d["error_messages"]:
        add("")
        add("Error distribution:")
        for message, n in d["error_messages"].items():
            add(f"  [{n}]\t{message}")
        refused = refused_line(d)
        if refused is not None:
            add(f"  ({refused})")
    for title, key in (("cluster", "by_cluster"), ("pod", "by_pod")):
        add("")
        add(f"By {title}:")
        add(_table(d[key], title, _pct_keys(lat), d))
    if d["thresholds"]:
        add("")
        add("Thresholds:")
        for t in d["thresholds"]:
            verdict = "ok" if t["passed"] else "FAILED"
            op = f"{t['op']} " if "op" in t else ""
            value = NA if t["value"] is None else f"{t['value']:g}"
            add(f"  {t['name']:<16} {value} (limit {op}{t['limit']:g})  {verdict}")
    if "capacity" in d:
        add("")
        line = capacity.summary_line(d["capacity"])
        add(line[:1].upper() + line[1:])
        for step in d["capacity"]["steps"]:
            stats = "  ".join(f"{k} {_fmt_ms(v)}" for k, v in step["latency_ms"].items() if v)
            verdict = "met" if step["met"] else "missed"
            add(
                f"  {step['rate']:>10,.1f}/s  goodput {step['goodput']:,.1f}/s  errors "
                f"{step['error_rate']:.2%}  {stats}  {verdict}"
            )
    if "split" in d:
        add("")
        out.extend(_split_summary(d["split"]))
    out.extend(_traces_summary(d.get("traces")))
    for failure in report.failures:
        add(f"FAILED: {failure}")
    return "\n".join(out) + "\n"


def _window(d: dict[str, Any]) -> list[str]:
    """A merged report's inputs, and a --start-at run's start (and lag)."""
    lines = []
    merged = d.get("merged_from", 1)
    if merged > 1:
        lines.append(f"  Merged:\t{merged} runs, {d['started_at']} to {d['ended_at']}")
        if "starts_apart_s" in d:
            lines.append(f"  Starts:\t{d['starts_apart_s']:.3f} s apart (first run to last)")
    lag = d.get("start_lag_s")
    if lag is None:
        return lines
    late = f"{max(lag, 0.0):.3f} s late"
    if merged > 1 and d["options"].get("start_at") is None:
        how = "the runs had different --start-at times; +30s counts from each run's launch"
    elif merged > 1:
        how = f"--start-at; the latest run {late}"
    else:
        how = f"--start-at; {late}"
    lines.append(f"  Started:\t{d['started_at']} ({how})")
    return lines


def _table(rows: dict[str, dict[str, Any]], title: str, pcts: list[str], d: dict[str, Any]) -> str:
    shown = [p for p in ("p50", "p99") if p in pcts] or pcts[:2]
    split = [(part, p) for part in SPLIT_PARTS for p in shown]
    header = [title, "count", "share", *shown, *(f"{part} {p}" for part, p in split), "errors"]
    lines = [header]
    for name, row in rows.items():
        lines.append(
            [
                backend_name(name, d),
                str(row["count"]),
                f"{row['share']:.1%}",
                *(f"{row['latency_ms'][p]:.2f} ms" for p in shown),
                *(_fmt_part(_part_ms(row, part, p)) for part, p in split),
                str(row["errors"]),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        text.append("  " + "  ".join(cells))
    return "\n".join(text)


def _split_summary(section: dict[str, Any]) -> list[str]:
    """The split gate's table: expected and observed share, and the interval."""
    title = "Cluster" if section["kind"] == "cluster" else "Split"
    lines = [
        f"{title} ({section['decision']}; {section['calls']} successful calls, "
        f"{section['calls_needed']} needed; intervals at {section['interval_confidence']:.4g}, "
        f"{section['comparisons']} comparison(s)):"
    ]
    rows = [["cluster", "expected", "observed", "count", "interval", "p-value", ""]]
    for row in section["clusters"]:
        rows.append(
            [
                row["name"],
                f"{row['expected_share']:.1%}",
                f"{row['share']:.1%}",
                str(row["count"]),
                f"{row['low']:.1%}-{row['high']:.1%}",
                f"{row['p_value']:.3g}",
                "ok" if row["within"] else "OFF",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        rest = (c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))
        cells = [r[0].ljust(widths[0]), *rest]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


SPLIT_CSV_FIELDS = ("expected_share", "share_low", "share_high")
CSV_FIELDS = ("kind", "name", "count", "share", "errors", "min_ms", "mean_ms", "max_ms")


def to_csv(report: Report) -> str:
    """One row for the whole run, then one per cluster and per pod, then status codes.
    Columns: kind,name,count,share,errors,min_ms,mean_ms,max_ms,<percentiles>_ms, then
    timed and the same latency columns prefixed server_ and outside_ (empty: n/a, no
    reply carried a server-timing)."""
    d = report.data
    pcts = _pct_keys(d["latency_ms"])
    stats = ["min", "mean", "max", *pcts]
    split_fields = [f"{part}_{s}_ms" for part in SPLIT_PARTS for s in stats]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    gate = d.get("split")
    writer.writerow(
        [
            *CSV_FIELDS,
            *(f"{p}_ms" for p in pcts),
            "timed",
            *split_fields,
            *(SPLIT_CSV_FIELDS if gate else ()),
        ]
    )

    def row(kind: str, name: str, count: int, share: float, errors: int, r: dict) -> None:
        lat = r.get("latency_ms", {})
        parts = [r.get(f"{part}_ms") or {} for part in SPLIT_PARTS]
        writer.writerow(
            [
                kind,
                name,
                count,
                share,
                errors,
                *(lat.get(s, "") for s in stats),
                r.get("timed", ""),
                *(part.get(s, "") for part in parts for s in stats),
            ]
        )

    row("total", d["target"], d["count"], 1.0 if d["count"] else 0.0, d["errors"], d)
    for kind, key in (("cluster", "by_cluster"), ("pod", "by_pod")):
        for name, r in d[key].items():
            row(kind, name, r["count"], r["share"], r["errors"], r)
    for code, n in d["status_codes"].items():
        share = round(n / d["count"], 6) if d["count"] else 0.0
        row("status", code, n, share, 0 if code == "OK" else n, {})
    if gate:
        _split_csv(writer, gate, len(CSV_FIELDS) - 4 + len(pcts) + 1 + len(split_fields))
    return buf.getvalue()


def _split_csv(writer: Any, section: dict[str, Any], blanks: int) -> None:
    """kind ``split`` (or ``cluster``) rows: successful calls and observed share per
    cluster, the errors and latency columns empty, then expected share and interval."""
    for r in section["clusters"]:
        writer.writerow(
            [
                section["kind"],
                r["name"],
                r["count"],
                r["share"],
                *([""] * blanks),
                r["expected_share"],
                r["low"],
                r["high"],
            ]
        )


def _svg_chart(report: Report, width: int = 720, height: int = 260) -> str:
    bars = report.data["histogram"]
    pad_left, pad_bottom, pad_top = 60, 40, 10
    inner_w, inner_h = width - pad_left - 10, height - pad_bottom - pad_top
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="latency histogram">',
        f'<line x1="{pad_left}" y1="{pad_top + inner_h}" x2="{width - 10}" '
        f'y2="{pad_top + inner_h}" stroke="#333"/>',
    ]
    if bars:
        top = max(b["count"] for b in bars) or 1
        slot = inner_w / len(bars)
        for i, b in enumerate(bars):
            h = b["count"] / top * inner_h
            x = pad_left + i * slot
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{pad_top + inner_h - h:.1f}" width="{slot - 2:.1f}" '
                f'height="{h:.1f}" fill="#3b7dd8"><title>{b["from_ms"]} to {b["to_ms"]} ms: '
                f"{b['count']}</title></rect>"
            )
            if i % max(1, len(bars) // 5) == 0:
                parts.append(
                    f'<text x="{x:.1f}" y="{height - 20}" font-size="11">{b["from_ms"]:g}</text>'
                )
        parts.append(f'<text x="4" y="{pad_top + 10}" font-size="11">{top}</text>')
        parts.append(
            f'<text x="{width / 2:.0f}" y="{height - 4}" font-size="11">latency, ms</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


TRACE_COLUMNS = ("trace id", "latency ms", "code", "cluster", "pod", "server ms", "outside ms")


def _trace_cells(call: dict[str, Any]) -> tuple[str, ...]:
    """A sampled call's row (greeter.load.sampled): trace id, latency, code, where, split."""
    return (
        call["trace_id"],
        f"{call['latency_ms']:.3f}",
        call["code"],
        call["cluster"],
        call["pod"],
        _fmt_part(call["server_ms"]),
        _fmt_part(call["outside_ms"]),
    )


def _traces_summary(section: dict[str, Any] | None) -> list[str]:
    """--trace-sample: the slowest sampled calls, by trace id."""
    if not section:
        return []
    lines = ["", f"Slowest traced calls (of {section['calls']} sampled):"]
    lines.append("  " + "\t".join(TRACE_COLUMNS))
    lines.extend("  " + "\t".join(_trace_cells(call)) for call in section["slowest"])
    return lines


def _traces_html(section: dict[str, Any] | None) -> str:
    if not section:
        return ""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in TRACE_COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in _trace_cells(call)) + "</tr>"
        for call in section["slowest"]
    )
    return (
        f"<h2>Slowest traced calls</h2><p>{plural(section['calls'], 'call')} sampled "
        f"(--trace-sample); look these up in the tracing UI by trace id.</p>"
        f"<table><tr>{head}</tr>{rows}</table>"
    )


def to_html(
    report: Report,
    *,
    heading: str = "",
    preface: str = "",
    markers: Sequence[tuple[float, str]] = (),
    by_pod: bool = False,
    unnamed: str = timeline_chart.NO_IDENTITY,
) -> str:
    """A self-contained page: no scripts, no external styles or fonts.

    For a run that is part of something larger (``greeter rehearse --scenario``): ``heading``
    replaces the title, ``preface`` (HTML) comes before the timeline, ``markers`` (seconds
    since the run's start, label) are drawn on the timeline, ``by_pod`` adds a second
    timeline stacked by pod, and ``unnamed`` is the timelines' name for the calls no backend
    named."""
    d = report.data
    esc = html.escape
    pcts = _pct_keys(d["latency_ms"])

    split = [(part, p) for part in SPLIT_PARTS for p in ("p50", "p99") if p in pcts]

    def table(rows: dict[str, dict[str, Any]], title: str) -> str:
        names = (title, "count", "share", *pcts, *(f"{a} {p}" for a, p in split), "errors")
        head = "".join(f"<th>{esc(h)}</th>" for h in names)
        body = "".join(
            "<tr><td>{}</td><td>{}</td><td>{:.1%}</td>{}{}<td>{}</td></tr>".format(
                esc(backend_name(name, d)),
                r["count"],
                r["share"],
                "".join(f"<td>{r['latency_ms'][p]:.2f}</td>" for p in pcts),
                "".join(f"<td>{_fmt_part(_part_ms(r, a, p))}</td>" for a, p in split),
                r["errors"],
            )
            for name, r in rows.items()
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    stats = "".join(
        f"<tr><th>{esc(k)}</th><td>{v:.3f} ms</td></tr>" for k, v in d["latency_ms"].items()
    )
    codes = "".join(f"<tr><td>{esc(c)}</td><td>{n}</td></tr>" for c, n in d["status_codes"].items())
    goodput = f" ({d['goodput']:.1f} OK/s)" if "goodput" in d else ""
    apart = ""
    if d.get("failed_latency_ms") is not None:
        parts = {"OK": d.get("ok_latency_ms"), "failed": d["failed_latency_ms"]}
        apart = (
            "<table><tr><th>calls</th><th>p50</th><th>p99</th></tr>"
            + "".join(
                f"<tr><th>{name}</th>"
                + (
                    "<td colspan=2>none</td>"
                    if stats is None
                    else f"<td>{stats['p50']:.3f} ms</td><td>{stats['p99']:.3f} ms</td>"
                )
                + "</tr>"
                for name, stats in parts.items()
            )
            + "</table>"
        )
    title = heading or f"greeter load: {d['target']}"
    interrupted = " &mdash; interrupted" if d["interrupted"] else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}
pre{{white-space:pre-wrap;overflow-wrap:anywhere}}</style></head><body>
<h1>{esc(heading) if heading else f"{esc(title)} ({esc(d['call'])})"}</h1>
<p>{plural(d["count"], "call")} in {d["duration_s"]:.2f} s, {d["rps"]:.1f}/s{goodput};
{plural(d["errors"], "error")} ({d["error_rate"]:.2%}){interrupted}.
Started {esc(d["started_at"])}{_merged_html(d)}.</p>
{preface}{_timeline_section(report, markers, by_pod, unnamed)}
{_capacity_html(d.get("capacity"))}<h2>Latency</h2>{_svg_chart(report)}
<p class="slow-calls">Slow calls: {esc(slow_line(d))}.</p>
<table>{stats}</table>{apart}
<h2>Where the latency goes</h2>
{_latency_split_html(d)}
<h2>Status codes</h2><table>{codes}</table>
<h2>By cluster</h2>{table(d["by_cluster"], "cluster")}
<h2>By pod</h2>{table(d["by_pod"], "pod")}
{_split_html(d.get("split"))}{_traces_html(d.get("traces"))}</body></html>
"""


SERVER_COLOR = "#2ca58d"
OUTSIDE_COLOR = "#e07b00"


def _latency_split_html(d: dict[str, Any], width: int = 720) -> str:
    """Each cluster's (and all calls') mean latency as one bar, split into the server's
    time (its server-timing) and the rest (network, gateways, client): the means add up,
    so the bar is the mean latency and the orange part is what the gateway path cost.
    Then the table of total, server and outside percentiles."""
    esc = html.escape
    rows = [("all calls", d), *d["by_cluster"].items()]
    timed = [r for _, r in rows if r.get("timed")]
    if not timed:
        return (
            f"<p>{NA}: no reply carried a server-timing trailer (the server does not send one).</p>"
        )
    top = max(r["server_ms"]["mean"] + r["outside_ms"]["mean"] for r in timed) or 1.0
    label_w, bar_w, row_h = 140, width - 140 - 10, 34
    height = row_h * len(rows) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="where the latency goes" '
        f'class="latency-split" font-family="sans-serif" font-size="12">',
        f'<rect x="{label_w}" y="4" width="12" height="10" fill="{SERVER_COLOR}"/>'
        f'<text x="{label_w + 16}" y="13">server (its server-timing)</text>'
        f'<rect x="{label_w + 200}" y="4" width="12" height="10" fill="{OUTSIDE_COLOR}"/>'
        f'<text x="{label_w + 216}" y="13">outside: network, gateways, client (mean ms)</text>',
    ]
    for i, (name, r) in enumerate(rows):
        y = 24 + i * row_h
        out.append(f'<text x="0" y="{y + 15}">{esc(name)}</text>')
        if not r.get("timed"):
            out.append(f'<text x="{label_w}" y="{y + 15}">{NA} (no server-timing)</text>')
            continue
        server, outside = r["server_ms"]["mean"], r["outside_ms"]["mean"]
        total = server + outside
        x = float(label_w)
        for part, value, color in (
            ("server", server, SERVER_COLOR),
            ("outside", outside, OUTSIDE_COLOR),
        ):
            w = value / top * bar_w
            share = value / total if total else 0.0
            out.append(
                f'<rect class="part" data-row="{esc(name)}" data-part="{part}" '
                f'data-share="{share:.4f}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="20" '
                f'fill="{color}"><title>{esc(name)}: {part} {value:.3f} ms of '
                f"{total:.3f} ms ({share:.0%})</title></rect>"
            )
            x += w
        share = outside / total if total else 0.0
        out.append(
            f'<text x="{min(x + 6, width - 170):.1f}" y="{y + 15}">{total:.2f} ms, '
            f"{share:.0%} outside</text>"
        )
    out.append("</svg>")
    stats = [k for k in ("mean", "p50", "p90", "p99", "p99.9") if k in d["latency_ms"]]
    head = "".join(f"<th>{esc(h)}</th>" for h in ("", *stats))
    body = "".join(
        f"<tr><th>{part}</th>"
        + "".join(f"<td>{_fmt_part(_part_ms(d, part, k))}</td>" for k in stats)
        + "</tr>"
        for part in ("total", *SPLIT_PARTS)
    )
    note = (
        f"<p>{d.get('timed', 0)} of {d['count']} calls told their server time. Outside = "
        "latency minus the server's own time, call by call: the network, gateways, the "
        "client, and queueing inside the server before its handler ran.</p>"
    )
    return "".join(out) + f"\n{note}<table><tr>{head}</tr>{body}</table>"


def _capacity_html(section: dict[str, Any] | None) -> str:
    """The step schedule's verdict, and each step's."""
    if section is None:
        return ""
    rows = "".join(
        f"<tr><td>{s['rate']:,.1f}</td><td>{s['goodput']:,.1f}</td><td>{s['error_rate']:.2%}</td>"
        + "".join(
            f"<td>{'-' if v is None else f'{v:.3f} ms'}</td>" for v in s["latency_ms"].values()
        )
        + f"<td>{'met' if s['met'] else 'missed'}</td></tr>"
        for s in section["steps"]
    )
    stats = section["steps"][0]["latency_ms"] if section["steps"] else {}
    head = "".join(f"<th>{html.escape(k)}</th>" for k in stats)
    return (
        f"<h2>Capacity</h2><p>{html.escape(capacity.summary_line(section))}.</p>"
        f"<table><tr><th>calls/s asked</th><th>goodput/s</th><th>errors</th>{head}"
        f"<th>gate</th></tr>{rows}</table>"
    )


def _merged_html(d: dict[str, Any]) -> str:
    merged = d.get("merged_from", 1)
    return f"; merged from {merged} runs" if merged > 1 else ""


def _split_html(section: dict[str, Any] | None) -> str:
    """The split gate's verdict and table, when one ran."""
    if not section:
        return ""
    esc = html.escape
    head = "".join(
        f"<th>{h}</th>" for h in ("cluster", "expected", "observed", "count", "interval", "p-value")
    )
    body = "".join(
        f"<tr><td>{esc(r['name'])}</td><td>{r['expected_share']:.1%}</td>"
        f"<td>{r['share']:.1%}</td><td>{r['count']}</td>"
        f"<td>{r['low']:.1%} &ndash; {r['high']:.1%}</td><td>{r['p_value']:.3g}</td></tr>"
        for r in section["clusters"]
    )
    return (
        f"<h2>{'Cluster' if section['kind'] == 'cluster' else 'Split'}: "
        f"{esc(section['decision'])}</h2>\n<p>{section['calls']} successful calls "
        f"({section['calls_needed']} needed to see a {section['detect']:.0%} deviation with "
        f"power {section['power']:.0%}); intervals at {section['interval_confidence']:.4g}; "
        f"{esc(section['method'])}.</p>\n<table><tr>{head}</tr>{body}</table>\n"
    )


def _timeline_section(
    report: Report, markers: Sequence[tuple[float, str]], by_pod: bool, unnamed: str
) -> str:
    chart = timeline_chart.svg(report.data, markers, unnamed=unnamed)
    section = f"<h2>Timeline</h2>\n{chart}"
    if by_pod:
        pods = timeline_chart.svg(report.data, markers, by="pod", latency=False, unnamed=unnamed)
        section += f"\n<h2>By pod over time</h2>\n{pods}"
    return section


def timeline_csv(report: Report) -> str:
    """The timeline, one row per bucket (``--timeline-csv``)."""
    return timeline_chart.to_csv(report.data)
