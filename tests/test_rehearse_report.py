"""A scenario's report as people read it, built from made-up probe records (no processes, no
gateway): the terminal lines and the HTML page show no Python (no ``['``, ``{'``, ``=[``)."""

from __future__ import annotations

import re
from pathlib import Path

from browser_support import chromium

from greeter.client import Target
from greeter.rehearse import findings, report, scenarios
from greeter.rehearse.traffic import Outcome, Traffic, TrafficReport, load_report, load_summary

REPR = re.compile(r"\['|\{'|=\[|\[\]|\bNone\b")


def outage(details: str = "no healthy upstream") -> scenarios.ScenarioResult:
    """An outage of cluster-b at 2.0-4.5 s under 100 calls a second, 3 calls failed with
    ``details`` (Envoy's words by default: the gateway answered them itself)."""
    traffic = Traffic(Target("127.0.0.1:1"), rps=100.0)
    outcomes = []
    for i in range(600):
        sent = i / 100
        b_up = not 2.0 <= sent < 4.5
        cluster = "cluster-b" if i % 2 and b_up else "cluster-a"
        pod = f"{cluster}-{i // 2 % 2}"
        outcomes.append(Outcome(sent + 0.004, "OK", sent=sent, cluster=cluster, pod=pod))
    outcomes += [Outcome(2.012, "UNAVAILABLE", sent=1.995, details=details) for _ in range(3)]
    traffic.report = TrafficReport(sorted(outcomes, key=lambda o: o.at), duration=6.0)
    began = 0.8
    events = [
        {"at_s": began, "event": "traffic running", "rps": 100.0},
        {"at_s": began + 2.0, "event": "sigkill", "cluster": "cluster-b", "pods": ["b0", "b1"]},
        {"at_s": began + 2.01, "event": "killed", "cluster": "cluster-b", "survivors": []},
        {"at_s": began + 3.5, "event": "reviving", "cluster": "cluster-b"},
        {"at_s": began + 4.2, "event": "revived", "cluster": "cluster-b"},
    ]
    facts = findings.OutageFacts(
        killed=findings.killed(traffic.report, 2.0, 2.01, []),
        cluster="cluster-b",
        returned=findings.returned(traffic.report, ["cluster-b"], 3.5, 4.2),
    )
    summary = traffic.report.summary()
    return scenarios.ScenarioResult("outage", summary, events, load_report(traffic), began, facts)


def test_no_python_reprs_on_the_page_or_in_the_terminal() -> None:
    result = outage()
    page = report.to_html(result, 10)
    assert not REPR.search(page), REPR.search(page)
    assert ">cluster cluster-b; pods b0, b1</td>" in page
    assert ">cluster cluster-b; survivors none</td>" in page
    text = "\n".join(report.report_lines(result.summary()))
    assert not REPR.search(text), text


def test_the_calls_no_backend_took_have_one_label_in_terminal_tables_and_legend() -> None:
    """Envoy answered them itself: "no backend (gateway 503)" in the terminal's by-cluster
    and by-pod rows, the page's tables, both timelines' legends and tooltips."""
    result = outage()
    label = report.NO_BACKEND_ENVOY
    text = "\n".join(report.report_lines(result.summary()))
    assert text.count(f"{label}  ") == 2, text  # by cluster, by pod
    page = report.to_html(result, 10)
    assert page.count(f"<td>{label}</td>") == 2  # the tables by cluster and by pod
    legends = re.findall(r'<g class="legend">.*?<text [^>]*>([^<]*)</text></g>', page)
    assert legends.count(f"{label} (3)") == 2, legends  # both timelines
    assert page.count(f"<title>{label}: 3 calls</title>") == 2
    assert "(none)" not in re.sub(r'data-(cluster|pod)="\(none\)"', "", page)


ENVOY_RESET = (
    "upstream connect error or disconnect/reset before headers. reset reason: connection "
    "failure, transport failure reason: delayed connect error: 111"
)


def test_nothing_overflows_a_1200_px_window(tmp_path: Path) -> None:
    """The page in headless Chromium 1200 px wide: no element reaches past the window's right
    edge (the text report's long lines, Envoy's long reset message among them, wrap)."""
    page = tmp_path / "outage.html"
    page.write_text(report.to_html(outage(ENVOY_RESET), 10))
    with chromium(tmp_path) as driver:
        driver.set_window_size(1200, 900)
        driver.get(page.as_uri())
        width, past = driver.execute_script(
            "const w = document.documentElement.clientWidth;"
            "return [w, [...document.querySelectorAll('body *')]"
            "  .filter(e => e.getBoundingClientRect().right > w + 0.5"
            "    || e.scrollWidth > e.clientWidth + 1 && e.tagName === 'PRE')"
            "  .map(e => e.tagName + ' ' + (e.textContent || '').slice(0, 60))];"
        )
    assert 1100 <= width <= 1200
    assert past == [], past


def drain() -> scenarios.ScenarioResult:
    """A rolling drain of cluster-a-0 under 100 calls a second for 8 s: SIGTERM at 1.9 s,
    its calls (which go to cluster-a-1 meanwhile) stop by 2.0 s and come again from 4.0 s;
    the events as the scenario records them, greeter load's start and Ctrl-C included."""
    traffic = Traffic(Target("127.0.0.1:1"), rps=100.0)
    outcomes = []
    for i in range(800):
        sent = i / 100
        cluster = "cluster-a" if i % 2 else "cluster-b"
        pod = f"{cluster}-{i // 2 % 2}"
        if pod == "cluster-a-0" and 2.0 <= sent < 4.0:
            pod = "cluster-a-1"
        outcomes.append(Outcome(sent + 0.004, "OK", sent=sent, cluster=cluster, pod=pod))
    traffic.report = TrafficReport(outcomes, duration=8.0)
    load = load_report(traffic)
    began = 0.5
    events = [
        {"at_s": 0.2, "event": "greeter load started", "rps": 100.0, "duration_s": 232.0},
        {"at_s": began, "event": "greeter load sending"},
        {"at_s": began + 1.9, "event": "sigterm", "pod": "cluster-a-0"},
        {"at_s": began + 3.6, "event": "serving again", "pod": "cluster-a-0", "exit_code": 0},
        {"at_s": began + 7.0, "event": "all restarted"},
        {"at_s": began + 8.0, "event": "greeter load interrupted"},
        {"at_s": began + 8.1, "event": "greeter load done"},
    ]
    facts = findings.DrainFacts(load_sending_at_s=0.0, covered_all_restarts=True)
    return scenarios.ScenarioResult("drain", load_summary(load), events, load, began, facts)


def test_the_drain_says_when_each_pod_stopped_getting_calls() -> None:
    result = drain()
    lines = report.report_lines(result.summary())
    text = "\n".join(lines)
    assert lines[0] == "PASSED: 0 failed of 800 calls (allowed 0)", text
    assert "  drained        when each pod's calls stopped and came again (to the 0.5 s" in text
    assert "cluster-a-0  SIGTERM 1.900 s  calls until 2.0 s  again from 4.0 s" in text, text
    page = report.to_html(result, 0)
    assert "cluster-a-0  SIGTERM 1.900 s  calls until 2.0 s  again from 4.0 s" in page
    for shown in (text, page):
        assert "greeter load started" not in shown
        assert "greeter load interrupted" not in shown
        assert "greeter load sending" in shown
        assert not REPR.search(shown), REPR.search(shown)


def test_every_bound_is_explained_where_it_appears() -> None:
    """The verdict's "(allowed N)" has an "allowed" row saying why; the 1 s window says what
    it bounds, on the page's verdict too; a call sent before the SIGKILL reads "before"."""
    result = outage()
    text = "\n".join(report.report_lines(result.summary()))
    page = report.to_html(result, 10)
    for shown in (text, " ".join(page.split())):
        assert "(allowed 10)" in shown
        assert "allowed 10 failed calls: the calls already sent to a killed backend" in " ".join(
            shown.split()
        )
        assert "(bound 1 s: a call sent any later must reach a live backend)" in shown
        assert "-0.0" not in shown
    assert "the last sent 0.005 s before the SIGKILL at 2.000 s" in text
    assert "the last failed call was sent 0.005 s before the SIGKILL" in page
    changed = "\n".join(report.report_lines(result.summary(), allowed=2))
    assert "  allowed        2 failed calls: as --max-failed set" in changed
