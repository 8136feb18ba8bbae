"""The chart's ``loadtest.enabled``: a distributed load test as an Indexed Job.

Rendered by the real helm binary; the Job validated against the Kubernetes schemas and
scanned by checkov; its arguments parsed by the real ``greeter load`` command line; and
the rendered containers run for real, pod by pod, against a real server on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import deploy_support as ds
import jsonschema
import pytest
import yaml
from test_chart import checkov_manifests, ci_values, helm_template_error, render_notes

from greeter.cli import build_parser

TARGET = "grpc.example.com:443"
REPORTS = "/reports"
REPORT_SCHEMA = ds.ROOT / "service" / "greeter" / "load" / "report.schema.json"
LOAD_DOC = ds.ROOT / "docs" / "load.md"


@pytest.fixture
def render(tmp_path: Path) -> Any:
    def _render(*values: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
        return ds.render(list(values), tmp=tmp_path, **kwargs)

    return _render


def loadtest(**values: Any) -> dict[str, Any]:
    """Values with the load test on, through the gateway unless a target is given."""
    return {"loadtest": {"enabled": True, "target": TARGET, **values}}


def job_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return ds.one(objects, "Job")


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = job_of(objects)["spec"]["template"]["spec"]
    return spec


def load_args(objects: list[dict[str, Any]]) -> list[str]:
    [load] = pod_spec(objects)["initContainers"]
    assert load["name"] == "load"
    args: list[str] = load["args"]
    return args


def flag(args: list[str], name: str) -> str:
    """The value after ``name`` in ``args`` (which must hold it exactly once)."""
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def flags_all(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def helm_template(
    tmp: Path, *args: str, release: str = "greeter", namespace: str = "gateway-demo"
) -> str:
    """The Job as `helm template ... --show-only templates/job-loadtest.yaml ARGS` prints it."""
    helm = ds.helm_paths()["helm"]
    result = ds.run(
        [
            str(helm),
            "template",
            release,
            str(ds.CHART),
            "-n",
            namespace,
            "--show-only",
            "templates/job-loadtest.yaml",
            *args,
        ],
        env=ds.helm_env(tmp),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render_job(tmp: Path, *args: str, **kwargs: str) -> dict[str, Any]:
    job: dict[str, Any] = yaml.safe_load(helm_template(tmp, *args, **kwargs))
    return job


def parse_start(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- what renders, and when ---


def test_nothing_renders_when_off(render: Any) -> None:
    objects = render({"loadtest": {"target": TARGET}})
    assert ds.by_kind(objects, "Job") == []
    defaults = yaml.safe_load((ds.CHART / "values.yaml").read_text())["loadtest"]
    assert defaults["enabled"] is False


def test_an_indexed_job_of_n_pods(render: Any) -> None:
    objects = render(loadtest(parallelism=3, ttlSecondsAfterFinished=600))
    job = job_of(objects)
    assert job["metadata"]["name"] == "grpc-service-load"
    assert job["metadata"]["namespace"] == "gateway-demo"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == 600
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # The same image as the servers.
    server = ds.one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    [load] = pod["initContainers"]
    [report] = pod["containers"]
    assert load["image"] == report["image"] == server["image"]
    args = load_args(objects)
    assert args[:2] == ["load", TARGET]
    assert flag(args, "-O") == "json"
    assert flag(args, "-o") == f"{REPORTS}/report.json"
    assert flag(args, "-z") == "60s"
    assert flag(args, "--call") == "SayHello"
    assert "--plaintext" in args
    assert "--tls" not in args
    # The report container prints that file, and it is what `kubectl logs POD` shows.
    assert report["command"][:2] == ["python", "-c"]
    assert report["command"][-1] == f"{REPORTS}/report.json"
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == "report"
    mounts = {m["name"]: m["mountPath"] for m in load["volumeMounts"]}
    assert mounts["reports"] == REPORTS
    assert {"name": "reports", "mountPath": REPORTS, "readOnly": True} in report["volumeMounts"]
    assert {"name": "reports", "emptyDir": {"sizeLimit": "16Mi"}} in pod["volumes"]


def test_the_pods_are_locked_down(render: Any) -> None:
    pod = pod_spec(render(loadtest()))
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*pod["initContainers"], *pod["containers"]]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
        assert container["resources"]["requests"]["cpu"], container["name"]
        assert container["resources"]["limits"]["memory"], container["name"]


def test_the_servers_selectors_never_pick_a_load_pod(render: Any) -> None:
    """The load pods carry this release's instance but their own name: the Service, the
    PodDisruptionBudget and the NetworkPolicy select servers only."""
    values = {**loadtest(), "pdb": {"enabled": True}}
    values["networkPolicy"] = ci_values("networkpolicy")["networkPolicy"]
    objects = render(values)
    labels = job_of(objects)["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == "greeter"
    assert labels["app.kubernetes.io/component"] == "loadtest"
    selectors = [
        ds.one(objects, "Service")["spec"]["selector"],
        ds.one(objects, "Deployment")["spec"]["selector"]["matchLabels"],
        ds.one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        ds.one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert not selector.items() <= labels.items(), selector
    # Through a gateway, the NetworkPolicy is unchanged: the load comes in like any client.
    grpc_rule = ds.one(objects, "NetworkPolicy")["spec"]["ingress"][0]
    assert grpc_rule["from"] == values["networkPolicy"]["gateway"]["from"]


def test_the_network_policy_admits_load_pods_that_dial_the_service(render: Any) -> None:
    values = {
        "loadtest": {"enabled": True},
        "networkPolicy": ci_values("networkpolicy")["networkPolicy"],
    }
    objects = render(values)
    labels = job_of(objects)["spec"]["template"]["metadata"]["labels"]
    grpc_rule = ds.one(objects, "NetworkPolicy")["spec"]["ingress"][0]
    assert grpc_rule["ports"][0]["port"] == "grpc"
    selectors = [p["podSelector"]["matchLabels"] for p in grpc_rule["from"] if "podSelector" in p]
    assert [s for s in selectors if s.items() <= labels.items()], grpc_rule


# --- the rate split and the common start ---


@pytest.mark.parametrize(
    ("rps", "parallelism", "share"),
    [
        (100, 2, "50"),
        (1000, 3, "333.333333"),
        (1000000, 1, "1000000"),
        (3000000, 7, "428571.428571"),
        (0.5, 4, "0.125"),
        (250.5, 2, "125.25"),
    ],
)
def test_each_pod_sends_its_share_of_the_rate(
    rps: float, parallelism: int, share: str, render: Any
) -> None:
    args = load_args(render(loadtest(rps=rps, parallelism=parallelism)))
    assert flag(args, "--rps") == share
    assert float(share) * parallelism == pytest.approx(rps, rel=1e-6)


def test_the_rate_split_from_set_flags(tmp_path: Path) -> None:
    """--set gives helm an integer, not a float: the same share."""
    job = render_job(
        tmp_path, "--set", "loadtest.enabled=true", "--set", "loadtest.rps=1000",
        "--set", "loadtest.parallelism=8",
    )  # fmt: skip
    [load] = job["spec"]["template"]["spec"]["initContainers"]
    assert flag(load["args"], "--rps") == "125"


def test_a_given_start_time_is_passed_as_is(render: Any) -> None:
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).replace(microsecond=0)
    text = start.isoformat().replace("+00:00", "Z")
    job = job_of(render(loadtest(startAt=text, duration="2m", deadlineMargin="5m")))
    assert flag(job["spec"]["template"]["spec"]["initContainers"][0]["args"], "--start-at") == (
        text
    )
    # The deadline covers the wait, the run and the margin (and no more than a few seconds of
    # rendering on top).
    deadline = job["spec"]["activeDeadlineSeconds"]
    assert 3600 + 120 + 300 - 10 <= deadline <= 3600 + 120 + 300


def test_the_default_start_is_rendering_time_plus_the_delay(render: Any) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    job = job_of(render(loadtest(startDelay="90s", duration="30s", deadlineMargin="1m")))
    after = dt.datetime.now(dt.UTC)
    text = flag(job["spec"]["template"]["spec"]["initContainers"][0]["args"], "--start-at")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text), text
    start = parse_start(text)
    assert before + dt.timedelta(seconds=90) <= start <= after + dt.timedelta(seconds=90)
    assert job["spec"]["activeDeadlineSeconds"] in range(90 + 30 + 60 - 1, 90 + 30 + 60 + 2)


def test_a_start_time_in_a_values_file_stays_a_string(tmp_path: Path) -> None:
    """YAML would read 2030-06-01T12:00:00Z as a timestamp; helm keeps it a string."""
    values = tmp_path / "values.yaml"
    values.write_text("loadtest:\n  enabled: true\n  startAt: 2030-06-01T12:00:00Z\n")
    job = render_job(tmp_path, "-f", str(values))
    assert flag(job["spec"]["template"]["spec"]["initContainers"][0]["args"], "--start-at") == (
        "2030-06-01T12:00:00Z"
    )


# --- TLS, authority, metadata, token ---


def test_ci_values_through_a_gateway_with_tls(render: Any) -> None:
    values = ci_values("loadtest")
    objects = render(values)
    args = load_args(objects)
    lt = values["loadtest"]
    assert args[1] == lt["target"]
    assert "--tls" in args
    assert "--plaintext" not in args
    assert flag(args, "--cacert") == "/etc/greeter-load/ca/ca.crt"
    assert flag(args, "--authority") == lt["authority"]
    assert flags_all(args, "-m") == ["x-canary:true"]
    assert flag(args, "--rps") == "250"
    assert flag(args, "--connections") == "2"
    pod = pod_spec(objects)
    [ca] = [v for v in pod["volumes"] if v["name"] == "ca"]
    assert ca["configMap"]["name"] == lt["tls"]["caConfigMap"]
    assert ca["configMap"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    mounts = {m["name"]: m["mountPath"] for m in pod["initContainers"][0]["volumeMounts"]}
    assert mounts["ca"] == "/etc/greeter-load/ca"


def test_tls_variants(render: Any) -> None:
    secret = load_args(render(loadtest(tls={"caSecret": "grpc-ca", "clientSecret": "load-mtls"})))
    assert "--tls" in secret
    assert flag(secret, "--cacert") == "/etc/greeter-load/ca/ca.crt"
    assert flag(secret, "--cert") == "/etc/greeter-load/client/tls.crt"
    assert flag(secret, "--key") == "/etc/greeter-load/client/tls.key"
    insecure = load_args(render(loadtest(tls={"insecure": True})))
    assert "--insecure" in insecure
    assert "--cacert" not in insecure
    system_roots = load_args(render(loadtest(tls={"enabled": True})))
    assert "--tls" in system_roots
    assert "--cacert" not in system_roots
    assert "--authority" not in system_roots


def test_metadata_keys_in_order(render: Any) -> None:
    args = load_args(render(loadtest(metadata={"x-b": "2", "x-a": "one: two"})))
    assert flags_all(args, "-m") == ["x-a:one: two", "x-b:2"]


def test_the_bearer_token_never_enters_the_job(render: Any) -> None:
    objects = render(loadtest(bearerToken={"secretName": "load-token", "key": "t"}))
    args = load_args(objects)
    assert flags_all(args, "-m") == ["authorization:Bearer $(LOAD_BEARER_TOKEN)"]
    [load] = pod_spec(objects)["initContainers"]
    assert load["env"] == [
        {
            "name": "LOAD_BEARER_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "load-token", "key": "t"}},
        }
    ]


def test_by_default_the_release_s_own_service(render: Any) -> None:
    args = load_args(render({"loadtest": {"enabled": True}}))
    assert args[1] == "grpc-service.gateway-demo.svc:50051"
    assert "--plaintext" in args
    # With TLS on the pods: TLS, verified for the pods' name with the CA given.
    values = {
        "tls": {"enabled": True},
        "loadtest": {"enabled": True, "tls": {"caSecret": "grpc-secret"}},
    }
    args = load_args(render(values))
    assert "--tls" in args
    assert flag(args, "--authority") == "grpc-service.gateway-demo.svc"
    assert flag(args, "--cacert") == "/etc/greeter-load/ca/ca.crt"
    values["tls"]["serverName"] = "grpc.internal.example.com"
    assert flag(load_args(render(values)), "--authority") == "grpc.internal.example.com"


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (["tls.enabled=true"], "set loadtest.tls.caSecret"),
        (
            ["tls.enabled=true", "tls.clientCA=true", "loadtest.tls.insecure=true"],
            "set loadtest.tls.clientSecret",
        ),
        (["auth.enabled=true", "auth.tokens[0]=t"], "set loadtest.bearerToken.secretName"),
        (
            ["loadtest.tls.caSecret=a", "loadtest.tls.caConfigMap=b"],
            "loadtest.tls.caSecret and loadtest.tls.caConfigMap",
        ),
        (["loadtest.tls.insecure=true", "loadtest.tls.caSecret=a"], "loadtest.tls.insecure"),
        (["loadtest.metadata.grpc-timeout=1S"], 'loadtest.metadata: "grpc-timeout"'),
        (["loadtest.metadata.authorization=Bearer x"], "loadtest.bearerToken"),
        (["loadtest.rps=0.000001", "loadtest.parallelism=3"], "under 0.000001 calls"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_contradictions_are_refused(settings: list[str], complaint: str, tmp_path: Path) -> None:
    args = ["--set", "loadtest.enabled=true"]
    for setting in settings:
        # --set reads a fraction as a string: --set-json passes it as a number.
        args += ["--set-json" if re.search(r"=\d*\.\d+$", setting) else "--set", setting]
    assert complaint in helm_template_error(tmp_path, *args)


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("loadtest.parallelism=0", "/loadtest/parallelism"),
        ("loadtest.rps=0", "/loadtest/rps"),
        ("loadtest.rps=-5", "/loadtest/rps"),
        ("loadtest.duration=60", "/loadtest/duration"),
        ("loadtest.duration=1 minute", "/loadtest/duration"),
        ("loadtest.startDelay=soon", "/loadtest/startDelay"),
        ("loadtest.startAt=tomorrow", "/loadtest/startAt"),
        ("loadtest.startAt=2030-06-01 12:00", "/loadtest/startAt"),
        ("loadtest.target=grpc.example.com", "/loadtest/target"),
        ("loadtest.call=Hello", "/loadtest/call"),
        ("loadtest.concurrency=0", "/loadtest/concurrency"),
        ("loadtest.metadata.X-Canary=true", "/loadtest/metadata"),
        ("loadtest.tls.caSecret=Not_A_Name", "/loadtest/tls/caSecret"),
        ("loadtest.rpss=1", "additional properties 'rpss' not allowed"),
    ],
)
def test_schema_refuses_bad_values(setting: str, complaint: str, tmp_path: Path) -> None:
    error = helm_template_error(tmp_path, "--set", "loadtest.enabled=true", "--set", setting)
    assert complaint in error


# --- schemas and scanners ---

VARIANTS = {
    "gateway": loadtest(),
    "own-service": {"loadtest": {"enabled": True}},
    "ci": ci_values("loadtest"),
    "tracing": ci_values("tracing"),
    "mtls-token": {
        "tls": {"enabled": True, "clientCA": True},
        "loadtest": {
            "enabled": True,
            "tls": {"caSecret": "grpc-secret", "clientSecret": "load-mtls"},
            "bearerToken": {"secretName": "load-token"},
            "metadata": {"x-canary": "true"},
            "extraArgs": ["--warmup", "5s"],
            "nodeSelector": {"pool": "load"},
            "tolerations": [{"key": "load", "operator": "Exists", "effect": "NoSchedule"}],
        },
        "imagePullSecrets": [{"name": "registry"}],
    },
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_job_validates_strictly_on_every_kubernetes_version(name: str, render: Any) -> None:
    objects = render(VARIANTS[name])
    assert ds.validate_all([job_of(objects)], ds.KUBE_VERSIONS) == []


def test_checkov_passes_on_every_variant(tmp_path: Path) -> None:
    """Each variant rendered by helm and scanned, with the chart's checkov configuration;
    the only skip beyond it is the bearer token's environment variable, with its reason."""
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for name, values in VARIANTS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        (rendered / f"{name}.yaml").write_text(helm_template(tmp_path, "-f", str(path)))
    scan = checkov_manifests(rendered, tmp_path)
    assert scan.failed == []
    assert scan.scanned == {f"{name}.yaml" for name in VARIANTS}
    assert [(file, check) for file, check, _ in scan.skipped] == [("mtls-token.yaml", "CKV_K8S_35")]
    assert all(reason for _, _, reason in scan.skipped)


# --- the arguments as greeter load reads them ---


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_greeter_load_accepts_the_rendered_arguments(name: str, render: Any) -> None:
    objects = render(VARIANTS[name])
    args = load_args(objects)
    parsed, unknown = build_parser().parse_known_args(args)
    assert unknown == [], unknown
    at = dt.datetime.fromisoformat(flag(args, "--start-at").replace("Z", "+00:00"))
    assert parsed.start_at == pytest.approx(at.timestamp())
    lt = {**yaml.safe_load((ds.CHART / "values.yaml").read_text())["loadtest"]}
    lt.update(VARIANTS[name]["loadtest"])
    assert parsed.command == "load"
    assert parsed.format == "json"
    assert parsed.output == f"{REPORTS}/report.json"
    assert parsed.rps * lt["parallelism"] == pytest.approx(lt["rps"])
    assert parsed.duration == {"60s": 60.0, "2m": 120.0}[lt["duration"]]
    assert parsed.concurrency == lt["concurrency"]
    assert parsed.procs == lt["procs"]
    assert parsed.quiet is True
    assert parsed.trace_sample == lt["traceSample"]
    assert parsed.tls is True or parsed.plaintext is True
    assert len(parsed.metadata) == len(lt.get("metadata", {})) + bool(
        lt["bearerToken"].get("secretName")
    )


# --- the rendered pods, run for real ---


def kubernetes_expand(arg: str, env: dict[str, str]) -> str:
    """What the kubelet does to a container argument: $(NAME) becomes the variable's value."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)


def as_local(arg: str, reports: Path) -> str:
    """The pod's report volume, as a folder of this test."""
    return str(reports) + arg[len(REPORTS) :] if arg.startswith(REPORTS + "/") else arg


def run_pod(
    job: dict[str, Any], index: int, reports: Path, env: dict[str, str]
) -> subprocess.Popen[str]:
    """Start pod ``index``'s load container as the image would run it: ``greeter ARGS``."""
    [load] = job["spec"]["template"]["spec"]["initContainers"]
    pod_env = {e["name"]: env[e["valueFrom"]["secretKeyRef"]["name"]] for e in load.get("env", [])}
    args = [as_local(kubernetes_expand(a, pod_env), reports) for a in load["args"]]
    reports.mkdir(parents=True, exist_ok=True)
    greeter = Path(sys.executable).parent / "greeter"
    environ = {**os.environ, "JOB_COMPLETION_INDEX": str(index), **pod_env}
    return subprocess.Popen(
        [str(greeter), *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_pods(
    job: dict[str, Any], tmp: Path, secrets: dict[str, str]
) -> tuple[list[subprocess.Popen[str]], list[tuple[str, str]]]:
    """Every index's load container at once, each to its end (2 minutes at most)."""
    pods = [run_pod(job, i, tmp / f"pod-{i}", secrets) for i in range(job["spec"]["completions"])]
    try:
        return pods, [p.communicate(timeout=120) for p in pods]
    finally:
        for pod in pods:
            if pod.poll() is None:
                pod.kill()
                pod.communicate()


def print_report(job: dict[str, Any], reports: Path) -> str:
    """Run the pod's report container: its output is the pod's log, `kubectl logs -c report`."""
    [report] = job["spec"]["template"]["spec"]["containers"]
    command = [as_local(a, reports) for a in report["command"]]
    assert command[0] == "python"
    result = subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_rendered_pods_load_a_real_server(
    spawn_server: Any, render: Any, tmp_path: Path
) -> None:
    """Two indexes of the rendered Job, each the `greeter load` of its init container (with
    the token Kubernetes would expand into its argument) and then its report container,
    against a real server that requires that token: each pod's log is one clean report."""
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    srv = spawn_server(
        env={"GREETER_AUTH_ENABLED": "true", "GREETER_AUTH_TOKENS_FILE": str(tokens)}
    )
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=6)
    values = {
        "loadtest": {
            "enabled": True,
            "target": srv.address,
            "parallelism": 2,
            "rps": 40,
            "duration": "2s",
            "startAt": start.isoformat().replace("+00:00", "Z"),
            "concurrency": 4,
            "metadata": {"x-load-test": "chart"},
            "bearerToken": {"secretName": "load-token"},
        }
    }
    job = job_of(render(values))
    secrets = {"load-token": "s3cret"}
    pods, outcomes = run_pods(job, tmp_path, secrets)
    for pod, (out, err) in zip(pods, outcomes, strict=True):
        assert pod.returncode == 0, err
        assert out == "", "with -o the report goes to the file only"
    schema = json.loads(REPORT_SCHEMA.read_text())
    for index in range(2):
        log = print_report(job, tmp_path / f"pod-{index}")
        assert log == (tmp_path / f"pod-{index}" / "report.json").read_text()
        report = json.loads(log)
        jsonschema.validate(report, schema)
        assert report["options"]["rps"] == 20
        assert report["options"]["duration_s"] == 2
        assert sorted(report["options"]["metadata_keys"]) == ["authorization", "x-load-test"]
        assert report["count"] > 0
        assert report["errors"] == 0, report["status_codes"]
        assert report["ok"] == report["count"]
        assert report["options"]["start_at"] is not None
        # Both began their clock at the rendered start time (a bound, not a benchmark).
        began = dt.datetime.fromisoformat(report["started_at"])
        assert abs((began - start).total_seconds()) < 1.0, report["started_at"]
        (tmp_path / f"report-{index}.json").write_text(log)
    # The docs' last step: the pods' logs merged, and gated, by `greeter load merge`.
    greeter = Path(sys.executable).parent / "greeter"
    merged = subprocess.run(
        [str(greeter), "load", "merge", "-O", "json", "--max-error-rate", "1%",
         str(tmp_path / "report-0.json"), str(tmp_path / "report-1.json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    whole = json.loads(merged.stdout)
    parts = [json.loads((tmp_path / f"report-{i}.json").read_text()) for i in range(2)]
    assert whole["merged_from"] == 2
    assert whole["count"] == sum(p["count"] for p in parts)
    assert whole["options"]["rps"] == 40
    jsonschema.validate(whole, schema)


# --- docs/load.md walks the run ---


def doc_section() -> str:
    text = LOAD_DOC.read_text()
    at = text.index("## Load from many machines (Indexed Job)")
    end = text.find("\n## ", at + 1)
    return text[at : end if end > 0 else None]


def test_the_documented_install_renders_the_documented_job(tmp_path: Path) -> None:
    """The docs' `helm upgrade --install` line, run as `helm template`: its Job is the one
    the collection commands name, with the containers they read."""
    section = doc_section()
    [install] = [
        block
        for block in re.findall(r"```console\n(.*?)```", section, re.S)
        if "helm upgrade --install" in block
    ]
    command = install.replace("\\\n", " ").split("\n")[0].removeprefix("$ ")
    words = shlex.split(command)
    sets = [w for i, w in enumerate(words) if words[i - 1] == "--set"]
    assert "loadtest.enabled=true" in sets
    args = [a for setting in sets for a in ("--set", setting)]
    release, namespace = words[words.index("--install") + 1], words[words.index("-n") + 1]
    job = render_job(tmp_path, *args, release=release, namespace=namespace)
    assert ds.validate_all([job], ds.KUBE_VERSIONS) == []
    name = job["metadata"]["name"]
    assert f"job/{name}" in section
    assert f"batch.kubernetes.io/job-name={name}" in section
    assert "batch.kubernetes.io/job-completion-index" in section
    assert "-c report" in section
    assert "-c load" in section
    assert "--tail=-1" in section, "kubectl logs -l shows only 10 lines without it"
    assert "greeter load merge report-*.json" in section
    n = job["spec"]["parallelism"]
    assert f"seq 0 {n - 1}" in section


def test_chart_values_point_to_the_docs() -> None:
    text = (ds.CHART / "values.yaml").read_text()
    assert '"Load from many machines (Indexed Job)"' in text
    assert "## Load from many machines (Indexed Job)" in LOAD_DOC.read_text()


def test_notes_tell_how_to_collect_the_reports(tmp_path: Path) -> None:
    notes = render_notes(
        ["--set", "loadtest.enabled=true", "--set", "loadtest.parallelism=3"], tmp_path
    )
    assert "kubectl wait -n gateway-demo --for=condition=complete" in notes
    assert "job/grpc-service-load" in notes
    assert "for i in $(seq 0 2); do" in notes
    assert "-c report --tail=-1 -l batch.kubernetes.io/job-name=grpc-service-load," in notes
    assert "greeter load merge report-*.json" in notes
    assert "grpc-service-load" not in render_notes([], tmp_path / "off")
