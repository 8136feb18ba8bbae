"""The chart's tracing values (docs/tracing.md), rendered by the real helm: the OpenTelemetry
SDK's standard environment on the pods and on the loadtest Job, as greeter reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import deploy_support as ds
import pytest
from test_chart import ci_values, env_of, helm_template_error
from test_chart_loadtest import flag, load_args, pod_spec

from greeter import tracing
from greeter.settings import Settings


@pytest.fixture
def render(tmp_path: Path) -> Any:
    def _render(*values: dict[str, Any]) -> list[dict[str, Any]]:
        return ds.render(list(values), tmp=tmp_path)

    return _render


def load_env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [load] = pod_spec(objects)["initContainers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in load.get("env", [])}


def test_off_by_default_no_otel_env(render: Any) -> None:
    objects = render({"loadtest": {"enabled": True}})
    assert not [name for name in env_of(objects) if name.startswith("OTEL_")]
    assert load_env(objects) == {}
    assert "--trace-sample" not in load_args(objects)


def test_on_the_pods_trace_as_the_server_reads_it(render: Any) -> None:
    values = ci_values("tracing")
    objects = render(values)
    env = env_of(objects)
    otel = {k: v for k, v in env.items() if k.startswith("OTEL_")}
    assert otel == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SERVICE_NAME": "grpc-service",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.05",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci",
    }
    # greeter serve takes it: valid, and tracing on
    assert tracing.env_problems(otel) == []
    assert tracing.enabled(Settings(), otel)
    # the Job: its own service name, the same collector, and --trace-sample
    job = load_env(objects)
    assert job["OTEL_SERVICE_NAME"] == "grpc-service-loadtest"
    assert job["OTEL_EXPORTER_OTLP_ENDPOINT"] == otel["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert flag(load_args(objects), "--trace-sample") == "0.1"


def test_service_name_and_http_protobuf(render: Any) -> None:
    objects = render(
        {
            "tracing": {
                "enabled": True,
                "endpoint": "http://tempo.tracing:4318",
                "protocol": "http/protobuf",
                "serviceName": "greeter-eu",
                "sampler": "parentbased_always_on",
            }
        }
    )
    env = env_of(objects)
    assert env["OTEL_SERVICE_NAME"] == "greeter-eu"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert "OTEL_RESOURCE_ATTRIBUTES" not in env


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--set", "tracing.enabled=true"], "tracing.endpoint is required"),
        (["--set", "tracing.endpoint=collector:4317"], "/tracing/endpoint"),
        (["--set", "tracing.sampler=sometimes"], "/tracing/sampler"),
        (["--set", "tracing.protocol=http/json"], "/tracing/protocol"),
        (["--set-json", "tracing.samplerArg=2"], "/tracing/samplerArg"),
        (["--set-json", "loadtest.traceSample=1.5"], "/loadtest/traceSample"),
    ],
)
def test_bad_values_are_refused(args: list[str], complaint: str, tmp_path: Path) -> None:
    assert complaint in helm_template_error(tmp_path, *args)
