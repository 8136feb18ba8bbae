"""The chart's own pod, run for real: the Deployment `helm template` renders from chart/, played
with `podman kube play` on the image built from the Dockerfile (conftest.py's ``greeter_image``,
the one build test_image.py uses too), once with the default values and once with ci/tls-values
(TLS with client certificates, from the Secret its user makes).

Each pod is reached over hostPorts on 127.0.0.1 that the test chooses: gRPC health SERVING,
SayHello answered by the pod podman named (downward API) in the cluster named in values,
/metrics, the chart's read-only root, non-root user, no capabilities, no new privileges and
seccomp, and the chart's liveness probe run in the container.

Podman 4.3 is not a kubelet. Where it cannot do what Kubernetes does, ``for_podman`` changes
exactly that field in the test's copy of the manifest, and says why; the chart is never changed
to suit podman, and everything else is played as rendered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deploy_support as ds
import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, outside_env
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.certs import Pair, make_ca, make_leaf
from greeter.client import Target, identity_of, open_channel

# The first test may build the image (and its base): a longer time limit than pytest's default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(ds.BUILD_TEST_TIMEOUT)]

NAMESPACE = "gateway-demo"
CLUSTER = "podman-cluster"
# What the test puts where Kubernetes would put the node's name (see for_podman).
NODE = "podman-node"
# The name gateways verify the pods' certificate for: the chart's default tls.serverName, the
# Service's DNS name.
SERVICE_DNS = f"grpc-service.{NAMESPACE}.svc"
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Pki:
    ca: Pair
    server: Pair
    client: Pair


@dataclass(frozen=True)
class PlayedPod:
    name: str  # the pod's name, as podman gave it
    container: str  # the greeter container's id
    grpc_port: int
    metrics_port: int
    values: dict[str, Any]
    deployment: dict[str, Any]  # as the chart rendered it
    pki: Pki | None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def target(self, authority: str = SERVICE_DNS, client_cert: bool = True) -> Target:
        """How a gateway reaches the pod: TLS verified against the CA for the Service's name."""
        if self.pki is None:
            return Target(self.address)
        cert = self.pki.client if client_cert else None
        return Target(
            self.address,
            cacert=str(self.pki.ca.cert),
            authority=authority,
            cert=str(cert.cert) if cert else "",
            key=str(cert.key) if cert else "",
        )


def podman(*args: str, env: dict[str, str], timeout: float = 120) -> Any:
    return ds.run([ds.tool("podman"), *args], env=env, timeout=timeout)


def chart_values(image: str, tls: bool) -> dict[str, Any]:
    repository, _, tag = image.rpartition(":")
    values: dict[str, Any] = {
        "replicaCount": 1,
        "image": {"repository": repository, "tag": tag},
        "cluster": {"name": CLUSTER},
    }
    if tls:
        values |= yaml.safe_load((ds.CHART / "ci" / "tls-values.yaml").read_text())
    return values


def make_pki(folder: Path) -> Pki:
    ca = make_ca(folder)
    # With tls.clientCA the chart's probes present the pod's own certificate, so it must allow
    # client authentication too (see tls.clientCA in values.yaml).
    server = make_leaf(folder, "tls", [SERVICE_DNS, "localhost"], ca, also_client=True)
    client = make_leaf(folder, "client", ["gateway"], ca, client=True)
    return Pki(ca, server, client)


def tls_secret(name: str, pki: Pki) -> dict[str, Any]:
    """The kubernetes.io/tls Secret the chart mounts (tls.secretName): its user makes it (e.g.
    with cert-manager), the chart does not. ca.crt is there for tls.clientCA."""
    files = {"tls.crt": pki.server.cert, "tls.key": pki.server.key, "ca.crt": pki.ca.cert}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "type": "kubernetes.io/tls",
        "data": {key: base64.b64encode(path.read_bytes()).decode() for key, path in files.items()},
    }


def secret_files(secret: dict[str, Any], folder: Path, mode: int, group: int | None) -> Path:
    """The Secret's keys as files, as the kubelet writes a secret volume: the volume's
    defaultMode, group-owned by the pod's fsGroup."""
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    contents = {k: base64.b64decode(v) for k, v in secret.get("data", {}).items()}
    contents |= {k: v.encode() for k, v in secret.get("stringData", {}).items()}
    assert contents, f"Secret {secret['metadata']['name']} has no keys"
    for key, content in contents.items():
        path = folder / key
        path.write_bytes(content)
        path.chmod(mode)
        if group is not None:
            os.chown(path, 0, group)
    return folder


def for_podman(
    deployment: dict[str, Any],
    grpc_port: int,
    metrics_port: int,
    secrets: dict[str, dict[str, Any]],
    folder: Path,
) -> tuple[dict[str, Any], list[str]]:
    """A copy of the rendered Deployment that podman 4.3 plays, and what was changed.

    Only what podman cannot do is replaced; the chart's Deployment is not touched."""
    copy: dict[str, Any] = json.loads(json.dumps(deployment))
    spec = copy["spec"]["template"]["spec"]
    [container] = spec["containers"]
    changed: list[str] = []

    # Publishing: podman 4.3 has no --publish for kube play; a hostPort on 127.0.0.1 per port.
    host_ports = {"grpc": grpc_port, "metrics": metrics_port}
    for port in container["ports"]:
        port["hostIP"] = "127.0.0.1"
        port["hostPort"] = host_ports[port["name"]]
        changed.append(f"ports.{port['name']}.hostPort")

    # Downward API: podman 4.3 rejects fieldRef spec.nodeName and metadata.namespace ("not valid
    # or not supported"); plain values stand in. metadata.name (the pod's name) stays a fieldRef.
    stand_ins = {"spec.nodeName": NODE, "metadata.namespace": NAMESPACE}
    for item in container["env"]:
        field = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field in stand_ins:
            del item["valueFrom"]
            item["value"] = stand_ins[field]
            changed.append(f"env.{item['name']}")

    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        if "grpc" in probe:
            # Podman runs no gRPC probes (it drops them silently): the same Health/Check on
            # the same port for the same service, made by `greeter health` in the container.
            grpc_probe = probe.pop("grpc")
            probe["exec"] = {
                "command": [
                    "greeter",
                    "health",
                    f"localhost:{grpc_probe['port']}",
                    "--service",
                    grpc_probe.get("service", ""),
                    "-t",
                    str(probe["timeoutSeconds"]),
                ]
            }
            changed.append(f"{kind}.grpc")
        # Podman runs an exec probe as `sh -c` over its words joined by spaces, which loses
        # empty words such as `--service ""`: quoting each word gives the container exactly
        # the argv the kubelet would exec.
        probe["exec"]["command"] = [shlex.quote(word) for word in probe["exec"]["command"]]

    # Secret volumes: podman 4.3 plays a Secret, but writes its values into the volume
    # base64-encoded (and leaves stringData out), and crashes when `optional` is unset. The
    # copy mounts the Secret's keys from a folder instead, written as the kubelet would; the
    # volumeMount (path, readOnly) stays as rendered.
    fs_group = spec.get("securityContext", {}).get("fsGroup")
    for volume in spec["volumes"]:
        if "secret" in volume:
            source = volume.pop("secret")
            mode = source.get("defaultMode", 0o644)
            files = secret_files(
                secrets[source["secretName"]], folder / volume["name"], mode, fs_group
            )
            volume["hostPath"] = {"path": str(files), "type": "Directory"}
            changed.append(f"volumes.{volume['name']}.secret")
    return copy, changed


def play_output_ids(stdout: str) -> dict[str, list[str]]:
    """`podman kube play` prints "Pod:" and "Container:" each followed by ids."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in stdout.splitlines():
        line = line.strip()
        if line.endswith(":"):
            section = line[:-1]
        elif line and section:
            found.setdefault(section, []).append(line)
    return found


def greeter_health(pod: PlayedPod) -> Any:
    """`greeter health` over the hostPort, as an operator would run it (TLS: verified)."""
    args = [pod.address, "-t", "3", "--connect-timeout", "3"]
    target = pod.target()
    if target.secure:
        args += ["--cacert", target.cacert, "--authority", target.authority]
        args += ["--cert", target.cert, "--key", target.key]
    return ds.run([ds.python(), "-m", "greeter", "health", *args], env=outside_env(), timeout=30)


def wait_serving(pod: PlayedPod, env: dict[str, str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    result = greeter_health(pod)
    while result.returncode != 0 and time.monotonic() < deadline:
        time.sleep(1)
        result = greeter_health(pod)
    if result.returncode != 0:
        logs = podman("logs", "--tail", "40", pod.container, env=env)
        state = podman("inspect", pod.container, "--format", "{{json .State}}", env=env)
        raise AssertionError(
            f"the pod did not answer health within {START_TIMEOUT}s: {result.stderr}\n"
            f"state: {state.stdout}\nlogs:\n{logs.stdout}{logs.stderr}"
        )
    assert "status: SERVING" in result.stdout, result.stdout


@pytest.fixture(scope="module", params=["defaults", "tls"])
def pod(
    request: pytest.FixtureRequest,
    greeter_image: ds.BuiltImage,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PlayedPod]:
    """The chart's Deployment (and the Secret it mounts) played by podman, torn down after."""
    ds.tool("catatonit")  # podman builds the pod's pause container from it
    tls = request.param == "tls"
    tmp = tmp_path_factory.mktemp(f"pod-{request.param}")
    env = greeter_image.env
    values = chart_values(greeter_image.name, tls)
    objects = ds.render([values], namespace=NAMESPACE, no_hooks=True, tmp=tmp)
    deployment = ds.one(objects, "Deployment")
    # The Secrets the pod mounts: the chart's own, or (tls.secretName) the one its user makes.
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    secrets = {o["metadata"]["name"]: o for o in ds.by_kind(objects, "Secret")}
    pki = None
    for name in [v["secret"]["secretName"] for v in volumes if "secret" in v]:
        if name not in secrets:
            assert tls, f"the pod mounts Secret {name}, which nothing makes"
            assert name == values["tls"]["secretName"]
            pki = make_pki(tmp / "pki")
            secrets[name] = tls_secret(name, pki)
    assert (pki is not None) == tls

    grpc_port, metrics_port = free_port(), free_port()
    played, changed = for_podman(deployment, grpc_port, metrics_port, secrets, tmp / "volumes")
    assert [c for c in changed if c.startswith("env.")] == [
        "env.GREETER_NODE_NAME",
        "env.GREETER_NAMESPACE",
    ]
    manifest = tmp / "pod.yaml"
    manifest.write_text(yaml.safe_dump(played, sort_keys=False))

    def clean() -> None:
        podman("kube", "down", str(manifest), env=env)

    clean()  # an interrupted earlier run may have left the pod behind
    try:
        result = podman("kube", "play", str(manifest), env=env, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        ids = play_output_ids(result.stdout)
        [pod_id] = ids["Pod"]
        [container] = ids["Container"]
        name = podman("pod", "inspect", pod_id, "--format", "{{.Name}}", env=env).stdout.strip()
        assert name, f"podman gave pod {pod_id} no name"
        played_pod = PlayedPod(name, container, grpc_port, metrics_port, values, deployment, pki)
        wait_serving(played_pod, env)
        yield played_pod
    finally:
        clean()


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    message: str
    identity: dict[str, str]


def say_hello(target: Target, name: str) -> Answer:
    async def hello() -> Answer:
        async with open_channel(target) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            call = stub.SayHello(helloworld_pb2.HelloRequest(name=name), timeout=10)
            try:
                reply = await call
            except grpc.aio.AioRpcError as exc:
                return Answer(exc.code(), "", {})
            headers, trailers = await call.initial_metadata(), await call.trailing_metadata()
        return Answer(grpc.StatusCode.OK, reply.message, identity_of(headers, trailers))

    return asyncio.run(hello())


def check_health(target: Target, service: str) -> int:
    async def check() -> int:
        async with open_channel(target) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
        return int(reply.status)

    return asyncio.run(check())


def test_health_is_serving_over_the_host_port(pod: PlayedPod) -> None:
    for service in ("", "helloworld.Greeter"):
        status = check_health(pod.target(), service)
        assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_say_hello_names_the_pod_and_the_cluster(pod: PlayedPod) -> None:
    """x-greeter-pod comes from the downward API (metadata.name): the name podman gave the
    pod; x-greeter-cluster from values (cluster.name)."""
    answer = say_hello(pod.target(), "pod")
    assert answer.code is grpc.StatusCode.OK
    assert answer.message == "Hello, pod!"
    assert answer.identity["x-greeter-pod"] == pod.name
    assert answer.identity["x-greeter-cluster"] == pod.values["cluster"]["name"] == CLUSTER
    assert answer.identity["x-greeter-node"] == NODE


def test_metrics_answer_on_the_metrics_port(pod: PlayedPod) -> None:
    assert say_hello(pod.target(), "metrics").code is grpc.StatusCode.OK
    url = f"http://127.0.0.1:{pod.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    handled = {
        (s.labels["grpc_method"], s.labels["grpc_code"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "grpc_server_handled_total"
    }
    assert handled.get(("SayHello", "OK"), 0) >= 1, handled


def test_transport_is_what_values_ask_for(pod: PlayedPod) -> None:
    """Cleartext HTTP/2 by default; with ci/tls-values only TLS, verified by the CA for the
    Service's name, from a client with a certificate from that CA."""
    plain = Target(pod.address)
    if pod.pki is None:
        assert say_hello(plain, "plain").code is grpc.StatusCode.OK
        return
    assert say_hello(pod.target(), "tls").code is grpc.StatusCode.OK
    refused = grpc.StatusCode.UNAVAILABLE
    assert say_hello(plain, "plain").code is refused
    assert say_hello(pod.target(authority="wrong.example.com"), "wrong name").code is refused
    assert say_hello(pod.target(client_cert=False), "no client cert").code is refused


def test_root_is_read_only_and_the_user_is_not_root(
    pod: PlayedPod, greeter_image: ds.BuiltImage
) -> None:
    env = greeter_image.env

    def sh(script: str) -> Any:
        return podman("exec", pod.container, "sh", "-c", script, env=env, timeout=60)

    # The server (PID 1) runs as the chart's user, with no capabilities, no new privileges
    # and the runtime's seccomp filter (2: filter mode).
    status = dict(
        line.split(":\t", 1)
        for line in sh("cat /proc/1/status").stdout.splitlines()
        if ":\t" in line
    )
    [container] = pod.deployment["spec"]["template"]["spec"]["containers"]
    uid = container["securityContext"]["runAsUser"]
    assert status["Uid"].split()[:2] == [str(uid), str(uid)], status["Uid"]
    assert uid != 0
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    assert sh("id -u").stdout.strip() == str(uid)

    # The root filesystem refuses writes; /tmp (the chart's emptyDir) takes them.
    root = sh("echo x > /written-by-test")
    assert root.returncode != 0
    assert "Read-only file system" in root.stderr, root.stderr
    assert sh("echo x > /tmp/written-by-test && cat /tmp/written-by-test").stdout == "x\n"
    inspect = podman(
        "inspect", pod.container, "--format", "{{.HostConfig.ReadonlyRootfs}}", env=env
    )
    assert inspect.stdout.strip() == "true"


def test_the_chart_probe_passes_in_the_container(
    pod: PlayedPod, greeter_image: ds.BuiltImage
) -> None:
    """Podman turns the liveness probe into the container's health check; with TLS that is the
    chart's own `greeter health --tls` command (client certificate included), unchanged.

    Podman holds it to the probe's timeoutSeconds, as the kubelet does; like the kubelet, only
    failureThreshold failures in a row count, so a check slowed by a busy machine is retried."""
    env = greeter_image.env
    check = podman("inspect", pod.container, "--format", "{{json .Config.Healthcheck}}", env=env)
    test = json.loads(check.stdout)["Test"]
    assert test[1:3] == ["greeter", "health"], test
    assert ("--tls" in test) == (pod.pki is not None), test
    [container] = pod.deployment["spec"]["template"]["spec"]["containers"]
    failures = []
    for _ in range(container["livenessProbe"]["failureThreshold"]):
        result = podman("healthcheck", "run", pod.container, env=env, timeout=60)
        if result.returncode == 0:
            break
        failures.append(result.stdout + result.stderr)
    else:
        raise AssertionError(f"the liveness probe failed every time: {failures}")
