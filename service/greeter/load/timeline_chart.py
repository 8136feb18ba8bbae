"""The timeline as pictures and rows: an inline SVG chart for the HTML report (no scripts,
no external resources) and a CSV with one row per bucket.

The chart has two panels over one time axis: calls per second stacked by cluster (each
bucket's calls over its length), with every bucket that had errors shaded red and marked
at the top; under it, each bucket's p50 and p99 latency as step lines (and, when the
replies carried a server-timing, the p50 and p99 of the latency outside the server: the
gateway's part). Optionally it is
stacked by pod instead, without the latency panel, and marks events (what was done when,
e.g. a scenario's kills and restarts) as labelled vertical lines through both panels.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

PALETTE = ("#3b7dd8", "#2ca58d", "#f2a541", "#8e6bbf", "#5fa8d3", "#a0c15a", "#d17a9f", "#8c6d46")
NO_IDENTITY = "(none)"
NO_IDENTITY_COLOR = "#b0b0b0"
ERROR_COLOR = "#d62728"
P50_COLOR = "#1f3f7a"
P99_COLOR = "#e07b00"
OUTSIDE_COLOR = "#8e6bbf"  # latency outside the server (total minus its server-timing)
# The latency panel's lines: (series, the bucket's field, its stat, colour, dashes).
LINES = (
    ("p50", "latency_ms", "p50", P50_COLOR, ""),
    ("p99", "latency_ms", "p99", P99_COLOR, "5 3"),
    ("outside p50", "outside_ms", "p50", OUTSIDE_COLOR, "1 3"),
    ("outside p99", "outside_ms", "p99", OUTSIDE_COLOR, "6 2 1 2"),
)
WIDTH = 960
LEFT, RIGHT = 70, 20
RATE_H, LAT_H, GAP = 240, 140, 34
FONT = 12
MARKER_COLOR = "#333"
MARKER_MIN_GAP = 14  # px: markers closer than this share one line and one label


def _nice_step(span: float, ticks: int) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving at most about ``ticks`` ticks."""
    if not span > 0:
        return 1.0
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def _ticks(top: float, ticks: int) -> list[float]:
    step = _nice_step(top, ticks)
    return [i * step for i in range(int(top / step + 1e-6) + 1)]


def _label(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _clusters(buckets: list[dict[str, Any]], key: str = "by_cluster") -> list[str]:
    """Clusters by calls, most first (drawn at the bottom), no identity last; pods (``key``
    by_pod) by name, so each cluster's are together."""
    totals: dict[str, int] = {}
    for b in buckets:
        for name, n in b[key].items():
            totals[name] = totals.get(name, 0) + n
    most = key == "by_cluster"
    order = sorted(totals, key=lambda name: (name == NO_IDENTITY, -totals[name] * most, name))
    return order


def _colors(clusters: list[str]) -> dict[str, str]:
    colors = {}
    named = [c for c in clusters if c != NO_IDENTITY]
    for i, name in enumerate(named):
        colors[name] = PALETTE[i % len(PALETTE)]
    if NO_IDENTITY in clusters:
        colors[NO_IDENTITY] = NO_IDENTITY_COLOR
    return colors


def _length(b: dict[str, Any], interval: float) -> float:
    return float(b["duration_s"]) if b["duration_s"] > 0 else interval


def _markers(
    markers: Sequence[tuple[float, str]], end: float, px: Callable[[float], float]
) -> list[tuple[float, float, str]]:
    """The markers inside ``[0, end]`` as ``(t, x, label)``, in time order; those closer
    than MARKER_MIN_GAP pixels to the previous one are folded into it (labels joined)."""
    shown: list[tuple[float, float, str]] = []
    for t, label in sorted(markers):
        if not 0 <= t <= end:
            continue
        x = px(t)
        if shown and x - shown[-1][1] < MARKER_MIN_GAP:
            first_t, first_x, first_label = shown[-1]
            shown[-1] = (first_t, first_x, f"{first_label}; {label}")
        else:
            shown.append((t, x, label))
    return shown


def svg(
    report: dict[str, Any],
    markers: Sequence[tuple[float, str]] = (),
    by: str = "cluster",
    latency: bool = True,
    unnamed: str = NO_IDENTITY,
) -> str:
    """The timeline chart of a report (its JSON data): calls per second stacked ``by``
    cluster or pod, the latency panel under it unless ``latency`` is false, and each of
    ``markers`` (seconds since the run's start, label) as a labelled vertical line.
    ``unnamed``: what the legend and tooltips call the calls no backend named (a scenario's
    page says what the gateway answered, e.g. "no backend (gateway 503)")."""
    buckets: list[dict[str, Any]] = report["timeline"]
    interval = float(report["options"].get("timeline_interval_s") or 1.0)
    esc = html.escape
    key = f"by_{by}"
    lines = [
        line
        for line in LINES
        if latency and any((b.get(line[1]) or {}).get(line[2]) is not None for b in buckets)
    ]
    if latency and not lines:  # no call finished: the panel still names its lines
        lines = list(LINES[:2])
    clusters = _clusters(buckets, key)
    colors = _colors(clusters)
    totals = {c: sum(b[key].get(c, 0) for b in buckets) for c in clusters}

    # The legend, wrapped to the width; the panels start under it.
    def shown(c: str) -> str:
        return unnamed if c == NO_IDENTITY else c

    items = [(f"{shown(c)} ({totals[c]:,})", "cluster:" + c) for c in clusters]
    items += [("errors", "errors")]
    items += [(name, name) for name, *_ in lines]
    legend: list[str] = []
    x, y = LEFT, 18
    for text, kind in items:
        width = 22 + len(text) * 7 + 16
        if x + width > WIDTH - RIGHT and x > LEFT:
            x, y = LEFT, y + 18
        if kind.startswith("cluster:"):
            mark = f'<rect x="{x}" y="{y - 10}" width="14" height="11" fill="{colors[kind[8:]]}"/>'
        elif kind == "errors":
            mark = (
                f'<rect x="{x}" y="{y - 10}" width="14" height="11" fill="{ERROR_COLOR}" '
                f'fill-opacity="0.18" stroke="{ERROR_COLOR}"/>'
            )
        else:
            _, _, _, color, dashes = next(line for line in lines if line[0] == kind)
            dash = f' stroke-dasharray="{dashes}"' if dashes else ""
            mark = (
                f'<line x1="{x}" y1="{y - 4}" x2="{x + 14}" y2="{y - 4}" stroke="{color}" '
                f'stroke-width="2"{dash}/>'
            )
        legend.append(f'<g class="legend">{mark}<text x="{x + 20}" y="{y}">{esc(text)}</text></g>')
        x += width
    rate_top = y + 22
    rate_bottom = rate_top + RATE_H
    lat_top = rate_bottom + GAP
    lat_bottom = lat_top + LAT_H
    axis_bottom = lat_bottom if latency else rate_bottom  # the time axis is under this panel
    height = axis_bottom + 44
    plot_w = WIDTH - LEFT - RIGHT

    end = max((b["t"] + _length(b, interval) for b in buckets), default=interval)
    end = max(end, 1e-6)

    def px(t: float) -> float:
        return LEFT + t / end * plot_w

    rates = [{c: b[key].get(c, 0) / _length(b, interval) for c in clusters} for b in buckets]
    top_rate = max((sum(r.values()) for r in rates), default=0.0) or 1.0
    rate_ticks = _ticks(top_rate * 1.05, 5)
    rate_max = max(rate_ticks[-1], top_rate) or 1.0
    if rate_ticks[-1] < top_rate:
        rate_ticks.append(rate_ticks[-1] + _nice_step(top_rate * 1.05, 5))
        rate_max = rate_ticks[-1]

    def ry(value: float) -> float:
        return rate_bottom - value / rate_max * RATE_H

    lat_values = [v for b in buckets for _, f, st, *_ in lines if (v := (b.get(f) or {}).get(st))]
    top_lat = max(lat_values, default=0.0) or 1.0
    lat_ticks = _ticks(top_lat * 1.05, 4)
    if lat_ticks[-1] < top_lat:
        lat_ticks.append(lat_ticks[-1] + _nice_step(top_lat * 1.05, 4))
    lat_max = lat_ticks[-1] or 1.0

    def ly(value: float) -> float:
        return lat_bottom - value / lat_max * LAT_H

    label = "timeline" if by == "cluster" else f"timeline by {by}"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{label}" class="timeline" '
        f'font-family="sans-serif" font-size="{FONT}">',
        *legend,
    ]
    # Grid and y axes.
    for value in rate_ticks:
        yy = ry(value)
        out.append(
            f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{WIDTH - RIGHT}" y2="{yy:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{_label(value)}</text>'
        )
    for value in lat_ticks if latency else []:
        yy = ly(value)
        out.append(
            f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{WIDTH - RIGHT}" y2="{yy:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{_label(value)}</text>'
        )
    mid_rate = (rate_top + rate_bottom) / 2
    mid_lat = (lat_top + lat_bottom) / 2
    out.append(
        f'<text x="14" y="{mid_rate:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid_rate:.0f})">calls per second</text>'
    )
    if latency:
        out.append(
            f'<text x="14" y="{mid_lat:.0f}" text-anchor="middle" '
            f'transform="rotate(-90 14 {mid_lat:.0f})">latency, ms</text>'
        )
    # Errors: a red band over each bucket that had any (the deeper, the larger the share
    # of errors), a marker above it.
    for b in buckets:
        if not b["errors"]:
            continue
        x0, x1 = px(b["t"]), px(b["t"] + _length(b, interval))
        w = max(x1 - x0, 2.0)
        codes = ", ".join(f"{c} {n}" for c, n in b["status_codes"].items() if c != "OK")
        title = f"{b['t']:g}s: {b['errors']} errors of {b['count']} ({codes})"
        cx = x0 + (x1 - x0) / 2
        shade = 0.06 + 0.3 * min(1.0, 4 * b["errors"] / max(b["count"], 1))
        out.append(
            f'<g class="errors"><title>{esc(title)}</title>'
            f'<rect x="{x0:.1f}" y="{rate_top}" width="{w:.1f}" height="{RATE_H}" '
            f'fill="{ERROR_COLOR}" fill-opacity="{shade:.2f}"/>'
            f'<path d="M{cx - 5:.1f},{rate_top - 9} L{cx + 5:.1f},{rate_top - 9} '
            f'L{cx:.1f},{rate_top - 1} Z" fill="{ERROR_COLOR}"/></g>'
        )
    # Calls per second, stacked by cluster: one step-shaped area per cluster.
    below = [0.0] * len(buckets)
    for c in clusters:
        upper: list[str] = []
        lower: list[str] = []
        for i, b in enumerate(buckets):
            x0, x1 = px(b["t"]), px(b["t"] + _length(b, interval))
            top = below[i] + rates[i][c]
            upper += [f"{x0:.1f},{ry(top):.1f}", f"{x1:.1f},{ry(top):.1f}"]
            lower += [f"{x0:.1f},{ry(below[i]):.1f}", f"{x1:.1f},{ry(below[i]):.1f}"]
            below[i] = top
        points = upper + lower[::-1]
        out.append(
            f'<path class="{by}" data-{by}="{esc(c)}" fill="{colors[c]}" '
            f'fill-opacity="0.85" d="M{" L".join(points)} Z">'
            f"<title>{esc(shown(c))}: {totals[c]:,} calls</title></path>"
        )
    # p50 and p99 (and outside the server) as step lines, broken where a bucket had no calls.
    for name, field, stat, color, dash in lines:
        segments: list[str] = []
        pen_up = True
        for b in buckets:
            point = (b.get(field) or {}).get(stat)
            if point is None:
                pen_up = True
                continue
            x0, x1 = px(b["t"]), px(b["t"] + _length(b, interval))
            yy = ly(point)
            segments.append(f"{'M' if pen_up else 'L'}{x0:.1f},{yy:.1f} L{x1:.1f},{yy:.1f}")
            pen_up = False
        if segments:
            dashes = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<path class="latency" data-series="{name}" fill="none" stroke="{color}" '
                f'stroke-width="2"{dashes} d="{" ".join(segments)}"><title>{name}</title></path>'
            )
    # Events: a dashed line through both panels, its label along it at the top.
    for at, xm, text in _markers(markers, end, px):
        out.append(
            f'<g class="marker" data-t="{at:g}"><title>{at:.3f}s: {esc(text)}</title>'
            f'<line x1="{xm:.1f}" y1="{rate_top}" x2="{xm:.1f}" y2="{axis_bottom}" '
            f'stroke="{MARKER_COLOR}" stroke-width="1.5" stroke-dasharray="4 3"/>'
            f'<text x="{xm - 4:.1f}" y="{rate_top + 4}" text-anchor="end" '
            f'transform="rotate(-90 {xm - 4:.1f} {rate_top + 4})" fill="{MARKER_COLOR}" '
            f'stroke="#fff" stroke-width="3" paint-order="stroke">{esc(text)}</text></g>'
        )
    # Axes and the time ticks, through both panels.
    panels = [(rate_top, rate_bottom)]
    if latency:
        panels.append((lat_top, lat_bottom))
    for top, bottom in panels:
        out.append(
            f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" '
            f'stroke="#333"/><line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" '
            f'stroke="#333"/>'
        )
    for value in _ticks(end, 10):
        xx = px(value)
        out.extend(
            f'<line x1="{xx:.1f}" y1="{bottom}" x2="{xx:.1f}" y2="{bottom + 5}" stroke="#333"/>'
            for _, bottom in panels
        )
        out.append(
            f'<text x="{xx:.1f}" y="{axis_bottom + 19}" text-anchor="middle">{value:g}s</text>'
        )
    out.append(
        f'<text x="{LEFT + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">'
        f"seconds since the start ({interval:g} s buckets)</text></svg>"
    )
    return "".join(out)


def _blank_if_none(latency: dict[str, Any] | None) -> list[Any]:
    """A bucket's p50 and p99 (``outside_ms``), empty where n/a."""
    latency = latency or {}
    return ["" if latency.get(p) is None else latency[p] for p in ("p50", "p99")]


def to_csv(report: dict[str, Any]) -> str:
    """One row per bucket: ``t,duration_s,count,errors,rps,p50_ms,p99_ms,outside_p50_ms,
    outside_p99_ms`` (outside: latency minus server-timing; empty when n/a), then a column
    per status code (``status:OK``...), per cluster (``cluster:NAME``) and per pod
    (``pod:NAME``) seen in the run, each holding that bucket's calls."""
    buckets: list[dict[str, Any]] = report["timeline"]

    def names(key: str) -> list[str]:
        found: dict[str, int] = {}
        for b in buckets:
            for name, n in b[key].items():
                found[name] = found.get(name, 0) + n
        return sorted(found, key=lambda name: (-found[name], name))

    codes, clusters, pods = names("status_codes"), names("by_cluster"), names("by_pod")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "t",
            "duration_s",
            "count",
            "errors",
            "rps",
            "p50_ms",
            "p99_ms",
            "outside_p50_ms",
            "outside_p99_ms",
            *(f"status:{c}" for c in codes),
            *(f"cluster:{c}" for c in clusters),
            *(f"pod:{p}" for p in pods),
        ]
    )
    for b in buckets:
        length = b["duration_s"]
        lat = b["latency_ms"]
        writer.writerow(
            [
                b["t"],
                length,
                b["count"],
                b["errors"],
                round(b["count"] / length, 3) if length > 0 else 0.0,
                "" if lat["p50"] is None else lat["p50"],
                "" if lat["p99"] is None else lat["p99"],
                *_blank_if_none(b.get("outside_ms")),
                *(b["status_codes"].get(c, 0) for c in codes),
                *(b["by_cluster"].get(c, 0) for c in clusters),
                *(b["by_pod"].get(p, 0) for p in pods),
            ]
        )
    return buf.getvalue()
