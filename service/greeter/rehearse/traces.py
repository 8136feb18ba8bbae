"""Tracing in the rehearsal (``greeter rehearse --traces``): the OTLP/gRPC endpoint everything
exports to, the pods' OpenTelemetry environment (:func:`pod_env`), and Envoy's OpenTelemetry
tracer (``envoy.tracers.opentelemetry``), the collector as an Envoy cluster and the runtime
layer that flushes spans every second: pure data, like :mod:`greeter.rehearse.envoy_config`,
which puts these blocks into the bootstrap."""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass
from typing import Any


def typed(kind: str, **config: Any) -> dict[str, Any]:
    """An Envoy ``typed_config``: the message's type URL and its fields."""
    return {"@type": f"type.googleapis.com/{kind}", **config}


# service.name of Envoy's spans; the pods' is "greeter", the load tester's "greeter-load".
TRACE_SERVICE_NAME = "gateway"
OTLP_CLUSTER = "otlp"
OTLP_GRPC_PORT = 4317  # OTLP/gRPC's registered port, when the endpoint names none


@dataclass(frozen=True)
class OtlpEndpoint:
    """An OTLP/gRPC collector (``http://HOST:PORT``): where Envoy and the pods send spans."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def otlp_endpoint(text: str) -> OtlpEndpoint:
    """``--traces``: an OTLP/gRPC endpoint ``http://HOST[:PORT]`` (port 4317 by default);
    ValueError naming the flag otherwise."""
    problem = f"--traces {text!r}: expected an OTLP/gRPC endpoint such as http://127.0.0.1:4317"
    try:
        url = urllib.parse.urlsplit(text.strip())
        port = url.port
    except ValueError:
        raise ValueError(problem) from None
    if url.scheme != "http":
        raise ValueError(
            f"{problem} (http://: the rehearsal sends spans in cleartext, to a collector on "
            "this machine or a trusted network)"
        )
    if not url.hostname or url.username or url.password or url.query or url.fragment:
        raise ValueError(problem)
    if url.path not in ("", "/"):
        raise ValueError(f"{problem} (no path: OTLP/gRPC has none)")
    return OtlpEndpoint(url.hostname, port or OTLP_GRPC_PORT)


SAMPLERS = "envoy.extensions.tracers.opentelemetry.samplers.v3"


def tracing(endpoint: OtlpEndpoint, root_percent: float = 0.0) -> dict[str, Any]:
    """The connection manager's ``tracing``: Envoy's OpenTelemetry tracer, exporting over
    OTLP/gRPC through the :func:`otlp_cluster`, with a parent-based sampler: a call with a
    ``traceparent`` is traced as its caller decided (its sampled flag), and ``root_percent``
    of the calls without one start a trace in Envoy (0: the caller decides, as ``greeter load
    --trace-sample`` does). Envoy's span is the caller's child and the pod's parent (W3C
    ``traceparent`` and ``tracestate`` to the pod).

    The connection manager's own decision (``random_sampling``) stays at 100 %: Envoy 1.40's
    tracer obeys it over the caller's sampled flag (measured: at 0 it made no span for a
    sampled call), so the sampler decides instead."""
    root = {
        "name": "envoy.tracers.opentelemetry.samplers.trace_id_ratio_based",
        "typed_config": typed(
            f"{SAMPLERS}.TraceIdRatioBasedSamplerConfig",
            sampling_percentage={
                "numerator": round(root_percent * 10_000),
                "denominator": "MILLION",
            },
        ),
    }
    config = typed(
        "envoy.config.trace.v3.OpenTelemetryConfig",
        grpc_service={"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
        service_name=TRACE_SERVICE_NAME,
        sampler={
            "name": "envoy.tracers.opentelemetry.samplers.parent_based",
            "typed_config": typed(f"{SAMPLERS}.ParentBasedSamplerConfig", wrapped_sampler=root),
        },
    )
    return {
        "random_sampling": {"value": 100.0},
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": config},
    }


def otlp_cluster(endpoint: OtlpEndpoint) -> dict[str, Any]:
    """The collector as an Envoy cluster: HTTP/2 (gRPC), a host name resolved by DNS."""
    address = {"socket_address": {"address": endpoint.host, "port_value": endpoint.port}}
    return {
        "name": OTLP_CLUSTER,
        "type": "STATIC" if endpoint.is_ip else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": OTLP_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}},
            )
        },
    }


def trace_runtime(flush_ms: int = 1000) -> dict[str, Any]:
    """Bootstrap ``layered_runtime`` that sends Envoy's spans every ``flush_ms`` (its default
    is every 5 s, or 5 spans)."""
    flush = {"tracing.opentelemetry.flush_interval_ms": flush_ms}
    return {"layers": [{"name": "tracing", "static_layer": flush}]}


def pod_env(environ: dict[str, str], endpoint: str) -> dict[str, str]:
    """``--traces``: the pods' OpenTelemetry environment. The endpoint (OTLP/gRPC) wins over
    anything inherited that would send spans elsewhere or not at all; the sampler (only calls
    whose caller sampled them: ``greeter load --trace-sample``), the service name and a 1 s
    export delay apply unless the environment sets them."""
    env = {k: v for k, v in environ.items() if k not in OVERRIDDEN}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    env.setdefault("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    env.setdefault("OTEL_SERVICE_NAME", "greeter")
    env.setdefault("OTEL_BSP_SCHEDULE_DELAY", "1000")
    return env


OVERRIDDEN = (
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
)
