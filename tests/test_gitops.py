"""gitops/: every manifest valid against its controller's schema, names that agree with the
chart and the walkthrough, the ApplicationSet rendered for two clusters, the cert tool."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import deploy_support as ds
import pytest
import yaml

# gitops/policies/ are overlays over fleet/: tests/test_gitops_policies.py validates them as built.
MANIFESTS = sorted(
    p
    for p in ds.GITOPS.rglob("*.yaml")
    if p.name != "kustomization.yaml" and "policies" not in p.relative_to(ds.GITOPS).parts
)
APPSET = ds.GITOPS / "argocd" / "applicationset.yaml"
FLEET = ds.GITOPS / "fleet"
_TEMPLATE = re.compile(r"\{\{\s*\.([A-Za-z_][\w.]*)\s*\}\}")


def fill_template(node: Any, params: dict[str, str]) -> Any:
    """Apply the ApplicationSet's Go-template fields (only `{{.key}}` is used here) with
    missingkey=error semantics: an unknown key is an error, as Argo CD makes it."""
    if isinstance(node, dict):
        return {fill_template(k, params): fill_template(v, params) for k, v in node.items()}
    if isinstance(node, list):
        return [fill_template(v, params) for v in node]
    if isinstance(node, str):

        def sub(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in params:
                raise KeyError(f"map has no entry for key {key!r}")
            return params[key]

        leftover = _TEMPLATE.sub(sub, node)
        assert "{{" not in leftover, f"template syntax this test cannot apply: {node!r}"
        return leftover
    return node


def appset() -> dict[str, Any]:
    [doc] = ds.load_yaml_documents(APPSET)
    return doc


def generate_application(cluster: dict[str, str]) -> dict[str, Any]:
    """The Application the cluster generator makes for one cluster."""
    spec = appset()["spec"]
    params = {"name": cluster["name"], "nameNormalized": cluster["name"], **cluster}
    app: dict[str, Any] = fill_template(copy.deepcopy(spec["template"]), params)
    return app


def all_gitops_objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in ds.load_yaml_documents(path)]


def test_gitops_has_the_walkthrough_files() -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in all_gitops_objects()}
    assert kinds == {
        ("ApplicationSet", "appset-grpc-demo"),
        ("Namespace", "gateway-demo"),
        ("AlbConfig", "ackone-gateway-demo"),
        ("IngressClass", "alb"),
        ("Ingress", "grpc-ingress"),
    }


def test_every_gitops_manifest_validates() -> None:
    objects = all_gitops_objects()
    assert ds.validate_all(objects, ds.KUBE_VERSIONS) == []


def test_validators_reject_broken_gitops_objects() -> None:
    """Each validator used above can fail: one broken object per schema source."""
    objects = {o["kind"]: o for o in all_gitops_objects()}
    albconfig = copy.deepcopy(objects["AlbConfig"])
    albconfig["spec"]["listeners"][0]["protocl"] = "HTTPS"
    appset_bad = copy.deepcopy(objects["ApplicationSet"])
    appset_bad["spec"]["syncPolicy"] = {"preserveResourcesOnDeletion": "yes"}
    ingress = copy.deepcopy(objects["Ingress"])
    ingress["spec"]["tls"][0]["secret"] = "grpc-secret"
    problems = ds.validate_all([albconfig, appset_bad, ingress], ["1.30.0"])
    assert any("AlbConfig" in p and "protocl" in p for p in problems), problems
    assert any("ApplicationSet" in p for p in problems), problems
    assert any("Ingress/" in p and "secret" in p for p in problems), problems


def test_applicationset_generates_per_cluster_apps() -> None:
    doc = appset()
    assert doc["metadata"] == {"name": "appset-grpc-demo", "namespace": "argocd"}
    spec = doc["spec"]
    assert spec["goTemplate"] is True
    assert "missingkey=error" in spec["goTemplateOptions"]
    [generator] = spec["generators"]
    # The in-cluster entry has no cluster Secret, so this selector leaves it out.
    assert generator["clusters"]["selector"]["matchLabels"] == {
        "argocd.argoproj.io/secret-type": "cluster"
    }
    sync = spec["template"]["spec"]["syncPolicy"]
    assert "CreateNamespace=true" in sync["syncOptions"]
    assert sync["automated"]["prune"] is True
    names = set()
    for cluster in ds.EXAMPLE_CLUSTERS:
        app = generate_application(cluster)
        names.add(app["metadata"]["name"])
        assert app["spec"]["destination"] == {
            "server": cluster["server"],
            "namespace": "gateway-demo",
        }
        source = app["spec"]["source"]
        assert (ds.ROOT / source["path"] / "Chart.yaml").is_file()
        assert source["helm"]["valuesObject"]["cluster"]["name"] == cluster["name"]
    assert len(names) == len(ds.EXAMPLE_CLUSTERS)


def test_missing_template_key_is_an_error() -> None:
    with pytest.raises(KeyError):
        fill_template({"name": "{{.clusterName}}"}, {"name": "x"})


def test_applications_deploy_the_chart_with_each_cluster_name(tmp_path: Path) -> None:
    for cluster in ds.EXAMPLE_CLUSTERS:
        app = generate_application(cluster)
        helm = app["spec"]["source"]["helm"]
        objects = ds.render(
            [helm["valuesObject"]],
            release=helm["releaseName"],
            namespace=app["spec"]["destination"]["namespace"],
            tmp=tmp_path,
        )
        deployment = ds.one(objects, "Deployment")
        env = {
            e["name"]: e.get("value")
            for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["GREETER_CLUSTER_NAME"] == cluster["name"]
        assert ds.one(objects, "Service")["metadata"]["name"] == "grpc-service"


def test_fleet_ingress_matches_the_chart_service(tmp_path: Path) -> None:
    objects = {o["kind"]: o for o in all_gitops_objects()}
    ingress = objects["Ingress"]
    assert ingress["metadata"]["namespace"] == "gateway-demo"
    annotations = ingress["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/backend-protocol"] == "grpc"
    assert json.loads(annotations["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTPS": 443}]
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert ingress["spec"]["tls"] == [{"hosts": ["grpc.example.com"], "secretName": "grpc-secret"}]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]

    chart_objects = ds.render([{}], tmp=tmp_path)
    service = ds.one(chart_objects, "Service")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["number"] in {p["port"] for p in service["spec"]["ports"]}

    ingress_class = objects["IngressClass"]
    assert ingress_class["spec"]["parameters"] == {
        "apiGroup": "alibabacloud.com",
        "kind": "AlbConfig",
        "name": objects["AlbConfig"]["metadata"]["name"],
    }


HEALTH_CHECK_KEYS = (
    "healthcheck-enabled",
    "healthcheck-protocol",
    "healthcheck-method",
    "healthcheck-path",
    "healthcheck-code",
    "healthcheck-interval-seconds",
    "healthcheck-timeout-seconds",
    "healthy-threshold-count",
    "unhealthy-threshold-count",
)
ALB = "alb.ingress.kubernetes.io/"


def fleet_ingress() -> dict[str, Any]:
    return next(o for o in all_gitops_objects() if o["kind"] == "Ingress")


def argocd_render(cluster: dict[str, str], tmp: Path, *extra: dict[str, Any]) -> list[Any]:
    """The chart as Argo CD renders it for one cluster, with extra values on top."""
    app = generate_application(cluster)
    helm = app["spec"]["source"]["helm"]
    return ds.render(
        [helm["valuesObject"], *extra],
        release=helm["releaseName"],
        namespace=app["spec"]["destination"]["namespace"],
        tmp=tmp,
    )


def test_fleet_ingress_health_checks_match_the_chart_and_the_drain(tmp_path: Path) -> None:
    """The fleet Ingress's ALB gRPC health checks equal the chart's albIngress.healthCheck
    defaults, and ALB sees a draining pod within the drain delay the fleet's pods get."""
    annotations = fleet_ingress()["metadata"]["annotations"]
    fleet = {key: annotations[ALB + key] for key in HEALTH_CHECK_KEYS}
    assert fleet["healthcheck-enabled"] == "true"
    assert fleet["healthcheck-protocol"] == "GRPC"
    assert fleet["healthcheck-method"] == "POST"
    assert fleet["healthcheck-path"] == "/greeter.v1.Readiness/Check"
    assert fleet["healthcheck-code"] == "0"
    cluster = ds.EXAMPLE_CLUSTERS[0]
    objects = argocd_render(cluster, tmp_path, {"albIngress": {"enabled": True}})
    chart_ingress = ds.one(objects, "Ingress")["metadata"]["annotations"]
    assert fleet == {key: chart_ingress[ALB + key] for key in HEALTH_CHECK_KEYS}
    env = {
        e["name"]: e.get("value")
        for e in ds.one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    drain = float(env["GREETER_DRAIN_DELAY"])
    seen = int(fleet["healthcheck-interval-seconds"]) * int(fleet["unhealthy-threshold-count"])
    seen += int(fleet["healthcheck-timeout-seconds"])
    margin = yaml.safe_load((ds.CHART / "values.yaml").read_text())["albIngress"]["healthCheck"][
        "marginSeconds"
    ]
    assert seen + margin <= drain, f"ALB sees the drain after {seen} s, the drain lasts {drain} s"


def pod_hop_problems(objects: list[dict[str, Any]], ingress: dict[str, Any]) -> list[str]:
    """What the fleet Ingress's backend protocol says about the pods, against the pods the
    chart renders: ALB's grpc server groups are cleartext, so the pods must be too."""
    protocol = ingress["metadata"]["annotations"][ALB + "backend-protocol"]
    container = ds.one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    pods_tls = any(e["name"] == "GREETER_TLS_CERT" for e in container["env"])
    service = ds.one(objects, "Service")
    [port] = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    problems = []
    if protocol != "grpc":
        problems.append(f"backend-protocol {protocol}: gRPC through ALB needs grpc")
    if pods_tls:
        problems.append("the pods serve TLS, but ALB's grpc server groups speak cleartext")
    if port["appProtocol"] != "kubernetes.io/h2c":
        problems.append(f"the Service port says {port['appProtocol']}, not kubernetes.io/h2c")
    return problems


def test_fleet_pods_speak_what_the_fleet_ingress_sends(tmp_path: Path) -> None:
    ingress = fleet_ingress()
    for cluster in ds.EXAMPLE_CLUSTERS:
        assert pod_hop_problems(argocd_render(cluster, tmp_path), ingress) == []
    # The check is real: an ApplicationSet that turned TLS on in the pods is caught.
    with_tls = argocd_render(ds.EXAMPLE_CLUSTERS[0], tmp_path, {"tls": {"enabled": True}})
    problems = pod_hop_problems(with_tls, ingress)
    assert any("the pods serve TLS" in p for p in problems), problems
    assert any("https" in p for p in problems), problems


def readme_values_variant() -> dict[str, Any]:
    """The ApplicationSet valuesObject the README offers for the ALB-to-pod hop."""
    text = (ds.GITOPS / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    [block] = [b for b in blocks if b.startswith("valuesObject:")]
    data: dict[str, Any] = yaml.safe_load(block)["valuesObject"]
    return data


def test_readme_network_policy_variant_admits_only_the_alb(tmp_path: Path) -> None:
    variant = readme_values_variant()
    appset_values = appset()["spec"]["template"]["spec"]["source"]["helm"]["valuesObject"]
    assert variant["cluster"] == appset_values["cluster"], "the variant must keep cluster.name"
    cluster = ds.EXAMPLE_CLUSTERS[1]
    filled = fill_template(variant, {"name": cluster["name"]})
    objects = argocd_render(cluster, tmp_path, filled)
    assert ds.validate_all(objects, ["1.27.0", "1.34.0"]) == []
    policy = ds.one(objects, "NetworkPolicy")
    [grpc_rule] = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "grpc"]
    assert grpc_rule["from"] == variant["networkPolicy"]["gateway"]["from"]
    assert all(set(peer) == {"ipBlock"} for peer in grpc_rule["from"])
    assert pod_hop_problems(objects, fleet_ingress()) == []


def test_readme_explains_tls_and_health_checks() -> None:
    text = (ds.GITOPS / "README.md").read_text()
    for needle in (
        "/greeter.v1.Readiness/Check",
        "grpc.health.v1.Health/Check",
        "1 x 2 + 1 = **3 s**",
        "server.drainDelay",
        "GRPCS",
        "BackendTLSPolicy",
        "alpn",
    ):
        assert needle.lower() in text.lower(), needle


def test_albconfig_has_https_443_and_marked_placeholders() -> None:
    albconfig = next(o for o in all_gitops_objects() if o["kind"] == "AlbConfig")
    [listener] = [x for x in albconfig["spec"]["listeners"] if x["port"] == 443]
    assert listener["protocol"] == "HTTPS"
    # greeter check's slow_unary and stream_gaps wait up to 70 s (--max-wait): ALB's 60 s
    # request timeout would answer 504 first; 180 s is the listener's maximum.
    assert listener["requestTimeout"] == 180
    assert listener["idleTimeout"] == 60
    remote = albconfig["metadata"]["annotations"]["alb.ingress.kubernetes.io/remote-clusters"]
    assert all(c.startswith("REPLACE_ME") for c in remote.split(","))
    vswitches = [z["vSwitchId"] for z in albconfig["spec"]["config"]["zoneMappings"]]
    assert len(vswitches) == 2
    assert all(v.startswith("REPLACE_ME") for v in vswitches)


def test_kustomize_builds_the_fleet_folder(tmp_path: Path) -> None:
    kubectl = ds.helm_paths()["kubectl"]
    result = ds.run([str(kubectl), "kustomize", str(FLEET)], env=ds.helm_env(tmp_path))
    assert result.returncode == 0, result.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc)
    assert kinds == ["AlbConfig", "Ingress", "IngressClass", "Namespace"]


def test_make_cert_writes_a_valid_tls_secret(tmp_path: Path) -> None:
    from cryptography import x509

    result = ds.run([ds.python(), str(ds.ROOT / "tools" / "make_cert.py"), "--out", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    [secret] = ds.load_yaml_documents(tmp_path / "grpc-secret.yaml")
    assert secret["metadata"] == {"name": "grpc-secret", "namespace": "gateway-demo"}
    assert secret["type"] == "kubernetes.io/tls"
    assert ds.validate_core([secret], ["1.27.0", "1.34.0"]) == []
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["grpc.example.com"]
    assert (tmp_path / "tls.key").stat().st_mode & 0o077 == 0


def test_readme_walks_the_steps_end_to_end() -> None:
    text = (ds.GITOPS / "README.md").read_text()
    for needle in (
        "tools/make_cert.py",
        "kubectl apply -f gitops/argocd/applicationset.yaml",
        "kubectl apply -k gitops/fleet",
        "REPLACE_ME",
        "grpcurl -insecure -authority grpc.example.com",
        "greeter load",
        "--insecure --authority grpc.example.com",
        "greeter deploy",
    ):
        assert needle in text, needle
    last_block = text.rsplit("```", 2)[-2]
    assert "greeter load" in last_block
