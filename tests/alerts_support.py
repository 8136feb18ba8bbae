"""Greeter's alert rules and Grafana dashboard, loaded straight from the chart's files.

``chart/files/prometheus-rules.yaml`` is a Prometheus rules file with ``${name}`` placeholders
that ``chart/templates/prometheusrule.yaml`` fills in from the values; :func:`rule_groups` fills
them in the same way (tests/test_alerts.py checks that both give the same rules), so a test can
load the rules for any selector (e.g. the ``job`` of a Prometheus it runs itself) without helm.
``chart/files/grafana-dashboard.json`` is the dashboard as Grafana imports it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml
from deploy_support import CHART, ROOT

RULES_FILE = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD_FILE = CHART / "files" / "grafana-dashboard.json"
ALERTS_DOC = ROOT / "docs" / "alerts.md"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9]*)\}")


def chart_values() -> dict[str, Any]:
    """The chart's default ``prometheusRule`` values."""
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    rule_values: dict[str, Any] = values["prometheusRule"]
    return rule_values


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def go_string(value: Any) -> str:
    """A value as Helm's ``toString`` writes it (Go's %v: 99.9, 1, 1e-05)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        number = float(value)
        if number.is_integer() and abs(number) < 1e21:
            return str(int(number))
        return repr(number)
    return str(value)


def rule_params(selector: str, overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The placeholder values the chart's template computes from ``prometheusRule`` values."""
    v = _merged(chart_values(), overrides or {})
    params = {
        "selector": v["selector"] or selector,
        "cluster": v["clusterLabel"],
        "runbookUrl": v["runbookUrl"],
        "objective": v["slo"]["objective"],
        "errorCodes": "|".join(v["slo"]["errorCodes"]),
        "latencyP99Seconds": v["latency"]["p99Seconds"],
        "latencyMinRps": v["latency"]["minRps"],
        "latencyFor": v["latency"]["for"],
        "noTrafficMinFleetRps": v["noTraffic"]["minFleetRps"],
        "noTrafficFor": v["noTraffic"]["for"],
        "noServingPodsFor": v["noServingPods"]["for"],
    }
    return {name: go_string(value) for name, value in params.items()}


def rule_groups(
    selector: str = 'job="grpc-service",namespace="gateway-demo"',
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The rules file (``{"groups": [...]}``) with every placeholder filled in.

    ``selector`` stands for this release's label matchers (the chart's default for release
    namespace gateway-demo); ``overrides`` are ``prometheusRule`` values over the chart's.
    """
    params = rule_params(selector, overrides)

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise KeyError(f"{RULES_FILE.name}: no value for the placeholder ${{{name}}}")
        return params[name]

    groups: dict[str, Any] = yaml.safe_load(PLACEHOLDER.sub(fill, RULES_FILE.read_text()))
    alert_labels = _merged(chart_values(), overrides or {})["alertLabels"]
    for group in groups["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["labels"] = {**alert_labels, **rule.get("labels", {})}
    return groups


def rule_expressions(groups: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(rule name, PromQL) of every recording rule and alert."""
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in groups["groups"]
        for rule in group["rules"]
    ]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return data


def dashboard_panels(board: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows' nested panels included, the rows themselves not)."""
    panels: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def dashboard_expressions(board: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL as Grafana sends it, before variables are filled in) of every query:
    each panel target's ``expr`` and each query variable's ``query``."""
    exprs = [
        (f"panel {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in dashboard_panels(board)
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, Mapping) else query
            exprs.append((f"variable {variable['name']!r}", text))
    return exprs


# What Grafana puts in place of its variables, for checking the dashboard's PromQL with promtool:
# a multi-value variable becomes a regex alternation, $__rate_interval a duration.
GRAFANA_SAMPLE_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "datasource": "prometheus",
}


def fill_grafana_variables(expr: str, variables: Mapping[str, str]) -> str:
    """``expr`` with ``$name`` and ``${name}`` replaced; an unknown variable is an error."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", fill, expr)


def label_values_query(query: str) -> str | None:
    """The series selector inside a ``label_values(selector, label)`` variable query, if any."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, flags=re.S)
    return match.group(1) if match else None
