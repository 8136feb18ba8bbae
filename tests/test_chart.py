"""The Helm chart, with the real helm binary (through pyhelm3) and real schemas.

Every rendering (the defaults and each ci/<feature>-values.yaml) is made exactly as Argo CD
makes it from gitops/argocd/applicationset.yaml, for two example clusters, and every object is
validated against its schema for each Kubernetes version the chart claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import deploy_support as ds
import grpc
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
        ("emissary.healthChecks.loadBalancerPolicy=random", "loadBalancerPolicy"),
        ("emissary.healthChecks.intervalSeconds=1", "additional properties 'intervalSeconds'"),
        ("emissary.endpointResolver.name=Not_A_Name", "name"),
        ("emissary.endpointResolver.enable=true", "additional properties 'enable'"),
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
        # ci/tls requires client certificates: the probe presents the pod's own pair.
        at = command.index("--cert")
        assert command[at : at + 4] == [
            "--cert",
            "/etc/greeter/tls/tls.crt",
            "--key",
            "/etc/greeter/tls/tls.key",
        ]
    container = container_of(render({"tls": {"enabled": True}}))
    assert "--cert" not in container["readinessProbe"]["exec"]["command"]


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
    assert values["server"]["keepaliveMinTime"] == defaults.keepalive_min_time


def test_rendered_env_is_accepted_by_the_server_settings(render: Any) -> None:
    """Every GREETER_* value the chart sets parses as the server's settings."""
    settings = pytest.importorskip("greeter.settings")
    cases = [{}, ci_values("fault"), ci_values("interop"), {"server": {"drainDelay": 2.5}}]
    for values in cases:
        env = {k: v for k, v in env_of(render(values)).items() if isinstance(v, str)}
        env.pop("GREETER_TLS_CERT", None)
        env.pop("GREETER_AUTH_TOKENS_FILE", None)
        assert settings.unknown_env(env) == []
        loaded = settings.load(environ=env)
        assert loaded.drain_delay == float(env["GREETER_DRAIN_DELAY"])
        assert loaded.keepalive_min_time == float(env["GREETER_KEEPALIVE_MIN_TIME"])


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
    "loadtest": ("Job",),
    "auth": ("Secret",),
    "albingress": ("Ingress",),
    "nginxingress": ("Ingress",),
    "grpcroute": ("GRPCRoute",),
    "emissary": ("Mapping", "TLSContext"),
    # emissary.healthChecks: tests/test_chart_emissary.py.
    "emissary-healthchecks": ("KubernetesEndpointResolver",),
    # emissary.retries adds a second Mapping (the kind is emissary's): tests/test_chart_emissary.py.
    "emissary-retries": (),
    # web.enabled adds ports and routes to other features' objects: tests/test_chart_web.py.
    "web": (),
    # interop.enabled adds an env variable, a second helm test Pod and a GRPCRoute rule: below.
    "interop": (),
}


# Each gateway that can speak TLS to the pods, with tls.enabled: its ci/ values file.
TLS_GATEWAYS = {
    "tls-nginxingress": "nginxingress",
    "tls-emissary": "emissary",
    "tls-grpcroute": "grpcroute",
}


def test_every_ci_values_file_is_a_feature() -> None:
    names = {p.name.removesuffix("-values.yaml") for p in CI_VALUES}
    assert names == set(FEATURES) | set(TLS_GATEWAYS) | {"tls", "fault", "tracing"}


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
    # no cluster name, no cluster label: it would be empty
    assert "relabelings" not in monitor["spec"]["endpoints"][0]


def test_service_monitor_labels_every_series_with_the_cluster(render: Any) -> None:
    # The alert rules and the dashboard group by `cluster`; the scrape puts it on every series.
    values = {**ci_values("servicemonitor"), "cluster": {"name": "ack-hangzhou"}}
    (endpoint,) = ds.one(render(values), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["relabelings"] == [
        {"action": "replace", "targetLabel": "cluster", "replacement": "ack-hangzhou"}
    ]
    values["serviceMonitor"] = {**values["serviceMonitor"], "clusterLabel": ""}
    (endpoint,) = ds.one(render(values), "ServiceMonitor")["spec"]["endpoints"]
    assert "relabelings" not in endpoint


def helm_template_error(tmp: Path, *args: str) -> str:
    """helm template must refuse these values: its error message."""
    result = _helm(["template", "greeter", str(ds.CHART), "-n", "gateway-demo", *args], tmp)
    assert result.returncode != 0, "helm accepted values it should refuse"
    return result.stderr


# --- TLS to the pods, per gateway ---


def grpc_port(objects: list[dict[str, Any]]) -> dict[str, Any]:
    service = ds.one(objects, "Service")
    [port] = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    return port


def speaks_tls_to_the_pods(obj: dict[str, Any]) -> bool | None:
    """Whether a gateway object tells its gateway to speak TLS to the pods; None for objects
    that do not reach the pods (the Deployment, the terminating TLSContext...)."""
    kind = obj["kind"]
    annotations = obj["metadata"].get("annotations", {})
    if kind == "Service":
        return grpc_port([obj])["appProtocol"] == "https"
    if kind == "Ingress" and "nginx.ingress.kubernetes.io/backend-protocol" in annotations:
        return annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    if kind == "Ingress":
        # ALB: its gRPC server groups are cleartext; the chart refuses ALB with TLS.
        return annotations["alb.ingress.kubernetes.io/backend-protocol"] != "grpc"
    if kind == "Mapping":
        return obj["spec"]["service"].startswith("https://") and "tls" in obj["spec"]
    if kind == "GRPCRoute":
        # The route itself has no TLS field: a BackendTLSPolicy on its backend Service does.
        return None
    if kind == "BackendTLSPolicy":
        return True
    return None


def tls_objects(objects: list[dict[str, Any]]) -> dict[str, bool]:
    verdicts = {f"{o['kind']}/{o['metadata']['name']}": speaks_tls_to_the_pods(o) for o in objects}
    return {k: v for k, v in verdicts.items() if v is not None}


@pytest.mark.parametrize("name", sorted(TLS_GATEWAYS))
def test_tls_reaches_the_pods_through_every_object(name: str, render: Any) -> None:
    objects = render(ci_values(name))
    verdicts = tls_objects(objects)
    assert len(verdicts) >= 2, verdicts  # the Service and the gateway's own object
    assert all(verdicts.values()), verdicts
    assert "GREETER_TLS_CERT" in env_of(objects)


@pytest.mark.parametrize("name", sorted(set(TLS_GATEWAYS.values()) | {"albingress"}))
def test_without_tls_every_gateway_stays_cleartext(name: str, render: Any) -> None:
    """The non-TLS defaults are unchanged: h2c Service, GRPC, grpc, no BackendTLSPolicy."""
    objects = render(ci_values(name))
    verdicts = tls_objects(objects)
    assert verdicts
    assert not any(verdicts.values()), verdicts
    assert grpc_port(objects)["appProtocol"] == "kubernetes.io/h2c"
    assert "BackendTLSPolicy" not in {o["kind"] for o in objects}
    assert "GREETER_TLS_CERT" not in env_of(objects)


def test_every_tls_gateway_at_once(render: Any) -> None:
    """The issue's command, minus ALB: every object it renders speaks TLS to the pods."""
    values = {
        "tls": {"enabled": True, "serverName": "grpc.example.com"},
        "nginxIngress": {"enabled": True},
        "emissary": {"enabled": True},
        "grpcRoute": {"enabled": True, "backendTLS": {"systemCA": True}},
    }
    verdicts = tls_objects(render(values))
    assert set(verdicts) == {
        "Service/grpc-service",
        "Ingress/grpc-service-nginx",
        "Mapping/grpc-service",
        "BackendTLSPolicy/grpc-service",
    }
    assert all(verdicts.values()), verdicts


def test_service_app_protocol_follows_tls(render: Any, tmp_path: Path) -> None:
    assert grpc_port(render({}))["appProtocol"] == "kubernetes.io/h2c"
    assert grpc_port(render({"tls": {"enabled": True}}))["appProtocol"] == "https"
    custom = {"tls": {"enabled": True}, "service": {"appProtocol": "example.com/grpcs"}}
    assert grpc_port(render(custom))["appProtocol"] == "example.com/grpcs"
    error = helm_template_error(
        tmp_path, "--set", "tls.enabled=true", "--set", "service.appProtocol=kubernetes.io/h2c"
    )
    assert "service.appProtocol kubernetes.io/h2c" in error


def test_alb_refuses_tls_to_the_pods(tmp_path: Path) -> None:
    """ALB has no gRPC-over-TLS backend protocol: a clear error, not a cleartext Ingress."""
    error = helm_template_error(
        tmp_path, "--set", "albIngress.enabled=true", "--set", "tls.enabled=true"
    )
    assert "albIngress.enabled with tls.enabled" in error
    assert "cleartext" in error


def test_nginx_ingress_speaks_grpcs_and_verifies_the_pods(render: Any, tmp_path: Path) -> None:
    values = ci_values("tls-nginxingress")
    annotations = ds.one(render(values), "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    snippet = annotations["nginx.ingress.kubernetes.io/configuration-snippet"].splitlines()
    backend = values["nginxIngress"]["backendTLS"]
    assert snippet == [
        "grpc_ssl_verify on;",
        f"grpc_ssl_trusted_certificate {backend['trustedCertificate']};",
        f"grpc_ssl_name {values['tls']['serverName']};",
        "grpc_ssl_server_name on;",
        "grpc_ssl_verify_depth 2;",
    ]
    # proxy-ssl-* would only make proxy_ssl_* directives, which grpc_pass ignores.
    assert not [k for k in annotations if "proxy-ssl" in k]
    # Without verify: GRPCS, and no snippet (nothing the controller must allow).
    plain = render({"tls": {"enabled": True}, "nginxIngress": {"enabled": True}})
    annotations = ds.one(plain, "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    assert "nginx.ingress.kubernetes.io/configuration-snippet" not in annotations
    # tls.serverName defaults to the Service's cluster name.
    verified = {
        "tls": {"enabled": True},
        "nginxIngress": ci_values("tls-nginxingress")["nginxIngress"],
    }
    snippet_text = ds.one(render(verified), "Ingress")["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/configuration-snippet"
    ]
    assert "grpc_ssl_name grpc-service.gateway-demo.svc;" in snippet_text
    error = helm_template_error(
        tmp_path,
        *("--set", "tls.enabled=true", "--set", "nginxIngress.enabled=true"),
        *("--set", "nginxIngress.backendTLS.verify=true"),
    )
    assert "nginxIngress.backendTLS.trustedCertificate" in error
    error = helm_template_error(
        tmp_path,
        *("--set", "tls.enabled=true", "--set", "tls.clientCA=true"),
        *("--set", "nginxIngress.enabled=true"),
    )
    assert "nginxIngress.enabled with tls.clientCA" in error


NGINX_CONF = """daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpcs://127.0.0.1:{backend};
{snippet}
        }}
    }}
}}
"""


def nginx_snippet(render: Any, ca: Path, server_name: str) -> str:
    """The configuration-snippet the chart renders for ingress-nginx with verification on."""
    values = ci_values("tls-nginxingress")
    values["tls"]["serverName"] = server_name
    values["nginxIngress"]["backendTLS"]["trustedCertificate"] = str(ca)
    ingress = ds.one(render(values), "Ingress")
    snippet: str = ingress["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/configuration-snippet"
    ]
    return snippet


@contextlib.contextmanager
def nginx_in_front(nginx: str, prefix: Path, snippet: str, backend: int) -> Iterator[int]:
    """A real nginx whose location is ingress-nginx's for GRPCS (grpc_pass grpcs://) plus the
    snippet, listening on a free port (yielded); stopped on exit."""
    from conftest import free_port

    prefix.mkdir(parents=True)
    port = free_port()
    body = "\n".join(" " * 12 + line for line in snippet.splitlines())
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, backend=backend, snippet=body))
    proc = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(200):  # up to ~20 s for nginx to listen
            assert proc.poll() is None, (prefix / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def say_hello(port: int) -> grpc.StatusCode:
    from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        try:
            await stub.SayHello(helloworld_pb2.HelloRequest(name="tls"), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_ingress_nginx_snippet_verifies_the_pods_for_real(render: Any, tmp_path: Path) -> None:
    """The rendered grpc_ssl_* snippet, in a real nginx doing ingress-nginx's grpc_pass grpcs://
    in front of a real TLS Greeter: the call passes when the pod's certificate is signed by the
    trusted CA for tls.serverName, and is refused (UNAVAILABLE) for another name."""
    nginx = ds.tool("nginx")
    from conftest import free_port, running
    from greeter.certs import make_ca, make_leaf

    name = "grpc-service.gateway-demo.svc"
    ca = make_ca(tmp_path / "ca")
    leaf = make_leaf(tmp_path / "pod", "tls", [name], ca=ca)
    good = nginx_snippet(render, ca.cert, name)
    wrong_name = nginx_snippet(render, ca.cert, "other.gateway-demo.svc")
    backend = free_port()

    async def calls(ports: list[int]) -> list[grpc.StatusCode]:
        async with running(port=backend, tls_cert=str(leaf.cert), tls_key=str(leaf.key)):
            return [await say_hello(port) for port in ports]

    with (
        nginx_in_front(nginx, tmp_path / "good", good, backend) as good_port,
        nginx_in_front(nginx, tmp_path / "bad", wrong_name, backend) as bad_port,
    ):
        ok, refused = asyncio.run(calls([good_port, bad_port]))
    assert ok == grpc.StatusCode.OK, (tmp_path / "good" / "error.log").read_text()
    refused_log = (tmp_path / "bad" / "error.log").read_text()
    assert refused == grpc.StatusCode.UNAVAILABLE, refused_log
    assert "upstream SSL certificate does not match" in refused_log


def test_emissary_originates_tls_with_alpn_h2(render: Any, tmp_path: Path) -> None:
    """The seed's "Originating TLS with gRPC service": service over https, and the Mapping's
    tls: names a TLSContext that offers ALPN h2 (and here a client certificate for mTLS)."""
    values = ci_values("tls-emissary")
    objects = render(values)
    mapping = ds.one(objects, "Mapping")
    assert mapping["spec"]["service"] == "https://grpc-service.gateway-demo:50051"
    assert mapping["spec"]["grpc"] is True
    contexts = {c["metadata"]["name"]: c for c in ds.by_kind(objects, "TLSContext")}
    origination = contexts[mapping["spec"]["tls"]]
    assert origination["spec"]["alpn_protocols"] == "h2"
    assert "hosts" not in origination["spec"], "an origination context must not terminate"
    assert origination["spec"]["sni"] == "grpc-service.gateway-demo.svc"
    assert origination["spec"]["secret"] == values["emissary"]["originationSecret"]
    # The terminating context (client side) is unchanged.
    [terminating] = [c for name, c in contexts.items() if name != mapping["spec"]["tls"]]
    assert terminating["spec"]["hosts"] == ["grpc.example.com"]
    assert terminating["spec"]["alpn_protocols"] == "h2"
    # Without a client certificate the pods' mTLS would refuse Emissary: a clear error.
    error = helm_template_error(
        tmp_path,
        *("--set", "tls.enabled=true", "--set", "tls.clientCA=true"),
        *("--set", "emissary.enabled=true"),
    )
    assert "emissary.originationSecret" in error
    # TLS without mTLS needs no client certificate.
    plain = render({"tls": {"enabled": True}, "emissary": {"enabled": True}})
    [origination] = [c for c in ds.by_kind(plain, "TLSContext") if "hosts" not in c["spec"]]
    assert "secret" not in origination["spec"]


def test_emissary_without_tls_has_no_origination(render: Any) -> None:
    objects = render(ci_values("emissary"))
    mapping = ds.one(objects, "Mapping")
    assert "tls" not in mapping["spec"]
    assert not mapping["spec"]["service"].startswith("https://")
    assert len(ds.by_kind(objects, "TLSContext")) == 1


def test_grpcroute_backend_tls_policy(render: Any, tmp_path: Path) -> None:
    values = ci_values("tls-grpcroute")
    objects = render(values)
    policy = ds.one(objects, "BackendTLSPolicy")
    route = ds.one(objects, "GRPCRoute")
    service = ds.one(objects, "Service")
    [target] = policy["spec"]["targetRefs"]
    # The policy targets the Service (and port) the route's rules send to.
    backends = {b["name"] for rule in route["spec"]["rules"] for b in rule["backendRefs"]}
    assert target == {"group": "", "kind": "Service", "name": "grpc-service", "sectionName": "grpc"}
    assert target["name"] in backends
    assert target["name"] == service["metadata"]["name"]
    assert grpc_port(objects)["name"] == target["sectionName"]
    validation = policy["spec"]["validation"]
    assert validation["hostname"] == values["tls"]["serverName"]
    assert validation["caCertificateRefs"] == [
        {"group": "", "kind": "ConfigMap", "name": values["grpcRoute"]["backendTLS"]["caConfigMap"]}
    ]
    system = render(
        {"tls": {"enabled": True}, "grpcRoute": {"enabled": True, "backendTLS": {"systemCA": True}}}
    )
    validation = ds.one(system, "BackendTLSPolicy")["spec"]["validation"]
    assert validation == {
        "hostname": "grpc-service.gateway-demo.svc",
        "wellKnownCACertificates": "System",
    }
    assert ds.validate_all(system, ["1.30.0"]) == []
    # Neither CA, or both: a clear error.
    route_tls = ("--set", "tls.enabled=true", "--set", "grpcRoute.enabled=true")
    both = ["--set", "grpcRoute.backendTLS.caConfigMap=grpc-ca"]
    both += ["--set", "grpcRoute.backendTLS.systemCA=true"]
    for extra in ([], both):
        error = helm_template_error(tmp_path, *route_tls, *extra)
        assert "exactly one of grpcRoute.backendTLS.caConfigMap" in error


# --- ALB health checks that see the drain ---

ALB_HC = "alb.ingress.kubernetes.io/"


def alb_drain_seconds(annotations: dict[str, str]) -> int:
    """Worst case from the pod going UNAVAILABLE to ALB marking it unhealthy."""
    return int(annotations[ALB_HC + "healthcheck-interval-seconds"]) * int(
        annotations[ALB_HC + "unhealthy-threshold-count"]
    ) + int(annotations[ALB_HC + "healthcheck-timeout-seconds"])


def test_alb_health_checks_call_the_readiness_path(render: Any) -> None:
    objects = render(ci_values("albingress"))
    annotations = ds.one(objects, "Ingress")["metadata"]["annotations"]
    assert annotations[ALB_HC + "healthcheck-enabled"] == "true"
    assert annotations[ALB_HC + "healthcheck-protocol"] == "GRPC"
    assert annotations[ALB_HC + "healthcheck-method"] == "POST"
    assert annotations[ALB_HC + "healthcheck-path"] == "/greeter.v1.Readiness/Check"
    assert annotations[ALB_HC + "healthcheck-code"] == "0"
    # Inside ALB's documented ranges.
    assert 1 <= int(annotations[ALB_HC + "healthcheck-interval-seconds"]) <= 50
    assert 1 <= int(annotations[ALB_HC + "healthcheck-timeout-seconds"]) <= 300
    for key in ("healthy-threshold-count", "unhealthy-threshold-count"):
        assert 2 <= int(annotations[ALB_HC + key]) <= 10
    # ALB sees the drain well inside the drain delay: 1 x 2 + 1 = 3 s, + 1 s margin <= 5 s.
    drain = float(env_of(objects)["GREETER_DRAIN_DELAY"])
    margin = yaml.safe_load((ds.CHART / "values.yaml").read_text())["albIngress"]["healthCheck"][
        "marginSeconds"
    ]
    assert alb_drain_seconds(annotations) + margin <= drain
    off = render({"albIngress": {"enabled": True, "healthCheck": {"enabled": False}}})
    annotations = ds.one(off, "Ingress")["metadata"]["annotations"]
    assert not [k for k in annotations if "healthcheck" in k or "threshold" in k]


@pytest.mark.parametrize(
    "settings",
    [
        ["albIngress.healthCheck.intervalSeconds=2"],  # 2 x 2 + 1 + 1 = 6 > 5
        ["albIngress.healthCheck.unhealthyThreshold=4"],  # 1 x 4 + 1 + 1 = 6 > 5
        ["albIngress.healthCheck.timeoutSeconds=3"],  # 1 x 2 + 3 + 1 = 6 > 5
        ["server.drainDelay=3"],  # 1 x 2 + 1 + 1 = 4 > 3
        ["albIngress.healthCheck.marginSeconds=3"],  # 1 x 2 + 1 + 3 = 6 > 5
    ],
    ids=lambda s: s[0],
)
def test_alb_health_checks_that_miss_the_drain_are_refused(
    settings: list[str], tmp_path: Path
) -> None:
    args = ["--set", "albIngress.enabled=true"]
    for setting in settings:
        args += ["--set", setting]
    error = helm_template_error(tmp_path, *args)
    assert "albIngress.healthCheck" in error
    assert "server.drainDelay" in error


def test_alb_health_checks_need_no_token(render: Any, tmp_path: Path) -> None:
    """ALB's checks send no bearer token: with auth on, health (which covers
    greeter.v1.Readiness) must stay exempt."""
    auth = ["--set", "auth.enabled=true", "--set", "auth.tokens[0]=t"]
    error = helm_template_error(
        tmp_path, "--set", "albIngress.enabled=true", *auth, "--set", "auth.exempt=reflection"
    )
    assert 'needs "health" in auth.exempt' in error
    values = {"albIngress": {"enabled": True}, "auth": {"enabled": True, "tokens": ["t"]}}
    annotations = ds.one(render(values), "Ingress")["metadata"]["annotations"]
    assert annotations[ALB_HC + "healthcheck-path"] == "/greeter.v1.Readiness/Check"


def test_alb_health_check_timing_follows_the_drain_delay(render: Any) -> None:
    """A longer drain delay admits slower checks; the relation is exact at the boundary."""
    values = {
        "albIngress": {"enabled": True, "healthCheck": {"intervalSeconds": 2}},
        "server": {"drainDelay": 6},
    }
    annotations = ds.one(render(values), "Ingress")["metadata"]["annotations"]
    assert alb_drain_seconds(annotations) + 1 == 6
    # Without the ALB Ingress nothing is checked: a short drain delay is the user's choice.
    assert ds.by_kind(render({"server": {"drainDelay": 1}}), "Ingress") == []


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("albIngress.healthCheck.intervalSeconds=0", "intervalSeconds"),
        ("albIngress.healthCheck.intervalSeconds=51", "intervalSeconds"),
        ("albIngress.healthCheck.unhealthyThreshold=1", "unhealthyThreshold"),
        ("albIngress.healthCheck.healthyThreshold=11", "healthyThreshold"),
        ("albIngress.healthCheck.code=OK", "code"),
        ("albIngress.healthCheck.path=grpc.health.v1.Health", "path"),
        ("albIngress.healthCheck.protocol=HTTP", "additional properties 'protocol'"),
    ],
)
def test_alb_health_check_values_are_checked(setting: str, complaint: str, tmp_path: Path) -> None:
    result = _helm(["lint", "--strict", str(ds.CHART), "--set", setting], tmp_path)
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr


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
    # greeter check's request_size steps up to 8 MiB; nginx's 1m default answers 413
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "16m"
    changed = render(ci_values("nginxingress"), {"nginxIngress": {"maxBodySize": "0"}})
    assert (
        ds.one(changed, "Ingress")["metadata"]["annotations"][
            "nginx.ingress.kubernetes.io/proxy-body-size"
        ]
        == "0"
    )
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


def test_grpcroute_routes_the_interop_service_when_on(render: Any) -> None:
    def services(values: dict[str, Any]) -> set[str]:
        route = ds.one(render({"grpcRoute": {"enabled": True}}, values), "GRPCRoute")
        return {m["method"]["service"] for r in route["spec"]["rules"] for m in r["matches"]}

    interop = {"grpc.testing.TestService", "grpc.testing.UnimplementedService"}
    assert not services({}) & interop
    assert services(ci_values("interop")) >= interop


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
    # greeter check's slow_unary and stream_gaps: no per-call timeout, idle well past 70 s
    assert mapping["spec"]["timeout_ms"] == 0
    assert mapping["spec"]["idle_timeout_ms"] >= 70_000


def test_helm_test_pod_checks_grpc_health(render: Any) -> None:
    objects = render({})
    pod = ds.one(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = pod["spec"]["containers"][0]["args"]
    assert args[:2] == ["health", "grpc-service:50051"]
    assert "Pod" not in {o["kind"] for o in render({}, no_hooks=True)}
    assert "Pod" not in {o["kind"] for o in render({"helmTest": {"enabled": False}})}


def test_interop_serves_the_service_and_helm_test_checks_it(render: Any) -> None:
    assert "GREETER_INTEROP" not in env_of(render({}))
    objects = render(ci_values("interop"))
    assert env_of(objects)["GREETER_INTEROP"] == "true"
    pods = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Pod"}
    assert set(pods) == {"grpc-service-test-health", "grpc-service-test-check"}
    pod = pods["grpc-service-test-check"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["check", "grpc-service:50051", "--plaintext", "--max-wait", "5s"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    tls = render(ci_values("interop"), ci_values("tls"))
    [check] = [o for o in tls if o["metadata"]["name"] == "grpc-service-test-check"]
    assert check["spec"]["containers"][0]["args"][2:] == ["--tls", "--insecure", "--max-wait", "5s"]
    off = render(ci_values("interop"), {"helmTest": {"enabled": False}})
    assert "Pod" not in {o["kind"] for o in off}
    assert "grpc-service-test-check" not in {o["metadata"]["name"] for o in render({})}


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


class ManifestScan(NamedTuple):
    """checkov's verdict on a folder of rendered manifests."""

    failed: list[str]  # "CHECK name (resource, file)"
    scanned: set[str]  # names of the files it passed checks in
    skipped: list[tuple[str, str, str]]  # (file name, check id, reason) beyond .checkov.yaml


def checkov_manifests(rendered: Path, tmp: Path) -> ManifestScan:
    """Scan helm's output in ``rendered`` as Kubernetes manifests, with the chart's skips."""
    config = ds.CHART / ".checkov.yaml"
    out = _checkov(
        ["-d", str(rendered), "--framework", "kubernetes", "--config-file", str(config)], tmp
    )
    results = [report.get("results", {}) for report in out["reports"]]
    configured = set(yaml.safe_load(config.read_text())["skip-check"])
    return ManifestScan(
        failed=[
            f"{c['check_id']} {c['check_name']} ({c['resource']}, {c['file_path']})"
            for r in results
            for c in r.get("failed_checks", [])
        ],
        scanned={Path(c["file_path"]).name for r in results for c in r.get("passed_checks", [])},
        skipped=[
            (Path(c["file_path"]).name, c["check_id"], c["check_result"].get("suppress_comment"))
            for r in results
            for c in r.get("skipped_checks", [])
            if c["check_id"] not in configured
        ],
    )


def test_checkov_every_ci_values_file(tmp_path: Path) -> None:
    """checkov -d chart renders the defaults only: every ci/ combination (the TLS gateways
    included) is rendered by helm and scanned as Kubernetes manifests, with the same skips."""
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for values in CI_VALUES:
        args = ["template", "greeter", str(ds.CHART), "-n", "gateway-demo", "-f", str(values)]
        result = _helm(args, tmp_path)
        assert result.returncode == 0, result.stderr
        (rendered / values.name).write_text(result.stdout)
    scan = checkov_manifests(rendered, tmp_path)
    assert scan.scanned == {p.name for p in CI_VALUES}, "checkov skipped some renderings"
    assert scan.failed == []
    unexplained = [check for _, check, reason in scan.skipped if not reason]
    assert unexplained == [], "every skip needs a reason"


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
