"""The rehearsal's Envoy configuration: the engine of Emissary, Envoy Gateway, Istio and Contour.

Where nginx (:mod:`greeter.rehearse.nginx`) plays ingress-nginx, this plays the gateways that
keep HTTP/2 connections to the pods open and take a pod out because their **active health
checks** see it draining, as an ALB multi-cluster gateway does:

- the HTTPS listener for ``grpc.example.com`` (the same self-signed certificate as nginx's),
  HTTP/2 and HTTP/1.1 by ALPN; other host names get a 404 (gRPC ``UNIMPLEMENTED``);
- one Envoy cluster ``fleet`` over every member cluster's pods, each member cluster a
  *locality* (its share with ``--weights``: locality weights), a standby cluster's pods at
  *priority 1* (``--standby``: they take the calls priority 0 cannot, all of them once no
  priority-0 pod is healthy, a share of them while fewer than 1/1.4 of its pods are);
- upstream HTTP/2 with keep-alive, as Envoy always runs it: one connection per pod per worker;
- active gRPC health checks (``grpc.health.v1.Health/Check``; ``NOT_SERVING`` is unhealthy)
  timed like the chart's ALB health checks (:class:`HealthCheck`), with ``no_traffic_interval``
  set so an idle cluster is checked as often as a busy one, and **panic mode off**
  (``healthy_panic_threshold: 0``): with every pod unhealthy Envoy answers 503 instead of
  quietly sending calls to all of them;
- outlier detection for a pod that dies outright (a refused or reset connection ejects it for
  ``ejection_time``), and retries of calls that never reached a pod (``connect-failure``,
  ``refused-stream``, ``reset-before-request``) on another pod;
- the GRPCRoute's canary rule (``x-canary: "true"`` on ``helloworld.Greeter``), header routing
  to one cluster (``--route-header``);
- gRPC-Web through Envoy's ``grpc_web`` and ``cors`` filters to the pods' plain gRPC port, as
  Emissary's ``enable_grpc_web`` does; the page's files from the pods' web ports under ``/web/``;
- TLS origination to the pods (``--backend-tls``): ALPN ``h2``, SNI the Service's name, the
  certificate verified against the fleet CA and that name, as Emissary's origination
  ``TLSContext`` or a ``BackendTLSPolicy`` configure it;
- a delay in the gateway only (the ``fault`` filter), to show where latency goes: a call
  that carries ``x-envoy-fault-delay-request: MS`` is held that long, and ``--gateway-delay``
  holds every call.

:func:`config` builds the whole bootstrap configuration from an :class:`EnvoyGateway` and
nothing else (no process, no file): :mod:`greeter.rehearse.envoy` writes it to the run's folder
as YAML (``envoy/envoy.yaml``) and runs Envoy on it.

Where to change what: a cluster's connection, health-check and outlier settings in
:func:`_grpc_cluster`; what a route retries in :func:`_retry_policy`; the listener's HTTP
filters in :func:`_http_filters`; what the connection manager logs or traces in :func:`config`,
the tracer itself (``--traces``: ``envoy.tracers.opentelemetry`` to one OTLP endpoint) in
:func:`tracing`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greeter.rehearse.gateway import (
    CANARY_HEADER,
    CANARY_VALUE,
    HOST,
    IDEMPOTENT_METHODS,
    QUICK_TIMEOUT_S,
    STREAM_TIMEOUT_S,
    WEB_PATH,
    BackendTLS,
    Endpoint,
    GatewaySpec,
    member_upstream,
)
from greeter.rehearse.health_check import HealthCheck
from greeter.rehearse.traces import (
    OtlpEndpoint,
    otlp_cluster,
    trace_runtime,
    tracing,
    typed,
)
from greeter.rehearse.yaml_text import to_yaml

GREETER_PREFIX = "/helloworld.Greeter/"
# Each try of a quick idempotent call (IDEMPOTENT_METHODS) gets this long before Envoy gives
# up on it and retries it on another pod (gateway.QUICK_TIMEOUT_S).
PER_TRY_TIMEOUT_S = QUICK_TIMEOUT_S
# HTTP/2 PING on every upstream connection this often, closed when no answer comes within
# the timeout: a connection to a pod that vanished from the network (no reset ever comes) is
# found dead in KEEPALIVE_INTERVAL_S + KEEPALIVE_TIMEOUT_S at most, and the streams on it end
# (UNAVAILABLE) instead of hanging. (Was 30 s / 5 s.)
KEEPALIVE_INTERVAL_S = 2.0
KEEPALIVE_TIMEOUT_S = 2.0
# Response metadata a page on another origin may read (Emissary's Mapping `cors`).
EXPOSED_HEADERS = (
    "grpc-status",
    "grpc-message",
    "x-greeter-cluster",
    "x-greeter-pod",
    "x-greeter-node",
    "x-greeter-zone",
    "server-timing",
)
ALLOWED_HEADERS = (
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "x-greeter-stream-count",
    CANARY_HEADER,
)


@dataclass(frozen=True)
class EnvoyGateway(GatewaySpec):
    """Everything the Envoy configuration depends on. Durations in seconds."""

    admin_port: int
    fleet: Sequence[Endpoint]
    canary: Sequence[Endpoint]
    access_log: Path
    health: HealthCheck = field(default_factory=HealthCheck)
    # A pod whose connection was refused or reset is ejected this long (nginx's fail_timeout).
    ejection_time: float = 2.0
    # Each cluster's share of the fleet's calls in percent (locality weights); empty: round
    # robin over every pod.
    weights: Mapping[str, int] = field(default_factory=dict)
    # Clusters whose pods are at priority 1: calls only while no priority-0 pod is healthy.
    standby: Sequence[str] = ()
    # The pods' web ports (127.0.0.1:port) that serve the page's files; empty: no /web/.
    web: Sequence[str] = ()
    # A fixed delay the gateway adds to every call (the fault filter), in milliseconds.
    delay_ms: float = 0.0
    # Retry a call that never reached a pod on another pod, as nginx's grpc_next_upstream
    # error does (Emissary's and Envoy Gateway's routes retry nothing unless told; Istio's
    # default retries these and more). False: no retries, health checks alone.
    retries: bool = True
    # The per-try timeout of quick idempotent calls (IDEMPOTENT_METHODS); 0: none.
    per_try_timeout: float = PER_TRY_TIMEOUT_S
    # --traces: the connection manager traces every call its caller sampled (W3C traceparent)
    # with Envoy's OpenTelemetry tracer, to this OTLP endpoint; None: no tracing.
    traces: OtlpEndpoint | None = None


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _address(address: str) -> dict[str, Any]:
    if address.startswith("unix:"):
        return {"pipe": {"path": address.removeprefix("unix:")}}
    host, _, port = address.rpartition(":")
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def _upstream_tls(tls: BackendTLS, name: str, alpn: str) -> dict[str, Any]:
    """TLS origination: ALPN, SNI ``name``, the certificate verified against the fleet CA
    and ``name`` (an Emissary origination TLSContext, a BackendTLSPolicy's hostname)."""
    context = typed(
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        sni=name,
        common_tls_context={
            "alpn_protocols": [alpn],
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "validation_context": {
                "trusted_ca": {"filename": str(tls.ca)},
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": name}}],
            },
        },
    )
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _grpc_cluster(
    name: str,
    endpoints: Sequence[Endpoint],
    g: EnvoyGateway,
    tls_name: str,
    policies: bool = False,
) -> dict[str, Any]:
    """An Envoy cluster of pods' gRPC ports: HTTP/2 keep-alive, health checks, outlier
    detection; with ``policies`` (the fleet), localities (member clusters) with the weights
    and priorities ``g`` has."""
    weighted = policies and bool(g.weights)
    by_locality: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        by_locality.setdefault(endpoint.cluster, []).append(endpoint)
    localities = []
    for cluster, members in by_locality.items():
        locality: dict[str, Any] = {
            "locality": {"zone": cluster},
            "lb_endpoints": [
                {
                    "endpoint": {"address": _address(e.address), "hostname": e.pod},
                    "metadata": {"filter_metadata": {"greeter": {"pod": e.pod}}},
                }
                for e in members
            ],
        }
        if weighted and g.weights.get(cluster, 0) > 0:
            locality["load_balancing_weight"] = g.weights[cluster]
        if policies and cluster in g.standby:
            locality["priority"] = 1
        localities.append(locality)
    if weighted:  # a cluster with share 0 keeps no pod in the fleet
        localities = [loc for loc in localities if "load_balancing_weight" in loc]
    hc = g.health
    cluster_config: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": _duration(g.connect_timeout),
        # The pod with fewer calls in flight of two picked at random: a slow pod (a smaller
        # CPU quota, a noisy node) gets fewer calls. Round robin gives every pod the same
        # share, so past capacity the slowest pod bounds the fleet: measured with one pod at
        # a quarter of the others' quota, a closed loop through round robin got 0.3x of what
        # it got through this (docs/performance.md, "Through a gateway").
        "lb_policy": "LEAST_REQUEST",
        "common_lb_config": {
            # Panic mode off: with every pod unhealthy, 503 rather than all pods regardless.
            "healthy_panic_threshold": {"value": 0.0},
            **({"locality_weighted_lb_config": {}} if weighted else {}),
        },
        "load_assignment": {
            "cluster_name": name,
            # Envoy's default overprovisioning factor (1.4): priority 0 keeps every call
            # while at least 1/1.4 of its pods are healthy, and spills the rest to priority 1.
            "endpoints": localities,
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={
                    "http2_protocol_options": {
                        "max_concurrent_streams": 1000,
                        "connection_keepalive": {
                            "interval": _duration(KEEPALIVE_INTERVAL_S),
                            "timeout": _duration(KEEPALIVE_TIMEOUT_S),
                        },
                    }
                },
                common_http_protocol_options={"idle_timeout": f"{STREAM_TIMEOUT_S}s"},
            )
        },
        # Retries of calls that never reached a pod are not rationed (the default allows 3
        # at once, and an outage at 250 calls/s needs more).
        "circuit_breakers": {"thresholds": [{"max_retries": 10_000}]},
        # A pod its health checks take out (a cut cluster answers no check) loses its
        # connections at once: the streams on them end rather than wait for the client's
        # deadline, and nothing more is written to them.
        "close_connections_on_host_health_failure": True,
        "health_checks": [
            {
                "timeout": _duration(hc.timeout),
                "interval": _duration(hc.interval),
                "interval_jitter": "0s",
                "initial_jitter": "0s",
                # Without this, a cluster that gets no calls is checked every 60 s, and a
                # drain would go unseen until the next call.
                "no_traffic_interval": _duration(hc.interval),
                "no_traffic_healthy_interval": _duration(hc.interval),
                "unhealthy_threshold": hc.unhealthy_threshold,
                "healthy_threshold": hc.healthy_threshold,
                "grpc_health_check": {"authority": tls_name},
                "always_log_health_check_failures": True,
            }
        ],
        "outlier_detection": {
            # A refused or reset connection (local origin) ejects the pod at once, for
            # ejection_time; a 5xx from the pod itself counts separately.
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            "consecutive_gateway_failure": 3,
            "enforcing_consecutive_gateway_failure": 100,
            "interval": "1s",
            "base_ejection_time": _duration(g.ejection_time),
            "max_ejection_time": _duration(g.ejection_time),
            "max_ejection_percent": 100,
        },
    }
    if g.backend_tls is not None:
        cluster_config["transport_socket"] = _upstream_tls(g.backend_tls, tls_name, "h2")
    return cluster_config


def _web_cluster(g: EnvoyGateway) -> dict[str, Any]:
    """The pods' web ports, for the page's files (HTTP/1.1)."""
    config: dict[str, Any] = {
        "name": "web",
        "type": "STATIC",
        "connect_timeout": _duration(g.connect_timeout),
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": "web",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(a)}} for a in g.web]}
            ],
        },
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "base_ejection_time": _duration(g.ejection_time),
            "max_ejection_percent": 100,
        },
    }
    if g.backend_tls is not None:
        config["transport_socket"] = _upstream_tls(
            g.backend_tls, g.backend_tls.fleet_name, "http/1.1"
        )
    return config


def _retry_policy(per_try_timeout: float = 0.0, priorities: bool = False) -> dict[str, Any]:
    """Retry a call on another pod only when it surely never reached one, or one shed it; with
    ``per_try_timeout`` (quick idempotent calls only), also when a try got no answer in that
    long or its connection was reset (``reset`` covers the per-try timeout), on another pod
    (``previous_hosts``); with ``priorities`` (a standby), in another priority once one has
    been tried (``previous_priorities``)."""
    # resource-exhausted: a pod past capacity shed the call before running it (admission
    # control, "overloaded: ..."): another pod may have room.
    retry_on = "connect-failure,refused-stream,reset-before-request,resource-exhausted"
    if per_try_timeout:
        retry_on = "connect-failure,refused-stream,reset,resource-exhausted"
    policy: dict[str, Any] = {
        "retry_on": retry_on,
        # Up to ~0.6 s of retries: long enough for outlier detection's ejection (or a health
        # check) to reach the worker, so a call that picked a pod the instant it died is
        # retried onto the survivors, or the standby, and not onto the dead pods again.
        "num_retries": 5,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": typed(
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                ),
            }
        ],
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
    }
    if per_try_timeout:
        policy["per_try_timeout"] = _duration(per_try_timeout)
    if priorities:
        # A retry goes to another priority (the standby) once one has been tried: with a
        # cut active cluster whose pods still look healthy, its next pod is no better.
        policy["retry_priority"] = {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": typed(
                "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                update_frequency=2,
            ),
        }
    return policy


def _to(g: EnvoyGateway, cluster: str, rewrite: str = "", quick: bool = False) -> dict[str, Any]:
    """Route to ``cluster``; ``quick``: a quick idempotent method, with the per-try timeout."""
    action: dict[str, Any] = {
        "cluster": cluster,
        "timeout": "0s",  # streams may last; the client's deadline bounds a call
    }
    if g.retries:
        action["retry_policy"] = _retry_policy(
            g.per_try_timeout if quick else 0.0, priorities=bool(g.standby) and cluster == "fleet"
        )
    if rewrite:
        action["prefix_rewrite"] = rewrite
    return action


def _header(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "string_match": {"exact": value, "ignore_case": True}}


def _web_routes(g: EnvoyGateway) -> list[dict[str, Any]]:
    """``/web/``: the page's own gRPC-Web calls to the gRPC clusters, its files to the web
    ports."""
    if not g.web:
        return []
    web = WEB_PATH.rstrip("/")
    page_calls = web + GREETER_PREFIX
    canary = [
        {
            "match": {"prefix": page_calls, "headers": [_header(CANARY_HEADER, CANARY_VALUE)]},
            "route": _to(g, "canary", GREETER_PREFIX),
        }
    ]
    return [
        {"match": {"path": web}, "redirect": {"path_redirect": WEB_PATH}},
        *canary,
        {"match": {"prefix": page_calls}, "route": _to(g, "fleet", GREETER_PREFIX)},
        {
            "match": {"prefix": WEB_PATH},
            "route": _to(g, "web", "/"),
        },
    ]


def _routes(g: EnvoyGateway, clusters: Sequence[str]) -> list[dict[str, Any]]:
    """grpc.example.com: the canary rule, header routing, then the fleet; each first for the
    quick idempotent methods (their own retry policy), then for every other path."""
    canary = [_header(CANARY_HEADER, CANARY_VALUE)]
    routes = [*_web_routes(g)]
    quick = [{"path": path} for path in IDEMPOTENT_METHODS] if g.per_try_timeout else []
    for match, is_quick in [*((m, True) for m in quick), ({"prefix": GREETER_PREFIX}, False)]:
        routes.append(
            {"match": {**match, "headers": canary}, "route": _to(g, "canary", quick=is_quick)}
        )
    every = [*((m, True) for m in quick), ({"prefix": "/"}, False)]
    if g.route_header:
        routes += [
            {
                "match": {**match, "headers": [_header(g.route_header, cluster)]},
                "route": _to(g, member_upstream(cluster), quick=is_quick),
            }
            for cluster in clusters
            for match, is_quick in every
        ]
    routes += [{"match": m, "route": _to(g, "fleet", quick=is_quick)} for m, is_quick in every]
    return routes


def _cors(g: EnvoyGateway) -> dict[str, Any]:
    """Emissary's Mapping ``cors``: which origins may call, and what their pages may read."""
    origins = [f"https://{name}:{g.port}" for name in (g.host, "127.0.0.1", "localhost")]
    return typed(
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        allow_origin_string_match=[{"exact": origin} for origin in origins],
        allow_methods="POST, OPTIONS",
        allow_headers=", ".join(ALLOWED_HEADERS),
        expose_headers=", ".join(EXPOSED_HEADERS),
        max_age="600",
    )


def _http_filters(g: EnvoyGateway) -> list[dict[str, Any]]:
    filters = [
        {
            "name": "envoy.filters.http.grpc_web",
            "typed_config": typed("envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"),
        },
        {
            "name": "envoy.filters.http.cors",
            "typed_config": typed("envoy.extensions.filters.http.cors.v3.Cors"),
        },
    ]
    # A call may ask the gateway to hold it: `-m x-envoy-fault-delay-request:50` (ms).
    every = {"numerator": 100, "denominator": "HUNDRED"}
    delays: list[dict[str, Any]] = [{"header_delay": {}, "percentage": every}]
    if g.delay_ms > 0:  # --gateway-delay: every call
        delays.append({"fixed_delay": _duration(g.delay_ms / 1000), "percentage": every})
    filters += [
        {
            "name": "envoy.filters.http.fault",
            "typed_config": typed("envoy.extensions.filters.http.fault.v3.HTTPFault", delay=d),
        }
        for d in delays
    ]
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": typed("envoy.extensions.filters.http.router.v3.Router"),
        }
    )
    return filters


# One line per call: what the scenarios wait for and what a person reads after a run.
ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %REQ(X-CANARY)% upstream=%UPSTREAM_HOST% cluster=%UPSTREAM_CLUSTER% "
    "grpc_status=%GRPC_STATUS% flags=%RESPONSE_FLAGS% attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% "
    "rt=%DURATION%ms\n"
)


def config(g: EnvoyGateway) -> dict[str, Any]:
    """The whole bootstrap configuration (static resources, admin on 127.0.0.1)."""
    clusters = list(dict.fromkeys(e.cluster for e in g.fleet))
    tls_name = g.backend_tls.fleet_name if g.backend_tls else HOST
    canary_name = g.backend_tls.canary_name if g.backend_tls else HOST
    envoy_clusters = [
        _grpc_cluster("fleet", g.fleet, g, tls_name, policies=True),
        _grpc_cluster("canary", g.canary or g.fleet, g, canary_name),
    ]
    if g.route_header:
        envoy_clusters += [
            _grpc_cluster(member_upstream(c), [e for e in g.fleet if e.cluster == c], g, tls_name)
            for c in clusters
        ]
    if g.web:
        envoy_clusters.append(_web_cluster(g))
    traced: dict[str, Any] = {}
    if g.traces is not None:
        envoy_clusters.append(otlp_cluster(g.traces))
        traced["tracing"] = tracing(g.traces)
    not_found = {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
    cors = {"envoy.filters.http.cors": _cors(g)}
    manager = typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="gateway",
        codec_type="AUTO",
        # No GOAWAY after N calls or a short idle time in the middle of a long run.
        stream_idle_timeout=f"{STREAM_TIMEOUT_S}s",
        request_timeout="0s",
        common_http_protocol_options={"idle_timeout": f"{STREAM_TIMEOUT_S}s"},
        http2_protocol_options={"max_concurrent_streams": 1000},
        access_log=[
            {
                "name": "envoy.access_loggers.file",
                "typed_config": typed(
                    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    path=str(g.access_log),
                    log_format={"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                ),
            }
        ],
        route_config={
            "name": "gateway",
            "virtual_hosts": [
                {
                    "name": "grpc",
                    "domains": [g.host, f"{g.host}:*"],
                    "routes": _routes(g, clusters),
                    "typed_per_filter_config": cors,
                },
                {
                    # Any other host name: the default backend's 404 (UNIMPLEMENTED to gRPC).
                    "name": "default",
                    "domains": ["*"],
                    "routes": [*_web_routes(g), not_found],
                    "typed_per_filter_config": cors,
                },
            ],
        },
        http_filters=_http_filters(g),
        **traced,
    )
    tls = typed(
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        common_tls_context={
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": str(g.cert)},
                    "private_key": {"filename": str(g.key)},
                }
            ],
        },
    )
    listener = {
        "name": "gateway",
        "address": _address(f"127.0.0.1:{g.port}"),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ],
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
            }
        ],
    }
    bootstrap: dict[str, Any] = {
        "admin": {"address": _address(f"127.0.0.1:{g.admin_port}")},
        "static_resources": {"listeners": [listener], "clusters": envoy_clusters},
    }
    if g.traces is not None:
        bootstrap["layered_runtime"] = trace_runtime()
    return bootstrap


def render(g: EnvoyGateway) -> str:
    return (
        "# Generated by `greeter rehearse --gateway envoy`; docs/rehearsal.md explains it.\n"
        + to_yaml(config(g))
        + "\n"
    )


def checked_clusters(g: EnvoyGateway) -> list[str]:
    """The Envoy clusters with active health checks (all but the page's files)."""
    return [
        str(c["name"]) for c in config(g)["static_resources"]["clusters"] if c.get("health_checks")
    ]
