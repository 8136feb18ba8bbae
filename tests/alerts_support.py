"""Greeter's alert rules and Grafana dashboard for the tests, from this checkout's chart.

The loading and filling in lives in :mod:`greeter.monitoring` (``greeter rehearse --prometheus``
loads the rules with it too); here it is bound to ``chart/`` of this source tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deploy_support import CHART, ROOT

from greeter import monitoring
from greeter.monitoring import (
    DEFAULT_SELECTOR,
    GRAFANA_SAMPLE_VARIABLES,
    dashboard_expressions,
    dashboard_panels,
    fill_grafana_variables,
    label_values_parts,
    label_values_query,
    rule_expressions,
)

RULES_FILE = CHART / monitoring.RULES_FILE
DASHBOARD_FILE = CHART / monitoring.DASHBOARD_FILE
ALERTS_DOC = ROOT / "docs" / "alerts.md"

__all__ = [
    "ALERTS_DOC",
    "DASHBOARD_FILE",
    "GRAFANA_SAMPLE_VARIABLES",
    "RULES_FILE",
    "chart_values",
    "dashboard",
    "dashboard_expressions",
    "dashboard_panels",
    "fill_grafana_variables",
    "label_values_parts",
    "label_values_query",
    "rule_expressions",
    "rule_groups",
]


def chart_values() -> dict[str, Any]:
    """The chart's default ``prometheusRule`` values."""
    return monitoring.chart_values(CHART)


def rule_groups(
    selector: str = DEFAULT_SELECTOR, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The rules file with every placeholder filled in (see :func:`monitoring.rule_groups`)."""
    return monitoring.rule_groups(selector, overrides, CHART)


def dashboard() -> dict[str, Any]:
    return monitoring.dashboard(CHART)
