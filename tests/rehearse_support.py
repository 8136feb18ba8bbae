"""Helpers shared by the rehearsal's tests (nginx and Envoy): calls through a gateway as a
client makes them, and a scenario's HTML page read back."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc

from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter._proto.grpc.reflection.v1 import reflection_pb2 as v1_pb2
from greeter._proto.grpc.reflection.v1 import reflection_pb2_grpc as v1_grpc
from greeter.client import Target, identity_of, open_channel
from greeter.rehearse import findings, report, scenarios
from greeter.rehearse.traffic import TIMELINE_INTERVAL_S

GREETER = helloworld_pb2.DESCRIPTOR.services_by_name["Greeter"].full_name


async def list_services(target: Target) -> None:
    """What `grpcurl -insecure -authority grpc.example.com ADDR list` does, in v1alpha and v1."""
    async with open_channel(target) as channel:
        for stub, request in (
            (v1alpha_grpc.ServerReflectionStub(channel), v1alpha_pb2.ServerReflectionRequest),
            (v1_grpc.ServerReflectionStub(channel), v1_pb2.ServerReflectionRequest),
        ):
            names = set()
            async for reply in stub.ServerReflectionInfo(
                iter([request(list_services="")]), timeout=10
            ):
                names |= {s.name for s in reply.list_services_response.service}
            assert GREETER in names
            assert "grpc.health.v1.Health" in names


async def hello(target: Target, name: str = "rehearsal") -> dict[str, str]:
    async with open_channel(target) as channel:
        call = helloworld_pb2_grpc.GreeterStub(channel).SayHello(
            helloworld_pb2.HelloRequest(name=name), timeout=10, metadata=target.metadata or None
        )
        reply = await call
        assert reply.message == f"Hello, {name}!"
        return identity_of(await call.initial_metadata(), await call.trailing_metadata())


# -- the scenario's HTML page ------------------------------------------------------------------
VOID = {"meta", "br", "hr", "img", "input", "link"}


class ScenarioPage(HTMLParser):
    """What a scenario's page shows: the verdict, and per timeline chart (by its aria-label)
    the stacked series, the event markers (time, x, label) and the time axis's ticks (time,
    x). Checks that every element is closed, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.chart = ""  # the <svg> we are in
        self.verdict: dict[str, str | None] = {}
        self.series: dict[str, list[str]] = {}
        self.markers: dict[str, list[dict[str, Any]]] = {}
        self.ticks: dict[str, list[tuple[float, float]]] = {}
        self._marker: dict[str, Any] | None = None
        self._text: list[str] | None = None
        self._text_x = 0.0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag not in VOID:
            self.open.append(tag)
        if tag == "svg":
            self.chart = a.get("aria-label") or ""
            self.series[self.chart], self.markers[self.chart] = [], []
            self.ticks[self.chart] = []
        elif tag == "p" and a.get("class") == "verdict":
            self.verdict = a
        elif tag == "path" and a.get("class") in ("cluster", "pod") and a.get("d"):
            self.series[self.chart].append(a.get(f"data-{a['class']}") or "")
        elif tag == "g" and a.get("class") == "marker":
            self._marker = {"t": float(a["data-t"] or "nan")}
            self.markers[self.chart].append(self._marker)
        elif tag == "line" and self._marker is not None:
            self._marker["x"] = float(a["x1"] or "nan")
        elif tag == "text":
            self._text, self._text_x = [], float(a.get("x") or "nan")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        assert self.open[-1:] == [tag], f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()
        if tag == "text" and self._text is not None:
            text, self._text = "".join(self._text), None
            if self._marker is not None:
                self._marker["label"] = text
            elif re.fullmatch(r"[0-9.]+s", text):  # a tick of the time axis
                self.ticks[self.chart].append((float(text[:-1]), self._text_x))
        elif tag == "g":
            self._marker = None
        elif tag == "svg":
            self.chart = ""


def read_page(page: str) -> ScenarioPage:
    """Parse a scenario's page (every element closed, every <svg> well-formed XML)."""
    parsed = ScenarioPage()
    parsed.feed(page)
    parsed.close()
    assert parsed.open == [], parsed.open
    svgs = re.findall(r"<svg .*?</svg>", page, flags=re.S)
    # The two timelines and the latency histogram, and "where the latency goes" when the
    # replies carried the servers' server-timing (a probe's replayed records do not).
    split = 'class="latency-split"' in page
    assert len(svgs) == 3 + split
    for svg in svgs:
        ET.fromstring(svg)
    assert "<script" not in page
    return parsed


def check_page(result: scenarios.ScenarioResult, allowed: int, labels: list[str]) -> ScenarioPage:
    """The page of ``result``: the verdict, both timelines with each cluster's and each pod's
    series, and the events marked with ``labels`` (in order), each where its time is on the
    time axis (the tick labels give the scale)."""
    assert result.load is not None
    page = read_page(report.to_html(result, allowed))
    summary = result.summary()
    assert page.verdict["data-passed"] == str(findings.passed(summary, allowed)).lower()
    load = result.load
    for chart, key in (("timeline", "by_cluster"), ("timeline by pod", "by_pod")):
        seen = {name for b in load["timeline"] for name, n in b[key].items() if n}
        assert set(page.series[chart]) == seen, (chart, page.series[chart])
        assert [m["label"] for m in page.markers[chart]] == labels, page.markers[chart]
        (t0, x0), (t1, x1) = page.ticks[chart][0], page.ticks[chart][-1]
        for marker, (t, _) in zip(page.markers[chart], report.markers(result), strict=True):
            assert marker["t"] == pytest.approx(t, abs=1e-3)
            assert marker["x"] == pytest.approx(x0 + (t - t0) * (x1 - x0) / (t1 - t0), abs=0.2)
    return page


def marked(result: scenarios.ScenarioResult) -> dict[str, float]:
    """Each marked event's time on the timeline's clock, by its label."""
    return {label: t for t, label in report.markers(result)}


def calls(
    result: scenarios.ScenarioResult, key: str, name: str, since: float, until: float
) -> list[int]:
    """``name``'s calls (``key``: by_cluster, by_pod) in each bucket inside ``[since, until]``."""
    assert result.load is not None
    return [
        b[key].get(name, 0)
        for b in result.load["timeline"]
        # whole buckets inside (the last one may be shorter: the traffic stopped in it)
        if since <= b["t"]
        and b["t"] + b["duration_s"] <= until
        and b["duration_s"] == pytest.approx(TIMELINE_INTERVAL_S)
    ]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the pods run in sessions of their own): what a SIGKILL
    of a rehearsal leaves running."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rehearse(*flags: str, **kwargs: Any) -> subprocess.Popen[str]:
    """``greeter rehearse --port 0 FLAGS`` as a child, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "greeter", "rehearse", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
