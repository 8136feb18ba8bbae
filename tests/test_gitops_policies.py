"""gitops/policies/: the traffic-policy overlays (weighted split, header routing to one
cluster, active/standby) build with kustomize, every object they build validates like the
rest of gitops/, and they agree with the fleet files they patch (cluster IDs, host, Service,
health checks)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import deploy_support as ds
import pytest
import yaml

POLICIES = ds.GITOPS / "policies"
NAMES = ("weighted", "header-route", "active-standby")
WEIGHT = "alb.ingress.kubernetes.io/cluster-weight."
CONDITIONS = "alb.ingress.kubernetes.io/conditions."
# A Kubernetes annotation key: an optional DNS-subdomain prefix, then a name of at most 63
# characters (alphanumerics, '-', '_', '.', starting and ending alphanumeric).
KEY_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
# What a real ACK cluster ID looks like (c + 32 hex digits), to check the keys once filled in.
REAL_ID = "c" + "0123456789abcdef" * 2


def build(name: str, tmp_path: Path) -> list[dict[str, Any]]:
    kubectl = ds.helm_paths()["kubectl"]
    result = ds.run([str(kubectl), "kustomize", str(POLICIES / name)], env=ds.helm_env(tmp_path))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def ingresses(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "Ingress"}


def weights(ingress: dict[str, Any]) -> dict[str, int]:
    annotations = ingress["metadata"]["annotations"]
    return {k.removeprefix(WEIGHT): int(v) for k, v in annotations.items() if k.startswith(WEIGHT)}


def remote_clusters(objects: list[dict[str, Any]]) -> list[str]:
    [albconfig] = [o for o in objects if o["kind"] == "AlbConfig"]
    return str(
        albconfig["metadata"]["annotations"]["alb.ingress.kubernetes.io/remote-clusters"]
    ).split(",")


def test_every_policy_folder_is_here() -> None:
    assert sorted(p.name for p in POLICIES.iterdir() if p.is_dir()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_policy_builds_and_validates(name: str, tmp_path: Path) -> None:
    objects = build(name, tmp_path)
    assert ds.validate_all(objects, ds.KUBE_VERSIONS) == []
    # everything of gitops/fleet is in it, so it is applied instead of fleet, not beside it
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert kinds >= {
        ("Namespace", "gateway-demo"),
        ("AlbConfig", "ackone-gateway-demo"),
        ("IngressClass", "alb"),
        ("Ingress", "grpc-ingress"),
    }
    for ingress in ingresses(objects).values():
        for key in ingress["metadata"]["annotations"]:
            prefix, _, key_name = key.rpartition("/")
            filled = key_name.replace("REPLACE_ME_CLUSTER_ID_1", REAL_ID)
            filled = filled.replace("REPLACE_ME_CLUSTER_ID_2", REAL_ID)
            assert KEY_NAME.fullmatch(filled), key
            assert prefix == "alb.ingress.kubernetes.io", key


def test_the_validators_reject_a_broken_policy(tmp_path: Path) -> None:
    """An unquoted weight (a number where annotations take strings) and a misspelt field
    in a policy's Ingress both fail the checks used above."""
    built = ingresses(build("weighted", tmp_path))["grpc-ingress"]
    unquoted = copy.deepcopy(built)
    key = next(k for k in unquoted["metadata"]["annotations"] if k.startswith(WEIGHT))
    unquoted["metadata"]["annotations"][key] = 80
    misspelt = copy.deepcopy(built)
    misspelt["spec"]["rules"][0]["hosts"] = ["grpc.example.com"]
    problems = ds.validate_all([unquoted], ["1.30.0"])
    assert any("annotations" in p and "string" in p for p in problems), problems
    problems = ds.validate_all([misspelt], ["1.30.0"])
    assert any("hosts" in p for p in problems), problems


@pytest.mark.parametrize(
    ("name", "expected"), [("weighted", [80, 20]), ("active-standby", [100, 0])]
)
def test_weights_name_the_fleet_clusters_and_add_up_to_100(
    name: str, expected: list[int], tmp_path: Path
) -> None:
    objects = build(name, tmp_path)
    ingress = ingresses(objects)["grpc-ingress"]
    got = weights(ingress)
    clusters = remote_clusters(objects)
    assert list(got) == clusters  # in the AlbConfig's order: cluster 1 first
    assert list(got.values()) == expected
    assert sum(got.values()) == 100
    assert all(c.startswith("REPLACE_ME") for c in got)
    # the patch adds to the fleet Ingress: gRPC annotations and health checks are kept
    fleet = next(o for o in ds.load_yaml_documents(ds.GITOPS / "fleet" / "ingress.yaml"))
    for key, value in fleet["metadata"]["annotations"].items():
        assert ingress["metadata"]["annotations"][key] == value
    assert ingress["spec"] == fleet["spec"]


def test_header_route_sends_marked_calls_to_one_cluster(tmp_path: Path) -> None:
    objects = build("header-route", tmp_path)
    found = ingresses(objects)
    assert set(found) == {"grpc-ingress", "grpc-ingress-header"}
    default, header = found["grpc-ingress"], found["grpc-ingress-header"]
    assert weights(default) == {}  # unmarked calls keep the even spread
    assert weights(header) == {remote_clusters(objects)[0]: 100}
    annotations = header["metadata"]["annotations"]
    # same listener, host, path, Service and health checks as the default rule
    for key, value in default["metadata"]["annotations"].items():
        assert annotations[key] == value, key
    assert header["spec"] == default["spec"]
    # evaluated before the default rule (ALB's default order is 10, lower goes first)
    assert int(annotations["alb.ingress.kubernetes.io/order"]) < 10
    backend = header["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
    [conditions_key] = [k for k in annotations if k.startswith(CONDITIONS)]
    assert conditions_key == CONDITIONS + backend
    [condition] = json.loads(annotations[conditions_key])
    assert condition == {
        "type": "Header",
        "headerConfig": {"key": "x-cluster", "values": ["REPLACE_ME_CLUSTER_NAME_1"]},
    }


def test_policy_placeholders_are_marked() -> None:
    texts = {p: p.read_text() for p in POLICIES.rglob("*.yaml")}
    found = set()
    for path, text in texts.items():
        for match in re.finditer(r"REPLACE_ME\w*", text):
            found.add(match.group())
        # no other placeholder style slipped in
        assert "${" not in text, path
        assert "<cluster" not in text.lower(), path
    assert found == {
        "REPLACE_ME",
        "REPLACE_ME_CLUSTER_ID_1",
        "REPLACE_ME_CLUSTER_ID_2",
        "REPLACE_ME_CLUSTER_NAME_1",
    }


def test_readme_documents_the_policies() -> None:
    text = (ds.GITOPS / "README.md").read_text()
    section = text.split("## Traffic policies", 1)[1]
    for name in NAMES:
        assert f"kubectl apply -k gitops/policies/{name}" in section
    for needle in (
        "--expect-split",
        "--expect-cluster",
        "alibabacloud.com/help",
        "not confirmed",
        "cluster-weight",
    ):
        assert needle in section, needle
