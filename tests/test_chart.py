"""The Helm chart, with the real helm binary (through pyhelm3) and real schemas.

Every rendering (the defaults and each ci/<feature>-values.yaml) is made exactly as Argo CD
makes it from gitops/argocd/applicationset.yaml, for two example clusters, and every object is
validated against its schema for each Kubernetes version the chart claims.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import deploy_support as ds
import pytest
import yaml

CI_VALUES = sorted((ds.CHART / "ci").glob("*-values.yaml"))
SETTINGS_DEFAULTS = {"drain_delay": 5.0, "grace_period": 20.0}


def ci_values(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ds.CHART / "ci" / f"{name}-values.yaml").read_text())
    return data


def env_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = ds.one(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def container_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = ds.one(objects, "Deployment")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.fixture
def render(tmp_path: Path) -> Any:
    def _render(*values: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
        return ds.render(list(values), tmp=tmp_path, **kwargs)

    return _render


# --- helm lint and the values schema ---


def _helm(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    helm = ds.helm_paths()["helm"]
    return ds.run([str(helm), *args], env=ds.helm_env(tmp), timeout=120)


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_strict(values: Path | None, tmp_path: Path) -> None:
    args = ["lint", "--strict", str(ds.CHART)] + (["-f", str(values)] if values else [])
    result = _helm(args, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("servce.port=1", "additional properties 'servce' not allowed"),
        ("service.prot=1", "additional properties 'prot' not allowed"),
        ("server.logLevel=verbose", "logLevel"),
        ("fault.status=BROKEN", "status"),
        ("server.drainDelay=-1", "drainDelay"),
    ],
)
def test_values_schema_rejects_typos_and_bad_values(
    setting: str, complaint: str, tmp_path: Path
) -> None:
    result = _helm(["lint", "--strict", str(ds.CHART), "--set", setting], tmp_path)
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr


def test_validated_versions_cover_the_claimed_range() -> None:
    chart = yaml.safe_load((ds.CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">=1.{ds.MIN_KUBE_MINOR}.0-0"
    assert ds.KUBE_VERSIONS[0] == f"1.{ds.MIN_KUBE_MINOR}.0"
    assert {f"1.{m}.0" for m in range(ds.MIN_KUBE_MINOR, 35)} <= set(ds.KUBE_VERSIONS)


def test_every_value_is_documented() -> None:
    """Helm best practice: each value has a comment that starts with its name."""
    text = (ds.CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    documented = set(re.findall(r"#\s*([A-Za-z][\w.]*) --", text))

    def leaves(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict) and node and prefix not in FREE_FORM:
            return [k for key, v in node.items() for k in leaves(v, f"{prefix}{key}.")]
        return [prefix.rstrip(".")]

    undocumented = [
        name
        for name in leaves(values, "")
        if name not in documented and not any(name.startswith(d + ".") for d in documented)
    ]
    assert undocumented == []


FREE_FORM = {"resources.", "podSecurityContext.", "securityContext."}


# --- rendering as Argo CD does, and schema validation ---


def argocd_values(cluster: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
    """(release, namespace, values) that the ApplicationSet gives Helm for one cluster."""
    from test_gitops import generate_application

    app = generate_application(cluster)
    source = app["spec"]["source"]
    assert source["path"] == "chart"
    helm = source["helm"]
    return helm["releaseName"], app["spec"]["destination"]["namespace"], helm["valuesObject"]


@pytest.mark.parametrize("cluster", ds.EXAMPLE_CLUSTERS, ids=lambda c: c["name"])
@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_rendering_validates_against_real_schemas(
    values: Path | None, cluster: dict[str, str], render: Any
) -> None:
    release, namespace, app_values = argocd_values(cluster)
    extra = [yaml.safe_load(values.read_text())] if values else []
    objects = render(app_values, *extra, release=release, namespace=namespace)
    assert objects, "the chart rendered nothing"
    problems = ds.validate_all(objects, ds.KUBE_VERSIONS)
    assert problems == []
    for obj in objects:
        assert obj["metadata"]["namespace"] == namespace, obj["kind"]
    assert env_of(objects)["GREETER_CLUSTER_NAME"] == cluster["name"]


def test_validation_catches_a_bad_object(render: Any) -> None:
    """The validators are real: an unknown field and a wrong type are reported."""
    objects = render({"grpcRoute": {"enabled": True}})
    deployment = ds.one(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["grpcc"] = {}
    route = ds.one(objects, "GRPCRoute")
    route["spec"]["rules"][0]["backendRefs"][0]["port"] = "grpc"
    problems = ds.validate_all(objects, ["1.30.0"])
    assert any("grpcc" in p for p in problems), problems
    assert any("GRPCRoute" in p and "port" in p for p in problems), problems


# --- value-level behaviour ---


def test_defaults_use_the_walkthrough_names(render: Any) -> None:
    objects = render({})
    service = ds.one(objects, "Service")
    assert service["metadata"]["name"] == "grpc-service"
    [grpc_port] = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port["port"] == 50051
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    assert grpc_port["targetPort"] == "grpc"
    assert ds.one(objects, "Deployment")["metadata"]["name"] == "grpc-service"
    assert {o["kind"] for o in objects} == {"Service", "Deployment", "Pod"}


def test_selector_has_name_and_instance(render: Any) -> None:
    objects = render({}, release="blue")
    selector = ds.one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "greeter", "app.kubernetes.io/instance": "blue"}
    assert ds.one(objects, "Service")["spec"]["selector"] == selector


def test_probes_are_native_grpc_on_the_grpc_port(render: Any) -> None:
    container = container_of(render({}))
    grpc_port = next(p for p in container["ports"] if p["name"] == "grpc")["containerPort"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port, "service": ""}, probe
    container = container_of(render({"probes": {"service": "helloworld.Greeter"}}))
    assert container["readinessProbe"]["grpc"]["service"] == "helloworld.Greeter"


def test_probes_use_greeter_health_when_tls_is_on(render: Any) -> None:
    """The kubelet's gRPC probe cannot speak TLS; greeter health --tls can."""
    container = container_of(render(ci_values("tls")))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:3] == ["greeter", "health", "localhost:50051"]
        assert "--tls" in command
        assert "grpc" not in container[probe]


@pytest.mark.parametrize(
    ("drain", "grace", "margin"), [(None, None, None), (5, 20, 5), (2.5, 40, 3), (0, 1, 0)]
)
def test_termination_grace_covers_drain_and_grace(
    drain: float | None, grace: float | None, margin: float | None, render: Any
) -> None:
    server = {
        k: v
        for k, v in {"drainDelay": drain, "gracePeriod": grace, "terminationMargin": margin}.items()
        if v is not None
    }
    objects = render({"server": server})
    env = env_of(objects)
    spec = ds.one(objects, "Deployment")["spec"]["template"]["spec"]
    drain_env = float(env["GREETER_DRAIN_DELAY"])
    grace_env = float(env["GREETER_GRACE_PERIOD"])
    if drain is None:
        # The chart's defaults are the server's defaults.
        assert drain_env == SETTINGS_DEFAULTS["drain_delay"]
        assert grace_env == SETTINGS_DEFAULTS["grace_period"]
    else:
        assert (drain_env, grace_env) == (drain, grace)
    termination = spec["terminationGracePeriodSeconds"]
    assert isinstance(termination, int)
    assert termination >= drain_env + grace_env + (margin if margin is not None else 5)
    # No preStop sleep: the server drains itself; a sleep would add to the drain delay.
    assert "lifecycle" not in container_of(objects)


def test_settings_defaults_match_the_server() -> None:
    """The chart's drain defaults are the server's own (service/greeter/settings.py)."""
    settings = pytest.importorskip("greeter.settings")
    defaults = settings.Settings()
    values = yaml.safe_load((ds.CHART / "values.yaml").read_text())
    assert values["server"]["drainDelay"] == defaults.drain_delay
    assert values["server"]["gracePeriod"] == defaults.grace_period
    assert values["server"]["port"] == defaults.port
    assert values["metrics"]["port"] == defaults.metrics_port


def test_rendered_env_is_accepted_by_the_server_settings(render: Any) -> None:
    """Every GREETER_* value the chart sets parses as the server's settings."""
    settings = pytest.importorskip("greeter.settings")
    for values in [{}, ci_values("fault"), {"server": {"drainDelay": 2.5, "logFormat": "text"}}]:
        env = {k: v for k, v in env_of(render(values)).items() if isinstance(v, str)}
        env.pop("GREETER_TLS_CERT", None)
        env.pop("GREETER_AUTH_TOKENS_FILE", None)
        assert settings.unknown_env(env) == []
        loaded = settings.load(environ=env)
        assert loaded.drain_delay == float(env["GREETER_DRAIN_DELAY"])


def test_identity_env(render: Any) -> None:
    env = env_of(render({"cluster": {"name": "ack-1", "zone": "cn-hangzhou-k"}}))
    assert env["GREETER_CLUSTER_NAME"] == "ack-1"
    assert env["GREETER_ZONE"] == "cn-hangzhou-k"
    assert env["GREETER_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["GREETER_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["GREETER_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert "GREETER_ZONE" not in env_of(render({}))


def test_pod_is_locked_down(render: Any) -> None:
    spec = ds.one(render({}), "Deployment")["spec"]["template"]["spec"]
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = spec["containers"][0]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsUser"] >= 10000
    assert container["resources"]["limits"]["memory"]
    assert container["resources"]["requests"]["cpu"]
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_image_tag_falls_back_to_app_version(render: Any) -> None:
    chart = yaml.safe_load((ds.CHART / "Chart.yaml").read_text())
    assert container_of(render({}))["image"].endswith(":" + chart["appVersion"])
    pinned = "sha256:" + "a" * 64
    assert container_of(render({"image": {"digest": pinned}}))["image"].endswith("@" + pinned)


def test_app_version_matches_the_package() -> None:
    greeter = pytest.importorskip("greeter")
    chart = yaml.safe_load((ds.CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == greeter.__version__


FEATURES = {
    "pdb": ("PodDisruptionBudget",),
    "autoscaling": ("HorizontalPodAutoscaler",),
    "networkpolicy": ("NetworkPolicy",),
    "servicemonitor": ("ServiceMonitor",),
    "prometheusrule": ("PrometheusRule",),
    "grafanadashboard": ("ConfigMap",),
    "auth": ("Secret",),
    "albingress": ("Ingress",),
    "nginxingress": ("Ingress",),
    "grpcroute": ("GRPCRoute",),
    "emissary": ("Mapping", "TLSContext"),
}


def test_every_ci_values_file_is_a_feature() -> None:
    names = {p.name.removesuffix("-values.yaml") for p in CI_VALUES}
    assert names == set(FEATURES) | {"tls", "fault"}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_feature_renders_only_when_enabled(feature: str, render: Any) -> None:
    default_kinds = {o["kind"] for o in render({})}
    enabled_kinds = [o["kind"] for o in render(ci_values(feature))]
    for kind in FEATURES[feature]:
        assert kind not in default_kinds
        assert enabled_kinds.count(kind) == 1


def test_autoscaling_drops_fixed_replicas(render: Any) -> None:
    assert "replicas" in ds.one(render({}), "Deployment")["spec"]
    objects = render(ci_values("autoscaling"))
    assert "replicas" not in ds.one(objects, "Deployment")["spec"]
    hpa = ds.one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "grpc-service"


def test_tls_mounts_the_secret(render: Any) -> None:
    objects = render(ci_values("tls"))
    env = env_of(objects)
    spec = ds.one(objects, "Deployment")["spec"]["template"]["spec"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "grpc-secret"
    assert env["GREETER_TLS_CERT"] == "/etc/greeter/tls/tls.crt"
    assert env["GREETER_TLS_KEY"] == "/etc/greeter/tls/tls.key"
    assert env["GREETER_TLS_CLIENT_CA"] == "/etc/greeter/tls/ca.crt"
    assert "GREETER_TLS_CERT" not in env_of(render({}))


def test_auth_tokens_go_to_a_mounted_file(render: Any) -> None:
    objects = render(ci_values("auth"))
    secret = ds.one(objects, "Secret")
    lines = secret["stringData"]["tokens"].splitlines()
    assert [line for line in lines if line.strip()] == ci_values("auth")["auth"]["tokens"]
    env = env_of(objects)
    assert env["GREETER_AUTH_ENABLED"] == "true"
    assert env["GREETER_AUTH_TOKENS_FILE"] == "/etc/greeter/auth/tokens"
    assert "GREETER_AUTH_TOKENS" not in env, "tokens must not be in the environment"
    annotations = ds.one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/auth" in annotations


def test_fault_settings_reach_the_env(render: Any) -> None:
    env = env_of(render(ci_values("fault")))
    assert env["GREETER_FAULT_ENABLED"] == "true"
    assert env["GREETER_FAULT_STATUS"] == "UNAVAILABLE"
    assert float(env["GREETER_FAULT_STATUS_PERCENT"]) == 5
    assert "GREETER_FAULT_ENABLED" not in env_of(render({}))


def test_network_policy_admits_only_gateway_and_scraper(render: Any) -> None:
    policy = ds.one(render(ci_values("networkpolicy")), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    assert [r["ports"][0]["port"] for r in rules] == ["grpc", "metrics"]
    assert all(r["from"] for r in rules)
    assert rules[0]["from"] == ci_values("networkpolicy")["networkPolicy"]["gateway"]["from"]


def test_network_policy_refuses_to_admit_everyone(tmp_path: Path) -> None:
    result = _helm(
        ["template", "r", str(ds.CHART), "--set", "networkPolicy.enabled=true"], tmp_path
    )
    assert result.returncode != 0
    assert "networkPolicy.gateway.from" in result.stderr


def test_service_monitor_scrapes_the_metrics_port(render: Any) -> None:
    objects = render(ci_values("servicemonitor"))
    monitor = ds.one(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service_ports = {p["name"] for p in ds.one(objects, "Service")["spec"]["ports"]}
    assert "metrics" in service_ports


def test_alb_ingress_speaks_grpc_on_https_443(render: Any) -> None:
    ingress = ds.one(render(ci_values("albingress")), "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/backend-protocol"] == "grpc"
    assert annotations["alb.ingress.kubernetes.io/listen-ports"] == '[{"HTTPS": 443}]'
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert ingress["spec"]["tls"] == [{"hosts": ["grpc.example.com"], "secretName": "grpc-secret"}]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "grpc-service", "port": {"number": 50051}}


def test_nginx_ingress_speaks_grpc_with_long_timeouts(render: Any) -> None:
    ingress = ds.one(render(ci_values("nginxingress")), "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600
    assert ingress["spec"]["tls"][0]["secretName"] == "grpc-secret"


def test_grpcroute_rules(render: Any) -> None:
    values = ci_values("grpcroute")
    route = ds.one(render(values), "GRPCRoute")
    matches = [m for rule in route["spec"]["rules"] for m in rule["matches"]]
    for match in matches:
        method = match["method"]
        assert set(method) - {"type"}, f"a method match with only type: {match}"
    services = {m["method"]["service"] for m in matches}
    assert services == {
        "helloworld.Greeter",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.health.v1.Health",
    }
    canary = values["grpcRoute"]["canary"]
    [canary_rule] = [r for r in route["spec"]["rules"] if any("headers" in m for m in r["matches"])]
    assert canary_rule["matches"][0]["headers"] == [
        {"type": "Exact", "name": canary["header"]["name"], "value": canary["header"]["value"]}
    ]
    assert canary_rule["backendRefs"] == [canary["backend"]]
    # The canary rule comes first, and the header defaults are the rehearsal's x-canary: "true".
    assert route["spec"]["rules"][0] is canary_rule
    defaults = yaml.safe_load((ds.CHART / "values.yaml").read_text())["grpcRoute"]["canary"]
    assert defaults["header"] == {"name": "x-canary", "value": "true"}


def test_grpcroute_without_canary_has_no_header_rule(render: Any) -> None:
    route = ds.one(render({"grpcRoute": {"enabled": True}}), "GRPCRoute")
    assert not any("headers" in m for r in route["spec"]["rules"] for m in r["matches"])


def test_emissary_mapping_is_grpc_with_alpn_h2(render: Any) -> None:
    objects = render(ci_values("emissary"))
    mapping = ds.one(objects, "Mapping")
    assert mapping["spec"]["grpc"] is True
    assert mapping["spec"]["service"] == "grpc-service.gateway-demo:50051"
    context = ds.one(objects, "TLSContext")
    assert context["spec"]["alpn_protocols"] == "h2"
    assert context["spec"]["secret"] == "grpc-secret"


def test_helm_test_pod_checks_grpc_health(render: Any) -> None:
    objects = render({})
    pod = ds.one(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pod["spec"]["containers"][0]["args"]
    assert args[:2] == ["health", "grpc-service:50051"]
    assert "Pod" not in {o["kind"] for o in render({}, no_hooks=True)}
    assert "Pod" not in {o["kind"] for o in render({"helmTest": {"enabled": False}})}


def render_notes(values: list[str], tmp: Path) -> str:
    """NOTES.txt as helm renders it. `helm template` leaves NOTES out and `helm install
    --dry-run` needs a cluster, so a copy of the chart carries the notes in a ConfigMap."""
    import shutil

    chart = tmp / "chart"
    shutil.copytree(ds.CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    body = "".join(f"    {line}\n" for line in notes.splitlines())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n" + body
    )
    args = ["template", "greeter", str(chart), "-n", "gateway-demo", "--show-only"]
    result = _helm([*args, "templates/zz-notes.yaml", *values], tmp)
    assert result.returncode == 0, result.stderr
    text: str = yaml.safe_load(result.stdout)["data"]["notes"]
    return text


def test_notes_tell_how_to_call_the_service(tmp_path: Path) -> None:
    notes = render_notes([], tmp_path)
    assert "grpc-service.gateway-demo.svc:50051" in notes
    assert "greeter health localhost:50051" in notes
    assert "grpcurl -plaintext localhost:50051 list" in notes
    assert "ALB" not in notes
    notes = render_notes(["-f", str(ds.CHART / "ci" / "albingress-values.yaml")], tmp_path / "alb")
    assert "grpcurl -insecure -authority grpc.example.com $ADDR:443 list" in notes
    assert "greeter load $ADDR:443 --insecure --authority grpc.example.com" in notes


# --- security scanners ---


def checkov() -> str:
    binary = ds.CHECKOV_VENV / "bin" / "checkov"
    if not binary.exists():
        ds.missing(f"checkov (expected in {ds.CHECKOV_VENV})")
    return str(binary)


def _checkov(args: list[str], tmp: Path) -> dict[str, Any]:
    import json

    env = ds.helm_env(tmp)
    env["BC_SKIP_MAPPING"] = "TRUE"
    env["PATH"] = f"{ds.helm_paths()['helm'].parent}{os.pathsep}{env['PATH']}"
    env["CHECKOV_RUN_SCA_PACKAGE_SCAN_V2"] = "false"
    result = ds.run(
        [checkov(), *args, "--output", "json", "--compact", "--skip-download"],
        env=env,
        timeout=300,
        cwd=ds.ROOT,
    )
    assert result.stdout.strip(), result.stderr
    data = json.loads(result.stdout)
    reports = data if isinstance(data, list) else [data]
    return {"reports": reports, "returncode": result.returncode}


def test_checkov_chart(tmp_path: Path) -> None:
    config = ds.CHART / ".checkov.yaml"
    out = _checkov(
        ["-d", str(ds.CHART), "--framework", "helm", "--config-file", str(config)], tmp_path
    )
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['resource']})"
        for report in out["reports"]
        for c in report.get("results", {}).get("failed_checks", [])
    ]
    passed = sum(
        len(report.get("results", {}).get("passed_checks", [])) for report in out["reports"]
    )
    assert passed > 20, "checkov scanned nothing (is helm on PATH?)"
    assert failed == []
    skipped = [
        c for report in out["reports"] for c in report.get("results", {}).get("skipped_checks", [])
    ]
    configured = set(yaml.safe_load(config.read_text())["skip-check"])
    unexplained = [
        c["check_id"]
        for c in skipped
        if c["check_id"] not in configured and not c["check_result"].get("suppress_comment")
    ]
    assert unexplained == [], "every skip needs a reason"
    # Each skip in the config file has its justification in the comment right above it.
    lines = config.read_text().splitlines()
    for check_id in configured:
        at = lines.index(f"  - {check_id}")
        assert lines[at - 1].strip().startswith("#"), check_id
        assert check_id in "\n".join(lines[max(0, at - 6) : at]), check_id


def test_checkov_dockerfile(tmp_path: Path) -> None:
    out = _checkov(["-f", str(ds.ROOT / "Dockerfile"), "--framework", "dockerfile"], tmp_path)
    failed = [
        f"{c['check_id']} {c['check_name']}"
        for report in out["reports"]
        for c in report.get("results", {}).get("failed_checks", [])
    ]
    passed = sum(
        len(report.get("results", {}).get("passed_checks", [])) for report in out["reports"]
    )
    assert passed > 5
    assert failed == []
    skipped = [
        c for report in out["reports"] for c in report.get("results", {}).get("skipped_checks", [])
    ]
    assert all(c["check_result"].get("suppress_comment") for c in skipped), skipped


def test_hadolint_dockerfile() -> None:
    result = ds.run([ds.tool("hadolint"), "--failure-threshold", "info", "Dockerfile"], cwd=ds.ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
