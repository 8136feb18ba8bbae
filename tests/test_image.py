"""The container image, really built (buildah, from a debootstrap-made base since no image
registry is reachable) and really run (podman): health SERVING, SayHello answered, reflection
lists the services, SIGTERM ends it with exit 0 within the grace period.

One build per run (the session fixture ``greeter_image`` in conftest.py, shared with
test_pod.py); it takes a few minutes with vfs storage.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import deploy_support as ds
import pytest

# The first test may build the image (and its base): a longer time limit than pytest's default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(ds.BUILD_TEST_TIMEOUT)]

DRAIN_DELAY = 1.0
GRACE_PERIOD = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def inspect(image: ds.BuiltImage) -> dict[str, Any]:
    name, env = image
    result = ds.run([ds.tool("podman"), "image", "inspect", name], env=env)
    assert result.returncode == 0, result.stderr
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data[0]


def test_image_metadata(greeter_image: ds.BuiltImage) -> None:
    info = inspect(greeter_image)
    config = info["Config"]
    assert config["Entrypoint"] == ["greeter"]
    assert config["Cmd"] == ["serve"]
    user = config["User"]
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 10000
    assert {"50051/tcp", "9090/tcp"} <= set(config["ExposedPorts"])
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "greeter"
    assert labels["org.opencontainers.image.revision"] == "test"
    assert "org.opencontainers.image.version" in labels
    health = info.get("Healthcheck") or config.get("Healthcheck")
    assert health, "HEALTHCHECK is missing"
    assert health["Test"][:3] == ["CMD", "greeter", "health"]


def test_final_stage_has_no_build_leftovers(greeter_image: ds.BuiltImage) -> None:
    name, env = greeter_image
    script = (
        "import os, sys\n"
        "bad = [p for p in ('/src', '/root/.cache/pip', '/opt/greeter/bin/pip') "
        "if os.path.exists(p)]\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = ds.run(
        [
            ds.tool("podman"),
            "run",
            "--rm",
            "--read-only",
            "--entrypoint",
            "python3",
            name,
            "-c",
            script,
        ],
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _greeter(*args: str, timeout: float = 30) -> Any:
    return ds.run([ds.python(), "-m", "greeter", *args], timeout=timeout)


def test_image_serves_and_drains(greeter_image: ds.BuiltImage) -> None:
    pytest.importorskip("greeter.cli")
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    from greeter._proto import helloworld_pb2, helloworld_pb2_grpc

    name, env = greeter_image
    podman = ds.tool("podman")
    port = free_port()
    container = f"greeter-test-{os.getpid()}"
    started = ds.run(
        [
            podman,
            "run",
            "-d",
            "--name",
            container,
            "--read-only",
            "--tmpfs",
            "/tmp",
            "-p",
            f"127.0.0.1:{port}:50051",
            "-e",
            f"GREETER_DRAIN_DELAY={DRAIN_DELAY}",
            "-e",
            f"GREETER_GRACE_PERIOD={GRACE_PERIOD}",
            "-e",
            "GREETER_CLUSTER_NAME=image-test",
            name,
        ],
        env=env,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline:
            health = _greeter("health", address, "-t", "2")
            if health.returncode == 0:
                break
            time.sleep(1)
        logs = ds.run([podman, "logs", container], env=env).stderr
        assert health is not None
        assert health.returncode == 0, (health, logs)
        assert "SERVING" in health.stdout + health.stderr
        # The container runtime's seccomp profile lets grpc's threads be made SCHED_BATCH.
        assert '"thread_policy":"batch"' in logs, logs
        # The image ships the loop the benchmarks measured (uvloop, a regular dependency).
        assert '"event_loop":"uvloop"' in logs, logs

        with grpc.insecure_channel(address) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            reply, call = stub.SayHello.with_call(
                helloworld_pb2.HelloRequest(name="image"), timeout=10
            )
            assert "image" in reply.message
            metadata = dict(call.initial_metadata()) | dict(call.trailing_metadata())
            assert metadata.get("x-greeter-cluster") == "image-test"
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {
            "helloworld.Greeter",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services

        # SIGTERM (podman stop) must end it with exit 0 after the drain, within the grace.
        begun = time.monotonic()
        stopped = ds.run(
            [podman, "stop", "-t", str(int(DRAIN_DELAY + GRACE_PERIOD + 30)), container],
            env=env,
            timeout=120,
        )
        took = time.monotonic() - begun
        assert stopped.returncode == 0, stopped.stderr
        state = ds.run([podman, "inspect", container, "--format", "{{.State.ExitCode}}"], env=env)
        assert state.stdout.strip() == "0", ds.run([podman, "logs", container], env=env).stderr
        assert DRAIN_DELAY * 0.8 <= took <= DRAIN_DELAY + GRACE_PERIOD + 5, took
    finally:
        ds.run([podman, "rm", "-f", container], env=env, timeout=60)
