"""The chart's alert rules and Grafana dashboard, checked with the real promtool and helm.

The PrometheusRule is rendered by helm (pyhelm3 driving the real binary) and its `spec` goes to
`promtool check rules` and to the unit tests in tests/promtool/greeter-rules-test.yaml, which feed
each alert series that must fire it and series that must leave it quiet. Every PromQL expression
of the rules and of the dashboard must parse (promtool, as recording rules of a throwaway file).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import alerts_support as al
import deploy_support as ds
import pytest
import yaml

PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool" / "greeter-rules-test.yaml"
RELEASE, NAMESPACE = "greeter", "gateway-demo"
ENABLED = {"prometheusRule": {"enabled": True}}


def promtool() -> str:
    return ds.tool("promtool")


def render_rules(tmp: Path, *values: dict[str, Any]) -> dict[str, Any]:
    """The `spec` of the PrometheusRule helm renders for release greeter in gateway-demo."""
    objects = ds.render([ENABLED, *values], release=RELEASE, namespace=NAMESPACE, tmp=tmp)
    spec: dict[str, Any] = ds.one(objects, "PrometheusRule")["spec"]
    return spec


def write_rules(groups: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump(groups, sort_keys=False))
    return path


def promtool_test(rules: dict[str, Any], folder: Path) -> tuple[int, str]:
    """`promtool test rules` of the project's unit tests against these rules."""
    write_rules(rules, folder)
    tests = folder / PROMTOOL_TESTS.name
    shutil.copyfile(PROMTOOL_TESTS, tests)
    result = ds.run([promtool(), "test", "rules", str(tests)], cwd=folder, timeout=600)
    return result.returncode, result.stdout + result.stderr


def check_rules(groups: dict[str, Any], folder: Path) -> tuple[int, str]:
    path = write_rules(groups, folder)
    result = ds.run([promtool(), "check", "rules", str(path)], timeout=120)
    return result.returncode, result.stdout + result.stderr


def alert_rules(groups: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in groups["groups"] for r in g["rules"] if "alert" in r]


# --- the rendered rules ---


@pytest.mark.parametrize(
    "values",
    [{}, yaml.safe_load((ds.CHART / "ci" / "prometheusrule-values.yaml").read_text())],
    ids=["defaults", "ci-values"],
)
def test_promtool_check_rules_accepts_the_rendered_rules(
    values: dict[str, Any], tmp_path: Path
) -> None:
    code, out = check_rules(render_rules(tmp_path, values), tmp_path / "check")
    assert code == 0, out
    assert "SUCCESS" in out


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    code, out = promtool_test(render_rules(tmp_path), tmp_path / "unit")
    assert code == 0, out
    assert "SUCCESS" in out


def test_promtool_unit_tests_catch_wrong_thresholds(tmp_path: Path) -> None:
    """The unit tests bite: a budget 500 times larger never pages, a p99 threshold of 1 s never
    fires on calls of 0.5 s, and the tests say so."""
    loose = {"prometheusRule": {"slo": {"objective": 50}, "latency": {"p99Seconds": 1}}}
    code, out = promtool_test(render_rules(tmp_path, loose), tmp_path / "unit")
    assert code != 0
    assert "alertname: GreeterErrorBudgetBurn" in out
    assert "alertname: GreeterLatencyHigh" in out
    assert "alertname: GreeterNoServingPods" not in out


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has a unit test where it fires and one where it must stay quiet, and the
    tests' group order names every group of the rules."""
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())
    groups = al.rule_groups()
    assert tests["group_eval_order"] == [g["name"] for g in groups["groups"]]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules(groups)}
    assert names == {
        "GreeterErrorBudgetBurn",
        "GreeterLatencyHigh",
        "GreeterClusterNoTraffic",
        "GreeterNoServingPods",
        "GreeterShedding",
    }
    assert firing == names
    assert quiet == names
    # Each of the four burn-rate pairs fires in some test.
    pairs = {
        (a["exp_labels"]["long"], a["exp_labels"]["short"])
        for case in tests["tests"]
        for check in case["alert_rule_test"]
        for a in check["exp_alerts"]
        if check["alertname"] == "GreeterErrorBudgetBurn"
    }
    assert pairs == {("1h", "5m"), ("6h", "30m"), ("1d", "2h"), ("3d", "6h")}


def test_loading_the_file_directly_gives_what_helm_renders(tmp_path: Path) -> None:
    """tests/alerts_support.py fills in the placeholders exactly as the chart's template does."""
    ci = yaml.safe_load((ds.CHART / "ci" / "prometheusrule-values.yaml").read_text())
    custom = {
        "prometheusRule": {
            "selector": 'job="greeter",env=~"prod.*"',
            "clusterLabel": "k8s_cluster",
            "slo": {"objective": 99.95, "errorCodes": ["Internal", "Unavailable"]},
            "latency": {"p99Seconds": 0.00001, "minRps": 2.5, "for": "1h30m"},
            "noTraffic": {"minFleetRps": 3, "for": "15m"},
            "noServingPods": {"for": "1m"},
            "runbookUrl": "https://runbooks.example.com/greeter.md",
        }
    }
    for n, values in enumerate([{}, ci, custom]):
        rendered = render_rules(tmp_path / str(n), values)
        direct = al.rule_groups(overrides=values.get("prometheusRule"))
        assert direct == rendered


def test_the_cluster_label_and_selector_are_configurable(tmp_path: Path) -> None:
    values = {"prometheusRule": {"clusterLabel": "k8s_cluster", "selector": 'job="g"'}}
    groups = render_rules(tmp_path, values)
    for name, expr in al.rule_expressions(groups):
        assert "cluster)" not in expr.replace("k8s_cluster", ""), name
        for selector in re.findall(r"\{([^}]*)\}", expr):
            assert selector.startswith('job="g"'), (name, selector)
    for rule in alert_rules(groups):
        assert "$labels.cluster " not in rule["annotations"]["summary"]
    code, out = check_rules(groups, tmp_path / "check")
    assert code == 0, out


def test_default_selector_is_the_scrape_labels_of_this_release(tmp_path: Path) -> None:
    objects = ds.render(
        [ENABLED, {"fullnameOverride": ""}], release="blue", namespace="prod", tmp=tmp_path
    )
    groups = ds.one(objects, "PrometheusRule")["spec"]
    [absent] = [r for r in alert_rules(groups) if "absent(" in r["expr"]]
    assert absent["expr"].strip() == 'absent(up{job="blue-greeter",namespace="prod"})'
    service = ds.one(objects, "Service")["metadata"]["name"]
    assert service == "blue-greeter"  # the job label a ServiceMonitor scrape sets


def test_alert_labels_are_added_and_severity_kept(tmp_path: Path) -> None:
    values = {"prometheusRule": {"alertLabels": {"team": "platform", "severity": "info"}}}
    for rule in alert_rules(render_rules(tmp_path, values)):
        assert rule["labels"]["team"] == "platform"
        assert rule["labels"]["severity"] in {"critical", "warning"}


def test_a_placeholder_without_a_value_fails_the_render(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(ds.CHART, chart)
    rules = chart / "files" / "prometheus-rules.yaml"
    rules.write_text(rules.read_text().replace("${latencyFor}", "${latencyFour}", 1))
    helm = ds.helm_paths()["helm"]
    result = ds.run(
        [str(helm), "template", "r", str(chart), "--set", "prometheusRule.enabled=true"],
        env=ds.helm_env(tmp_path),
        timeout=120,
    )
    assert result.returncode != 0
    assert "no value for the placeholder ${latencyFour}" in result.stderr


def test_every_alert_has_summary_description_and_a_runbook_section() -> None:
    slugs = {github_slug(h) for h in re.findall(r"^#+ (.+)$", al.ALERTS_DOC.read_text(), re.M)}
    base = al.chart_values()["runbookUrl"]
    for rule in alert_rules(al.rule_groups()):
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        assert annotations["description"].strip(), rule["alert"]
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url == base
        assert anchor == rule["alert"].lower()
        assert anchor in slugs, f"docs/alerts.md has no section #{anchor}"
        assert rule["labels"]["severity"] in {"critical", "warning"}


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_docs_list_every_threshold_value() -> None:
    """docs/alerts.md names each prometheusRule value (and its default) it explains."""
    doc = al.ALERTS_DOC.read_text()
    values = al.chart_values()

    def leaves(node: Any, prefix: str) -> list[tuple[str, Any]]:
        if isinstance(node, dict) and node:
            return [x for k, v in node.items() for x in leaves(v, f"{prefix}.{k}")]
        return [(prefix, node)]

    for name, default in leaves(values, "prometheusRule"):
        assert f"`{name}`" in doc, name
        if isinstance(default, (int, float, str)) and not isinstance(default, bool) and default:
            assert str(default) in doc, (name, default)


# --- the dashboard ---


def test_dashboard_is_importable_json_with_queries_on_every_panel() -> None:
    board = json.loads(al.DASHBOARD_FILE.read_text())
    assert board["uid"] == "greeter-fleet"
    assert board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    panels = al.dashboard_panels(board)
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_dashboard_variables() -> None:
    board = al.dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "job", "cluster", "method"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("cluster", "method"):
        assert variables[name]["multi"] is True, name
        assert variables[name]["includeAll"] is True, name
        assert variables[name]["allValue"] == ".*", name
    # Every variable a query uses exists (Grafana's own ones aside).
    used = {
        m
        for _, expr in al.dashboard_expressions(board)
        for m in re.findall(r"\$\{?(\w+)", expr)
        if not m.startswith("__")
    }
    assert used <= set(variables)


def grouping(expr: str) -> set[str]:
    return {label.strip() for m in re.findall(r"by \(([^)]*)\)", expr) for label in m.split(",")}


def test_dashboard_shows_rate_errors_and_latency_per_cluster_pod_and_method() -> None:
    board = al.dashboard()
    codes = "|".join(al.chart_values()["slo"]["errorCodes"])
    kinds: dict[str, set[str]] = {"rate": set(), "errors": set(), "latency": set()}
    share = serving = False
    for panel in al.dashboard_panels(board):
        for target in panel["targets"]:
            expr = target["expr"]
            if "histogram_quantile(0.99" in expr:
                kinds["latency"] |= grouping(expr)
            elif "grpc_server_handled_total" in expr and "grpc_code" in expr:
                kinds["errors"] |= grouping(expr)
            elif "grpc_server_handled_total" in expr:
                kinds["rate"] |= grouping(expr)
                share = share or "group_left" in expr
            if "grpc_code=~" in expr:
                # The same server-error codes as the SLO alerts.
                assert f'grpc_code=~"{codes}"' in expr, panel["title"]
            serving = serving or expr.startswith("sum by (cluster) (up{")
    for kind, labels in kinds.items():
        assert {"cluster", "pod", "grpc_method"} <= labels, (kind, labels)
    assert share, "no panel shows each cluster's share of the calls"
    assert serving, "no panel shows serving pods per cluster"


def test_dashboard_shows_connections_per_pod_and_calls_per_connection() -> None:
    # Every connection gauge the server exports is on the dashboard, per pod, so that one
    # connection funnelling a pod's calls (a multiplexing gateway) can be seen.
    from greeter.metrics import CONNECTION_GAUGES

    exprs = [expr for _, expr in al.dashboard_expressions(al.dashboard())]
    for name, _, _, _ in CONNECTION_GAUGES:
        using = [expr for expr in exprs if f"{name}{{" in expr]
        assert using, name
        assert all({"cluster", "pod"} <= grouping(expr) for expr in using), using


def test_dashboard_configmap_for_the_grafana_sidecar(tmp_path: Path) -> None:
    values = yaml.safe_load((ds.CHART / "ci" / "grafanadashboard-values.yaml").read_text())
    objects = ds.render([values], release=RELEASE, namespace=NAMESPACE, tmp=tmp_path)
    config_map = ds.one(objects, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == values["grafanaDashboard"]["annotations"]
    [(key, text)] = config_map["data"].items()
    assert key.endswith(".json")
    assert json.loads(text) == al.dashboard()


# --- every expression parses ---


def test_every_rule_and_dashboard_expression_parses(tmp_path: Path) -> None:
    """Each PromQL expression of the rules and the dashboard (variables filled in as Grafana
    does: a multi-value variable becomes an alternation), as a recording rule that promtool
    parses. The variable queries' label_values(selector, label) are checked by their selector."""
    variables = {
        **al.GRAFANA_SAMPLE_VARIABLES,
        "namespace": "gateway-demo",
        "job": "grpc-service",
        "cluster": "(ack-hangzhou-a|ack-hangzhou-b)",
        "method": "(SayHello|SayHelloStreamReply)",
    }
    exprs = list(al.rule_expressions(al.rule_groups()))
    for where, expr in al.dashboard_expressions(al.dashboard()):
        selector = al.label_values_query(expr)
        exprs.append((where, al.fill_grafana_variables(selector or expr, variables)))
    assert len(exprs) > 25
    rules = [{"record": f"check:expr_{n}:any", "expr": expr} for n, (_, expr) in enumerate(exprs)]
    code, out = check_rules({"groups": [{"name": "every-expression", "rules": rules}]}, tmp_path)
    assert code == 0, out
    assert f"SUCCESS: {len(rules)} rules found" in out


def test_a_typo_in_an_expression_is_caught(tmp_path: Path) -> None:
    """The parse check is real: promtool rejects a broken expression and names it."""
    broken = {"groups": [{"name": "g", "rules": [{"record": "r", "expr": "sum by (cluster (up)"}]}]}
    code, out = check_rules(broken, tmp_path)
    assert code != 0
    assert "parse error" in out


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("grafanaDashboard.enabeld=true", "additional properties 'enabeld' not allowed"),
        ("prometheusRule.latency.treshold=1", "additional properties 'treshold' not allowed"),
        ("prometheusRule.slo.objective=100", "/prometheusRule/slo/objective"),
        ("prometheusRule.slo.errorCodes={Internal,Oops}", "/prometheusRule/slo/errorCodes/1"),
        ("prometheusRule.latency.for=10 minutes", "/prometheusRule/latency/for"),
        ("prometheusRule.latency.for=5m1h", "/prometheusRule/latency/for"),
        ("prometheusRule.noTraffic.minFleetRps=0", "/prometheusRule/noTraffic/minFleetRps"),
        ("prometheusRule.clusterLabel=k8s-cluster", "/prometheusRule/clusterLabel"),
    ],
)
def test_values_schema_rejects_bad_thresholds(setting: str, complaint: str, tmp_path: Path) -> None:
    helm = ds.helm_paths()["helm"]
    args = ["lint", "--strict", str(ds.CHART), "--set", "prometheusRule.enabled=true"]
    result = ds.run([str(helm), *args, "--set", setting], env=ds.helm_env(tmp_path), timeout=120)
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr
