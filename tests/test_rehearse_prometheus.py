"""``greeter rehearse --prometheus``: a real Prometheus scraping the rehearsal's real backends.

One rehearsal (real nginx, five real ``greeter serve`` processes, the Debian ``prometheus``):
``greeter load`` sends a few hundred calls through the gateway, and Prometheus' per-cluster and
per-pod counts of the calls the backends handled must equal the load report's ``by_cluster`` and
``by_pod`` exactly; the chart's alert rules must be loaded and healthy, and every PromQL
expression of the rules and of the Grafana dashboard must evaluate without error against the
rehearsal's series; a backend restarted as the rolling drain restarts it is scraped again; the
rehearsal's end stops Prometheus cleanly. Without prometheus the command says how to install it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import alerts_support as al
import pytest

from greeter.monitoring import DEFAULT_SELECTOR
from greeter.rehearse.cli import print_banner
from greeter.rehearse.fleet import Rehearsal, RehearsalConfig
from greeter.rehearse.gateway import HOST
from greeter.rehearse.pods import Backend
from greeter.rehearse.prometheus import (
    PrometheusAPI,
    QueryError,
    ScrapeTarget,
    render_config,
    selector,
    service_labels,
)
from tests.conftest import require_tool

CLUSTERS = ("cluster-a", "cluster-b")
JOB, NAMESPACE = "grpc-service", "gateway-demo"
SAY_HELLO = 'grpc_server_handled_total{grpc_method="SayHello"}'
CALLS = 300
T = TypeVar("T")


# -- configuration, no processes -------------------------------------------------------------
def test_scrape_config_labels_each_backend_as_a_service_monitor_would(tmp_path: Path) -> None:
    assert service_labels("grpc-service.gateway-demo.svc") == (JOB, NAMESPACE)
    canary = "grpc-service-canary"
    assert service_labels(f"{canary}.gateway-demo.svc") == (canary, NAMESPACE)
    with pytest.raises(ValueError, match="not a Service name"):
        service_labels("grpc-service")
    assert selector(JOB, NAMESPACE) == DEFAULT_SELECTOR  # what the rehearsal loads the rules for
    targets = [
        ScrapeTarget(JOB, NAMESPACE, "cluster-a", "cluster-a-greeter-0", "127.0.0.1:9001"),
        ScrapeTarget(JOB, NAMESPACE, "cluster-b", "cluster-b-greeter-0", "127.0.0.1:9002"),
        ScrapeTarget(canary, NAMESPACE, "cluster-a", "canary", "127.0.0.1:9003"),
    ]
    config = render_config(targets, tmp_path / "rules.json")
    assert config["global"] == {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    assert config["rule_files"] == [str(tmp_path / "rules.json")]
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    assert set(jobs) == {JOB, canary}
    assert jobs[JOB][1] == {
        "targets": ["127.0.0.1:9002"],
        "labels": {"namespace": NAMESPACE, "cluster": "cluster-b", "pod": "cluster-b-greeter-0"},
    }


def test_missing_prometheus_says_how_to_install(tmp_path: Path) -> None:
    """No prometheus on PATH: a clear error naming the Debian package, exit 3, nothing left
    running (nginx is still found in /usr/sbin, so prometheus is what is missing)."""
    require_tool("nginx", "apt-get install -y nginx-light")
    env = {**os.environ, "PATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "greeter", "rehearse", "--prometheus", "--port", "0"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "apt-get install -y prometheus" in result.stderr
    assert "gateway:" not in result.stdout


# -- one rehearsal with Prometheus -----------------------------------------------------------
async def _until(read: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    """``read()`` (in a thread: it asks Prometheus over HTTP) until ``done``, bounded; the
    last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(read)
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.25)


def _by(samples: list[dict[str, Any]], label: str) -> dict[str, int]:
    return {s["metric"][label]: int(float(s["value"][1])) for s in samples}


async def _scraped_after(prom: PrometheusAPI, moment: float, targets: int) -> None:
    """Until every target has a scrape that started after ``moment`` (Unix time), bounded."""

    samples = await _until(
        lambda: prom.query("timestamp(up == 1)"),
        lambda s: len(s) == targets and min(float(x["value"][1]) for x in s) > moment,
        timeout=60,
    )
    assert len(samples) == targets, samples
    assert min(float(x["value"][1]) for x in samples) > moment, (moment, samples)


def _load(address: str, calls: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "greeter", "load", address, "--insecure", "--authority", HOST,
         "-c", "4", "--connections", "2", "--procs", "1", "-n", str(calls), "-O", "json", "-q"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _dashboard_variables() -> dict[str, str]:
    """The dashboard's variables as Grafana fills them in for this rehearsal: its namespace
    and job, every cluster and both Greeter methods picked (a multi-value pick is a regex)."""
    return {
        **al.GRAFANA_SAMPLE_VARIABLES,
        "namespace": NAMESPACE,
        "job": JOB,
        "cluster": "(" + "|".join(CLUSTERS) + ")",
        "method": "(SayHello|SayHelloStreamReply)",
    }


async def test_prometheus_in_the_rehearsal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one rehearsal with Prometheus: the banner's URL; every backend a target with its
    labels; Prometheus' counts equal greeter load's; the chart's rules loaded and healthy;
    every rule and dashboard expression evaluates; a restarted backend is scraped again; the
    rehearsal's end stops Prometheus cleanly."""
    require_tool("nginx", "apt-get install -y nginx-light")
    require_tool("prometheus", "apt-get install -y prometheus")
    config = RehearsalConfig(
        port=0,
        drain_delay=0.5,
        grace_period=3.0,
        workdir=tmp_path / "rehearsal",
        prometheus=True,
    )
    async with Rehearsal(config) as r:
        assert r.prometheus is not None
        print_banner(r, sys.stdout)
        banner = capsys.readouterr().out
        assert re.search(r"^prometheus: http://127\.0\.0\.1:\d+$", banner, re.M), banner
        assert f"prometheus: {r.prometheus.url}\n" in banner
        prom = r.prometheus.client
        pods = {b.pod: b.cluster for b in r.backends + r.canary}
        assert set(pods.values()) == set(CLUSTERS)
        assert len(pods) == 5  # two pods per cluster and the canary

        await _counts_match_greeter_load(prom, r.address, pods)
        await _rules_loaded_and_every_expression_evaluates(prom)
        await _restarted_backend_is_scraped_again(prom, r, r.cluster(CLUSTERS[1])[0])
        proc = r.prometheus.proc
        assert proc is not None
    # Stopped with the rehearsal: SIGTERM, and Prometheus says goodbye in its log.
    assert proc.returncode == 0
    assert "See you next time!" in r.prometheus.log.read_text()
    with pytest.raises(urllib.error.URLError, match="refused"):
        prom.query("up")


async def _counts_match_greeter_load(
    prom: PrometheusAPI, address: str, pods: dict[str, str]
) -> None:
    # Every backend is a target with the labels the rules and dashboard select by.
    up = await _until(lambda: prom.query("up == 1"), lambda s: len(s) == len(pods), timeout=60)
    assert {s["metric"]["pod"]: s["metric"]["cluster"] for s in up} == pods
    assert {(s["metric"]["job"], s["metric"]["namespace"]) for s in up} == {
        (JOB, NAMESPACE),
        ("grpc-service-canary", NAMESPACE),
    }

    # Counts before the load (whatever the rehearsal itself sent), from scrapes after now.
    await _scraped_after(prom, time.time(), len(pods))
    before_cluster = _by(prom.query(f"sum by (cluster) ({SAY_HELLO})"), "cluster")
    before_pod = _by(prom.query(f"sum by (pod) ({SAY_HELLO})"), "pod")

    report = await asyncio.to_thread(_load, address, CALLS)
    ended = time.time()
    assert report["status_codes"] == {"OK": CALLS}
    assert set(report["by_cluster"]) == set(CLUSTERS)
    want_cluster = {c: row["count"] for c, row in report["by_cluster"].items()}
    want_pod = {p: row["count"] for p, row in report["by_pod"].items()}

    # A scrape of every backend that started after the load had ended, then the counts.
    await _scraped_after(prom, ended, len(pods))

    def delta(label: str, before: dict[str, int]) -> dict[str, int]:
        now = _by(prom.query(f"sum by ({label}) ({SAY_HELLO})"), label)
        return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}

    # A call's count may land a moment after its client saw the answer: bounded re-reads.
    got_cluster = await _until(lambda: delta("cluster", before_cluster), want_cluster.__eq__, 30)
    assert got_cluster == want_cluster
    got_pod = await _until(lambda: delta("pod", before_pod), want_pod.__eq__, 30)
    assert got_pod == want_pod
    assert sum(got_cluster.values()) == CALLS


async def _rules_loaded_and_every_expression_evaluates(prom: PrometheusAPI) -> None:
    # The chart's rules are loaded, every one evaluated without error...
    groups = al.rule_groups()
    names = [g["name"] for g in groups["groups"]]

    def rules() -> list[dict[str, Any]]:
        loaded: list[dict[str, Any]] = prom.api("rules")["groups"]
        return loaded

    loaded = await _until(
        rules,
        lambda gs: all(r["health"] != "unknown" for g in gs for r in g["rules"]),
        timeout=30,
    )
    assert sorted(g["name"] for g in loaded) == sorted(names)
    for group in loaded:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (group["name"], rule["name"], rule.get("lastError"))
    assert sorted(_squeezed(r["query"]) for g in loaded for r in g["rules"]) == sorted(
        _squeezed(_parsed(prom, expr)) for _, expr in al.rule_expressions(groups)
    )
    # ... over the rehearsal's series: the rules' selector picks the fleet's calls in each
    # cluster; with every backend scraped the fleet-wide absent(up{...}) is inactive (a
    # selector that matched nothing would leave it pending), and so is "a cluster without
    # traffic" after both clusters served the load. (The others depend on how each scrape and
    # call fares on a busy machine: a scrape over its 1 s timeout makes up 0 for a moment.)
    calls = prom.query(
        f"sum by (cluster) (increase(grpc_server_handled_total{{{DEFAULT_SELECTOR},"
        'grpc_service="helloworld.Greeter"}[5m]))'
    )
    assert {x["metric"]["cluster"] for x in calls if float(x["value"][1]) > 0} == set(CLUSTERS)
    alerts = [r for g in loaded for r in g["rules"] if r["type"] == "alerting"]
    shipped = [r["alert"] for g in groups["groups"] for r in g["rules"] if "alert" in r]
    assert sorted(r["name"] for r in alerts) == sorted(shipped)
    assert len(shipped) == 9
    assert "GreeterShedding" in shipped
    [absent] = [r for r in alerts if r["query"].startswith("absent(up{")]
    [no_traffic] = [r for r in alerts if r["name"] == "GreeterClusterNoTraffic"]
    assert (absent["state"], no_traffic["state"]) == ("inactive", "inactive")
    # (With no failed call there is no error series, so the error-ratio recording rules
    # return nothing rather than 0: the burn-rate alerts then stay quiet, as they should.)

    # Every expression of the rules and the dashboard evaluates without error.
    variables = _dashboard_variables()
    exprs = list(al.rule_expressions(groups))
    label_queries: list[tuple[str, str, str]] = []
    for where, expr in al.dashboard_expressions(al.dashboard()):
        parts = al.label_values_parts(expr)
        if parts is not None:
            filled = al.fill_grafana_variables(parts[0], variables)
            label_queries.append((where, filled, parts[1]))
            exprs.append((where, filled))
        else:
            exprs.append((where, al.fill_grafana_variables(expr, variables)))
    assert len(exprs) > 25
    failures = []
    for where, expr in exprs:
        try:
            await asyncio.to_thread(prom.query, expr)
        except QueryError as exc:
            failures.append(f"{where}: {exc}\n  {expr}")
    assert not failures, "\n".join(failures)

    # The dashboard's variables list the rehearsal's namespace, jobs, clusters and methods.
    values = {
        where: {s["metric"].get(label) for s in prom.query(query)}
        for where, query, label in label_queries
    }
    assert values["variable 'namespace'"] == {NAMESPACE}
    assert values["variable 'job'"] == {JOB, "grpc-service-canary"}
    assert values["variable 'cluster'"] == set(CLUSTERS)
    assert "SayHello" in values["variable 'method'"]
    # ... and its serving-pods panel counts two pods in each cluster.
    [serving] = [
        e for w, e in exprs if w.startswith("panel") and e.startswith("sum by (cluster) (up{")
    ]
    assert _by(prom.query(serving), "cluster") == dict.fromkeys(CLUSTERS, 2)


async def _restarted_backend_is_scraped_again(
    prom: PrometheusAPI, r: Rehearsal, backend: Backend
) -> None:
    """A backend restarted as the rolling drain restarts it keeps its metrics port: the same
    target shows the new process."""
    series = f'process_start_time_seconds{{pod="{backend.pod}"}}'
    [before] = prom.query(series)
    await r.restart(backend)
    after = await _until(
        lambda: prom.query(series),
        lambda s: len(s) == 1 and float(s[0]["value"][1]) > float(before["value"][1]),
        timeout=60,
    )
    assert len(after) == 1, after
    assert float(after[0]["value"][1]) > float(before["value"][1])
    assert after[0]["metric"] == before["metric"]  # same instance, job, cluster, pod


def _parsed(prom: PrometheusAPI, expr: str) -> str:
    """``expr`` as Prometheus prints it back once parsed (the rules API shows it so)."""
    text: str = prom.api("format_query", {"query": expr})
    return text


def _squeezed(expr: str) -> str:
    """Without white space: format_query lays the expression out on lines, the rules API not."""
    return re.sub(r"\s+", "", expr)
