"""The chart's ``web.enabled``: the gRPC-Web port in the container, the Service and the
NetworkPolicy, the server's settings in the env, and the routes next to the gRPC ones:
ALB and ingress-nginx Ingresses (HTTP backends), the Emissary Mappings (page and CORS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import deploy_support as ds
import pytest
from test_chart import ci_values, container_of, env_of, render_notes

from greeter import settings


@pytest.fixture
def render(tmp_path: Path) -> Any:
    def _render(*values: dict[str, Any]) -> list[dict[str, Any]]:
        return ds.render(list(values), tmp=tmp_path)

    return _render


def named(objects: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [o for o in ds.by_kind(objects, kind) if o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, [o["metadata"]["name"] for o in ds.by_kind(objects, kind)]
    return found[0]


def test_web_is_off_by_default(render: Any) -> None:
    objects = render({"nginxIngress": {"enabled": True}, "emissary": {"enabled": True}})
    assert "GREETER_WEB_PORT" not in env_of(objects)
    assert [p["name"] for p in container_of(objects)["ports"]] == ["grpc", "metrics"]
    assert len(ds.by_kind(objects, "Ingress")) == 1
    mapping = ds.one(objects, "Mapping")
    assert "cors" not in mapping["spec"]


def test_web_port_reaches_container_service_env_and_policy(render: Any) -> None:
    objects = render(ci_values("web"))
    ports = {p["name"]: p["containerPort"] for p in container_of(objects)["ports"]}
    assert ports["web"] == 8080
    env = env_of(objects)
    assert env["GREETER_WEB_PORT"] == "8080"
    assert env["GREETER_WEB_CORS_ORIGINS"] == "https://app.example.com"
    # the server accepts what the chart sets
    raw = {k: v for k, v in env.items() if isinstance(v, str) and k.startswith("GREETER_")}
    loaded = settings.load({}, raw)
    assert loaded.web_port == 8080
    assert loaded.web_cors_origins == ("https://app.example.com",)
    service = {p["name"]: p for p in ds.one(objects, "Service")["spec"]["ports"]}
    assert service["web"]["port"] == 8080
    assert service["web"]["targetPort"] == "web"
    assert service["web"]["appProtocol"] == "http"
    policy = ds.one(objects, "NetworkPolicy")["spec"]["ingress"][0]
    assert {"port": "web", "protocol": "TCP"} in policy["ports"]


def test_ingresses_route_the_web_host_to_an_http_backend(render: Any) -> None:
    objects = render(ci_values("web"))
    nginx = named(objects, "Ingress", "-nginx-web")
    annotations = nginx["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTP"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    rule = nginx["spec"]["rules"][0]
    assert rule["host"] == "web.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"]["port"] == {"name": "web"}
    alb = named(objects, "Ingress", "-alb-web")
    assert alb["metadata"]["annotations"]["alb.ingress.kubernetes.io/backend-protocol"] == "http"
    assert alb["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] == {
        "number": 8080
    }
    # the gRPC Ingresses are still there, still gRPC
    grpc = named(objects, "Ingress", "-nginx")
    assert grpc["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert named(objects, "Ingress", "-alb")["spec"]["rules"][0]["host"] == "grpc.example.com"


def test_emissary_mappings_page_and_cors(render: Any) -> None:
    objects = render(ci_values("web"))
    web = named(objects, "Mapping", "-web")["spec"]
    assert web["hostname"] == "web.example.com"
    assert web["service"].endswith(":8080")
    assert "grpc" not in web
    grpc = [m for m in ds.by_kind(objects, "Mapping") if m["spec"].get("grpc")]
    assert len(grpc) == 1
    cors = grpc[0]["spec"]["cors"]
    assert cors["origins"] == ["https://app.example.com"]
    assert {
        "grpc-status",
        "grpc-message",
        "x-greeter-cluster",
        "x-greeter-pod",
        "server-timing",
    } <= set(cors["exposed_headers"])
    assert "POST" in cors["methods"]


def test_gateway_api_httproute_next_to_the_grpcroute(render: Any) -> None:
    objects = render(ci_values("web"))
    route = ds.one(objects, "HTTPRoute")["spec"]
    assert route["hostnames"] == ["web.example.com"]
    assert route["rules"][0]["backendRefs"] == [{"name": "grpc-service", "port": 8080}]
    assert route["parentRefs"] == ds.one(objects, "GRPCRoute")["spec"]["parentRefs"]


def test_web_with_tls_speaks_https_to_the_pods(render: Any) -> None:
    values = {
        "web": {"enabled": True},
        "tls": {"enabled": True, "secretName": "pods-tls"},
        "nginxIngress": {"enabled": True},
        "emissary": {"enabled": True},
        "grpcRoute": {"enabled": True, "backendTLS": {"systemCA": True}},
    }
    objects = render(values)
    policy = ds.one(objects, "BackendTLSPolicy")["spec"]
    assert {ref["sectionName"] for ref in policy["targetRefs"]} == {"grpc", "web"}
    service = {p["name"]: p for p in ds.one(objects, "Service")["spec"]["ports"]}
    assert service["web"]["appProtocol"] == "https"
    nginx = named(objects, "Ingress", "-nginx-web")
    assert nginx["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == (
        "HTTPS"
    )
    web = named(objects, "Mapping", "-web")["spec"]
    assert web["service"].startswith("https://")
    assert web["tls"].endswith("-upstream")


def test_web_renderings_validate_against_real_schemas(render: Any) -> None:
    objects = render(ci_values("web"))
    assert ds.validate_all(objects, ds.KUBE_VERSIONS[-1:]) == []
    with_tls = render(
        ci_values("web"),
        {"tls": {"enabled": True, "secretName": "pods-tls"}, "albIngress": {"enabled": False}},
        {"grpcRoute": {"backendTLS": {"systemCA": True}}},
    )
    assert ds.validate_all(with_tls, ds.KUBE_VERSIONS[-1:]) == []


def test_notes_tell_how_to_open_the_page(tmp_path: Path) -> None:
    values = ["-f", str(ds.CHART / "ci" / "web-values.yaml")]
    notes = render_notes(values, tmp_path)
    assert "port-forward svc/grpc-service 8080:8080" in notes
    assert "http://localhost:8080/" in notes
    assert "greeter call localhost:8080 --protocol grpc-web" in notes
    assert "https://web.example.com/" in notes
    assert "8080" not in render_notes([], tmp_path / "defaults")
