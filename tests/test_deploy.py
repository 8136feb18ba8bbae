"""greeter.deploy: the Helm path without Argo CD, driving the real helm through pyhelm3."""

from __future__ import annotations

import argparse
from pathlib import Path

import deploy_support as ds
import pytest
import yaml

deploy = pytest.importorskip("greeter.deploy")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="greeter")
    deploy.register(top.add_subparsers(dest="command"))
    return top


def test_parse_set_types_values_like_helm() -> None:
    assert deploy.parse_set(["a.b=1", "a.c=true", "d=x", "e=null"]) == {
        "a": {"b": 1, "c": True},
        "d": "x",
        "e": None,
    }
    with pytest.raises(deploy.DeployError):
        deploy.parse_set(["novalue"])


def test_values_order_files_then_set_then_cluster(tmp_path: Path) -> None:
    values_file = tmp_path / "v.yaml"
    values_file.write_text("cluster: {name: from-file}\nreplicaCount: 3\npdb: {enabled: true}\n")
    values = deploy.build_values(
        cluster_name="ack-1", value_files=[values_file], sets=["replicaCount=4"]
    )
    assert values == {"cluster": {"name": "ack-1"}, "replicaCount": 4, "pdb": {"enabled": True}}


def test_render_command_prints_the_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    helm = ds.helm_paths()["helm"]
    args = parser().parse_args(
        [
            "deploy",
            "render",
            "--cluster-name",
            "ack-2",
            "--set",
            "pdb.enabled=true",
            "--helm",
            str(helm),
            "--chart",
            str(ds.CHART),
        ]
    )
    env = ds.helm_env(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        for key in ("HOME", "HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            mp.setenv(key, env[key])
        assert args.func(args) == 0
    objects = [o for o in yaml.safe_load_all(capsys.readouterr().out) if o]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["Deployment", "PodDisruptionBudget", "Service"]
    assert all(o["metadata"]["namespace"] == "gateway-demo" for o in objects)
    container = ds.one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env_values = {e["name"]: e.get("value") for e in container["env"]}
    assert env_values["GREETER_CLUSTER_NAME"] == "ack-2"


def test_render_reports_a_bad_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    helm = ds.helm_paths()["helm"]
    args = parser().parse_args(
        [
            "deploy",
            "render",
            "--set",
            "servce.port=1",
            "--helm",
            str(helm),
            "--chart",
            str(ds.CHART),
        ]
    )
    env = ds.helm_env(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", env["HOME"])
        assert args.func(args) == 1
    assert "servce" in capsys.readouterr().err


def test_missing_helm_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["deploy", "render", "--helm", "", "--chart", str(ds.CHART)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", "/nonexistent")
        mp.delenv("GREETER_HELM", raising=False)
        assert args.func(args) == 2
    assert "helm" in capsys.readouterr().err


def test_greeter_deploy_command_line(tmp_path: Path) -> None:
    """Through the installed entry point, as a user types it."""
    helm = ds.helm_paths()["helm"]
    env = ds.helm_env(tmp_path)
    env["GREETER_HELM"] = str(helm)
    env["GREETER_CHART"] = str(ds.CHART)
    result = ds.run(
        [ds.python(), "-m", "greeter", "deploy", "render", "--cluster-name", "ack-3"],
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    assert {o["kind"] for o in objects} == {"Deployment", "Service"}
    assert "ack-3" in result.stdout
