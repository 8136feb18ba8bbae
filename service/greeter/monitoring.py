"""The chart's alert rules and Grafana dashboard, read straight from its files.

``chart/files/prometheus-rules.yaml`` is a Prometheus rules file with ``${name}`` placeholders
that ``chart/templates/prometheusrule.yaml`` fills in from the ``prometheusRule`` values;
:func:`rule_groups` fills them in the same way (tests/test_alerts.py checks that both give the
same rules), so the rules can be loaded for any selector without helm: by ``greeter rehearse
--prometheus``, which evaluates them live, and by the tests. ``chart/files/grafana-dashboard.json``
is the dashboard as Grafana imports it; :func:`dashboard_expressions` lists its PromQL.

Reading the chart's YAML needs PyYAML (the ``greeter[deploy]`` extra); it is imported only here,
when rules are loaded.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RULES_FILE = Path("files") / "prometheus-rules.yaml"
DASHBOARD_FILE = Path("files") / "grafana-dashboard.json"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9]*)\}")
# The chart's default selector for its default Service name in namespace gateway-demo: the
# labels a ServiceMonitor scrape of release grpc-service puts on every series.
DEFAULT_JOB = "grpc-service"
DEFAULT_NAMESPACE = "gateway-demo"
DEFAULT_SELECTOR = f'job="{DEFAULT_JOB}",namespace="{DEFAULT_NAMESPACE}"'


class MonitoringError(RuntimeError):
    """The chart's rules or dashboard cannot be read."""


def _yaml() -> Any:
    try:
        return importlib.import_module("yaml")
    except ImportError:
        raise MonitoringError(
            "reading the chart's alert rules needs PyYAML: pip install '.[deploy]' (from a clone)"
        ) from None


def default_chart() -> Path:
    """The chart folder (``$GREETER_CHART``, this source tree's ``chart/`` or ``./chart``)."""
    from greeter.deploy import DeployError, find_chart

    try:
        return find_chart()
    except DeployError as exc:
        raise MonitoringError(str(exc)) from None


def chart_values(chart: Path | None = None) -> dict[str, Any]:
    """The chart's default ``prometheusRule`` values."""
    path = (chart or default_chart()) / "values.yaml"
    values: dict[str, Any] = _yaml().safe_load(path.read_text())
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


def rule_params(
    selector: str,
    overrides: Mapping[str, Any] | None = None,
    chart: Path | None = None,
) -> dict[str, str]:
    """The placeholder values the chart's template computes from ``prometheusRule`` values."""
    v = _merged(chart_values(chart), overrides or {})
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
        "sheddingRatio": v["shedding"]["ratio"],
        "sheddingFor": v["shedding"]["for"],
    }
    return {name: go_string(value) for name, value in params.items()}


def rule_groups(
    selector: str = DEFAULT_SELECTOR,
    overrides: Mapping[str, Any] | None = None,
    chart: Path | None = None,
) -> dict[str, Any]:
    """The rules file (``{"groups": [...]}``) with every placeholder filled in, as the chart's
    PrometheusRule has it in its ``spec``.

    ``selector`` stands for the release's label matchers (the chart's default for release
    namespace gateway-demo); ``overrides`` are ``prometheusRule`` values over the chart's.
    """
    chart = chart or default_chart()
    params = rule_params(selector, overrides, chart)
    path = chart / RULES_FILE

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise MonitoringError(f"{path.name}: no value for the placeholder ${{{name}}}")
        return params[name]

    groups: dict[str, Any] = _yaml().safe_load(PLACEHOLDER.sub(fill, path.read_text()))
    alert_labels = _merged(chart_values(chart), overrides or {})["alertLabels"]
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


def dashboard(chart: Path | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(((chart or default_chart()) / DASHBOARD_FILE).read_text())
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


# What Grafana puts in place of its own variables: $__rate_interval a duration, and so on.
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


def label_values_parts(query: str) -> tuple[str, str] | None:
    """(series selector, label) of a ``label_values(selector, label)`` variable query, if it
    is one: Grafana asks Prometheus for that selector's series and lists the label's values."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, flags=re.S)
    return (match.group(1), match.group(2)) if match else None


def label_values_query(query: str) -> str | None:
    """The series selector inside a ``label_values(selector, label)`` variable query, if any."""
    parts = label_values_parts(query)
    return parts[0] if parts else None
