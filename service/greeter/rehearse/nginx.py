"""The rehearsal gateway: a real nginx, configured like the fleet's Ingresses.

What the ALB Ingress (``gitops/fleet/ingress.yaml``) and the chart's ingress-nginx Ingress
describe, and the directive that plays each part here:

- HTTPS 443 listener terminating TLS for ``grpc.example.com``: ``listen ... ssl http2`` with a
  self-signed certificate (``greeter.certs``); other host names get the default server's 404,
  as ingress-nginx's default backend answers;
- ``backend-protocol: grpc``: ``grpc_pass grpc://`` (HTTP/2 to the backends); with the chart's
  ``tls.enabled`` (gRPC over TLS to the pods: ingress-nginx ``GRPCS``, ALB's TLS gRPC backends,
  Emissary's TLS origination) ``grpc_pass grpcs://`` verifying the pods' certificates against the
  fleet CA, by the name of the backend's Service (:class:`BackendTLS`);
- ``proxy-read-timeout`` / ``proxy-send-timeout`` 3600: ``grpc_read_timeout`` /
  ``grpc_send_timeout``;
- the controller's ``enable-underscores-in-headers: "true"``: ``underscores_in_headers on``;
- the GRPCRoute's canary rule (``x-canary: "true"`` on ``helloworld.Greeter``): a ``map`` on
  ``$http_x_canary`` choosing the upstream inside ``location /helloworld.Greeter/``;
- the fleet's traffic policies (:mod:`greeter.rehearse.policy`): per-cluster weights as
  ``weight=`` on each server, routing by a header to one cluster's own upstream, a standby
  cluster as ``backup`` servers.

- the page and gRPC-Web (the chart's ``web.enabled``: an HTTP backend next to the gRPC route):
  ``location /web/`` on every host name proxies HTTP/1.1 to the backends' web ports, so
  ``https://127.0.0.1:PORT/web/`` opens the page; on ``grpc.example.com`` a gRPC-Web call to
  the gRPC paths (``content-type: application/grpc-web*``) goes there too, as Envoy's
  ``grpc_web`` filter or Emissary's ``enable_grpc_web`` take it apart by content type.

The drain and outage parts (passive health, retry of calls that never reached a backend, client
keep-alive limits) are explained in docs/rehearsal.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from greeter.rehearse.gateway import (
    CANARY_HEADER,
    CANARY_VALUE,
    IDEMPOTENT_METHODS,
    QUICK_TIMEOUT_S,
    STREAM_TIMEOUT_S,
    WEB_PATH,
    GatewayError,
    GatewayProcess,
    GatewaySpec,
    member_upstream,
    tail_lines,
)
from greeter.rehearse.policy import header_variable


class NginxError(GatewayError):
    """nginx is missing, its configuration is rejected, or it would not start."""


@dataclass(frozen=True)
class NginxGateway(GatewaySpec):
    """Everything the nginx configuration depends on. Durations in seconds."""

    # Backend addresses as nginx names them: 127.B.C.P:port (or unix:/path.sock).
    fleet: Sequence[str]
    canary: Sequence[str]
    # Passive health: one failed attempt takes a backend out for fail_timeout (whole seconds).
    max_fails: int = 1
    fail_timeout: float = 2.0
    # How long nginx keeps trying other backends for one call before answering 502.
    next_upstream_timeout: float = 10.0
    # Requests and idle seconds per client HTTP/2 connection before nginx sends GOAWAY.
    client_keepalive_requests: int = 10_000_000
    client_keepalive_timeout: float = 3600.0
    # Idle upstream connections each worker keeps per upstream group; 0 (the default): none, a
    # connection per call, so a backend whose endpoint is removed gets no call after that
    # (docs/rehearsal.md, "Why no upstream keepalive").
    upstream_keepalive: int = 0
    # Traffic policies (greeter.rehearse.policy). nginx weight of a fleet backend by address
    # (absent: 1; 0: ``down``, no share of the weighted traffic).
    weights: Mapping[str, int] = field(default_factory=dict)
    # Fleet backends that only take calls while no other fleet backend is available (standby).
    backup: Sequence[str] = ()
    # With ``route_header``: each cluster's backends.
    members: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # The backends' gRPC-Web ports (127.0.0.1:port), fleet and canary; empty: no /web/ route.
    web_fleet: Sequence[str] = ()
    web_canary: Sequence[str] = ()
    # grpc_connect_timeout and grpc_read_timeout of the quick idempotent methods: a backend
    # that does not connect or send the reply's headers within this long is given up on, and
    # the call goes to the next one (grpc_next_upstream timeout). Every other path keeps the
    # stream-friendly 3600 s read timeout: a slow call or a quiet stream must not be cut. 0:
    # the defaults of every other path.
    quick_timeout: float = QUICK_TIMEOUT_S


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _server(address: str, g: NginxGateway, policies: bool) -> str:
    params = [f"max_fails={g.max_fails}", f"fail_timeout={max(1, round(g.fail_timeout))}s"]
    if policies:
        weight = g.weights.get(address, 1)
        if weight == 0:
            params.append("down")
        elif weight != 1:
            params.insert(0, f"weight={weight}")
        if address in g.backup:
            params.append("backup")
    return f"        server {address} {' '.join(params)};"


def _upstream(name: str, addresses: Sequence[str], g: NginxGateway, policies: bool = True) -> str:
    """An upstream group; with ``policies`` its servers carry the weights and backup flags."""
    servers = "\n".join(_server(address, g, policies) for address in addresses)
    keepalive = ""
    if g.upstream_keepalive:
        keepalive = (
            f"        keepalive {g.upstream_keepalive};\n"
            "        keepalive_requests 1000000;\n"
            "        keepalive_timeout 60s;\n"
        )
    return f"""    upstream {name} {{
        zone {name} 64k;
{servers}
{keepalive}    }}
"""


def _backend_tls_map(g: NginxGateway) -> str:
    if g.backend_tls is None:
        return ""
    t = g.backend_tls
    return f"""
    # The canary is another Service, with its own certificate: verify each by its own name.
    map $http_x_canary $greeter_backend_name {{
        "{CANARY_VALUE}" {t.canary_name};
        default {t.fleet_name};
    }}
"""


def _backend_tls(g: NginxGateway) -> str:
    if g.backend_tls is None:
        return ""
    t = g.backend_tls
    return f"""
        # TLS to the backends (the chart's tls.enabled): verify each backend's certificate
        # against the fleet CA and by the Service's name (SNI and subjectAltName), as
        # ingress-nginx's proxy-ssl-verify / proxy-ssl-name do for backend-protocol GRPCS.
        grpc_ssl_verify on;
        grpc_ssl_trusted_certificate {t.ca};
        grpc_ssl_server_name on;
        grpc_ssl_name {t.fleet_name};
        grpc_ssl_protocols {t.protocols};
        # Resume the last TLS session per backend, where the backend offers resumption.
        grpc_ssl_session_reuse on;
"""


def _route_map(g: NginxGateway) -> str:
    if not g.route_header:
        return ""
    clusters = "\n".join(
        f'        "{cluster}" {member_upstream(cluster)};' for cluster in g.members
    )
    return f"""
    # Header routing ({g.route_header}: <cluster>): that cluster's backends only. No header, or
    # a value naming no cluster: the weighted fleet, as an ALB forwarding rule whose header
    # condition does not match falls through to the default action.
    map {header_variable(g.route_header)} $greeter_fleet {{
{clusters}
        default fleet;
    }}
"""


def _member_upstreams(g: NginxGateway) -> str:
    if not g.route_header:
        return ""
    return "".join(
        "\n" + _upstream(member_upstream(cluster), addresses, g, policies=False)
        for cluster, addresses in g.members.items()
    )


def _web_upstreams(g: NginxGateway) -> str:
    if not g.web_fleet:
        return ""
    canary = g.web_canary or g.web_fleet
    return f"""
    # The backends' web ports (gRPC-Web and the page), HTTP/1.1; the same canary rule.
    map $http_x_canary $greeter_web_upstream {{
        "{CANARY_VALUE}" web_canary;
        default web_fleet;
    }}
{_upstream("web_fleet", g.web_fleet, g, policies=False)}
{_upstream("web_canary", canary, g, policies=False)}"""


def _web_location(g: NginxGateway) -> str:
    if not g.web_fleet:
        return ""
    return f"""
        # The page and gRPC-Web, under a path of their own, to the backends' web ports.
        location = {WEB_PATH.rstrip("/")} {{
            return 301 {WEB_PATH};
        }}
        location {WEB_PATH} {{
            rewrite ^{WEB_PATH}(.*)$ /$1 break;
            proxy_pass http://$greeter_web_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            # Streamed replies reach the browser as they come.
            proxy_buffering off;
            proxy_read_timeout {STREAM_TIMEOUT_S}s;
            proxy_send_timeout {STREAM_TIMEOUT_S}s;
            proxy_connect_timeout {_ms(g.connect_timeout)};
            proxy_next_upstream error timeout non_idempotent;
            proxy_next_upstream_timeout {_ms(g.next_upstream_timeout)};
        }}
"""


def _web_by_content_type(g: NginxGateway) -> str:
    if not g.web_fleet:
        return ""
    return """
            # gRPC-Web on the gRPC paths: taken apart by content type, to the web ports.
            if ($http_content_type ~* "^application/grpc-web") {
                rewrite ^ /web$uri last;
            }"""


def _quick_locations(g: NginxGateway, scheme: str, canary_name: str) -> str:
    """The quick idempotent methods: short connect and read timeouts, so a call to a backend
    that answers nothing (cut off) goes to the next one within them, not at the deadline."""
    if not g.quick_timeout:
        return ""
    return "".join(
        f"""
        location = {path} {{{_web_by_content_type(g)}
            # Quick and idempotent: no reply headers in {_ms(g.quick_timeout)}, the next backend.
            grpc_connect_timeout {_ms(g.quick_timeout)};
            grpc_read_timeout {_ms(g.quick_timeout)};
            grpc_send_timeout {_ms(g.quick_timeout)};
            grpc_pass {scheme}://$greeter_upstream;{canary_name}
        }}"""
        for path in IDEMPOTENT_METHODS
    )


def render(g: NginxGateway, prefix: Path) -> str:
    """The nginx.conf for ``nginx -p PREFIX -c nginx.conf``: unprivileged, in the foreground."""
    # Started as root, nginx would run its workers as nobody, who may not open the backends'
    # sockets in a private work folder: keep the workers as the user who started it.
    user = "user root;\n" if os.geteuid() == 0 else ""
    scheme = "grpc" if g.backend_tls is None else "grpcs"
    # Without header routing the fleet is the "fleet" upstream, else the header's choice.
    fleet = "$greeter_fleet" if g.route_header else "fleet"
    canary_name = ""
    if g.backend_tls is not None:
        canary_name = "\n            grpc_ssl_name $greeter_backend_name;"
    return f"""# Generated by `greeter rehearse`; docs/rehearsal.md explains each directive.
{user}daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    log_format grpc '$time_iso8601 $remote_addr "$request" $status $http_x_canary '
                    'upstream=$upstream_addr upstream_status=$upstream_status '
                    'grpc_status=$sent_trailer_grpc_status rt=$request_time';
    access_log {prefix}/access.log grpc;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;

    # Client side: no GOAWAY after N requests or a short idle time in the middle of a long run
    # (the 1000-request default makes nginx send GOAWAY every 1000 calls on a connection).
    keepalive_requests {g.client_keepalive_requests};
    keepalive_timeout {int(g.client_keepalive_timeout)}s;
    http2_max_concurrent_streams 1000;
    client_max_body_size 0;
    # ingress-nginx's controller ConfigMap enable-underscores-in-headers: "true" (the chart's
    # values ask for it): metadata keys with "_" reach the pods (greeter check's
    # metadata_underscore case); nginx drops such headers by default.
    underscores_in_headers on;
    client_body_timeout {STREAM_TIMEOUT_S}s;
    send_timeout {STREAM_TIMEOUT_S}s;

    # The GRPCRoute's canary rule: {CANARY_HEADER}: "{CANARY_VALUE}" selects the canary.
    map $http_x_canary $greeter_upstream {{
        "{CANARY_VALUE}" canary;
        default {fleet};
    }}
{_route_map(g)}
{_backend_tls_map(g)}
    # The ALB multi-cluster Ingress: every member cluster's grpc-service behind one rule
    # (with weights: weight= per backend so each cluster's total is its share; a standby
    # cluster's backends are backup servers, used only while no active one is available).
{_upstream("fleet", g.fleet, g)}
{_upstream("canary", g.canary, g)}{_member_upstreams(g)}{_web_upstreams(g)}
    # Any other host name: ingress-nginx's default backend (404, UNIMPLEMENTED to gRPC).
    server {{
        listen 127.0.0.1:{g.port} ssl http2 default_server;
        server_name _;
        ssl_certificate {g.cert};
        ssl_certificate_key {g.key};
{_web_location(g)}
        location / {{
            return 404;
        }}
    }}

    server {{
        listen 127.0.0.1:{g.port} ssl http2;
        server_name {g.host};
        ssl_certificate {g.cert};
        ssl_certificate_key {g.key};
        ssl_protocols TLSv1.2 TLSv1.3;

        # backend-protocol GRPC, with stream-friendly timeouts (proxy-read/send-timeout).
        grpc_read_timeout {STREAM_TIMEOUT_S}s;
        grpc_send_timeout {STREAM_TIMEOUT_S}s;
        grpc_connect_timeout {_ms(g.connect_timeout)};
        grpc_socket_keepalive on;
        # Retry on another backend when a call never reached one: refused or failed connection,
        # connect timeout, or an HTTP/2 refusal (GOAWAY/RST_STREAM before any response), which
        # nginx reports as invalid_header. gRPC calls are POSTs, hence non_idempotent.
        grpc_next_upstream error timeout invalid_header non_idempotent;
        grpc_next_upstream_tries 0;
        grpc_next_upstream_timeout {_ms(g.next_upstream_timeout)};
{_backend_tls(g)}{_web_location(g)}
{_quick_locations(g, scheme, canary_name)}
        location /helloworld.Greeter/ {{{_web_by_content_type(g)}
            grpc_pass {scheme}://$greeter_upstream;{canary_name}
        }}
        location / {{{_web_by_content_type(g)}
            grpc_pass {scheme}://{fleet};
        }}
    }}
}}
"""


class Nginx(GatewayProcess):
    """One nginx master process in the foreground, with its prefix folder."""

    name = "nginx"
    error = NginxError
    install_hint = "install it with: apt-get install -y nginx-light"
    search_path = "/usr/sbin:/usr/local/sbin"
    drain_by_endpoint = True  # a connection per call: a removed endpoint gets no new call

    def __init__(self, gateway: NginxGateway, prefix: Path, binary: str = "") -> None:
        super().__init__(
            prefix, gateway.port, prefix / "nginx.conf", prefix / "nginx.stderr", self.find(binary)
        )
        self.gateway = gateway

    @property
    def access_log(self) -> Path:
        """One line per call (``log_format grpc``), written as each call ends."""
        return self.prefix / "access.log"

    def render(self) -> str:
        return render(self.gateway, self.prefix)

    def command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), *extra]

    def validate_command(self) -> list[str]:
        return self.command("-t", "-q", "-e", str(self.prefix / "error.log"))

    def write_config(self) -> None:
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "logs"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        super().write_config()

    def graceful_stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGQUIT: nginx finishes the calls in hand, then exits."""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGQUIT)

    def error_log(self, tail: int = 20) -> str:
        return tail_lines(self.prefix / "error.log", tail)

    @property
    def return_bound(self) -> float:
        """nginx tries a failed backend again after ``fail_timeout`` (whole seconds), plus one."""
        return max(1, round(self.gateway.fail_timeout)) + 1.0

    async def back_in_rotation(self, addresses: Sequence[str], timeout: float) -> None:
        """nginx has no health checks: a backend it marked failed while it was down is tried
        again once ``fail_timeout`` has passed."""
        await asyncio.sleep(self.gateway.fail_timeout)


def find_nginx(binary: str = "") -> str:
    """Path of nginx (``binary``, else PATH, else /usr/sbin); NginxError naming the apt command."""
    return Nginx.find(binary)
