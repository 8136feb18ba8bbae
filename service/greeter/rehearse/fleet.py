"""The rehearsal fleet: Greeter backends in two "clusters", a canary, and a gateway in front
(nginx, or Envoy with ``gateway="envoy"``).

``async with Rehearsal(RehearsalConfig()) as r:`` starts everything on loopback (the gateway
on 127.0.0.1, each pod on an address of its own, :mod:`greeter.rehearse.netfilter`) and stops
it all on the way out (backends drained with SIGTERM, bounded, then killed if they linger;
packet-filter rules deleted, the address block released).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from greeter import certs
from greeter.client import Target
from greeter.rehearse import cpu_quota, netfilter, policy, traces
from greeter.rehearse.config import RehearsalConfig, pod_name
from greeter.rehearse.cpu_quota import CpuQuota
from greeter.rehearse.envoy import Envoy, find_envoy
from greeter.rehearse.envoy_config import EnvoyGateway
from greeter.rehearse.gateway import (
    BACKEND_HOST,
    CANARY_BACKEND_HOST,
    CANARY_HEADER,
    CANARY_VALUE,
    HOST,
    WEB_PATH,
    BackendTLS,
    Endpoint,
    GatewayProcess,
)
from greeter.rehearse.netfilter import METRICS_PORT, WEB_PORT, AddressBlock, Firewall
from greeter.rehearse.nginx import Nginx, NginxGateway, find_nginx
from greeter.rehearse.pods import Backend, free_port
from greeter.rehearse.prometheus import Prometheus, selector, service_labels
from greeter.rehearse.traces import otlp_endpoint
from greeter.rehearse.traffic import SLOW_CALL_S

# See Rehearsal.dead_grace_s.
ENVOY_DEAD_GRACE_S = 0.1
CANARY_POD = "greeter-canary-0"
# The shortest ping interval the pods allow: below the gateway's keep-alive pings.
KEEPALIVE_MIN_TIME_S = 1.0
# The slowest call a partition may cause with the shipped settings, per gateway (seconds):
# Envoy gives each try of a quick idempotent call PER_TRY_TIMEOUT_S (two pods of the cut
# cluster, then a live one); nginx gives each backend QUICK_TIMEOUT_S to connect or answer.
# docs/rehearsal.md, "Partition", has the measured numbers.
PARTITION_BOUND_S = {"envoy": 2.0, "nginx": 2.0}
# The pods' CPU-quota groups: greeter-rehearse-pid<PID>-<pod> (greeter.rehearse.cpu_quota).
QUOTA_PREFIX = "greeter-rehearse"


def _service_names(name: str) -> list[str]:
    """A Service's in-cluster DNS names: ``svc.ns.svc`` and ``svc.ns.svc.cluster.local``."""
    return [name, f"{name}.cluster.local"]


class Rehearsal:
    """The whole rehearsal; use as an async context manager."""

    def __init__(self, config: RehearsalConfig | None = None) -> None:
        self.config = config or RehearsalConfig()
        self.workdir = Path()
        self.backends: list[Backend] = []
        self.canary: list[Backend] = []
        self.gateway: GatewayProcess | None = None
        self.prometheus: Prometheus | None = None
        self._made_workdir = False
        # The pods' addresses (127.B.C.P) and this run's packet-filter rules; ``firewall`` is
        # None where the machine does not allow them (``firewall_problem`` says why).
        self.block: AddressBlock | None = None
        self.firewall: Firewall | None = None
        self.firewall_problem = ""
        self._refused: dict[str, list[list[str]]] = {}
        self._cut: dict[str, list[list[str]]] = {}
        # The pods' CPU quotas (``pod_cpu``), and the core the load tester may have to itself
        # when the quota'd pods are pinned to another (None: not pinned).
        self.quotas: list[CpuQuota] = []
        self.client_core: int | None = None

    # -- what users dial -----------------------------------------------------
    @property
    def nginx(self) -> Nginx | None:
        """The nginx gateway (None with Envoy, or before it starts)."""
        return self.gateway if isinstance(self.gateway, Nginx) else None

    @property
    def envoy(self) -> Envoy | None:
        """The Envoy gateway (None with nginx, or before it starts)."""
        return self.gateway if isinstance(self.gateway, Envoy) else None

    @property
    def address(self) -> str:
        if self.gateway is None:
            raise RuntimeError("the rehearsal is not running")
        return self.gateway.address

    @property
    def dead_grace_s(self) -> float:
        """How long after killed backends have exited a failed call may still have been sent
        to them: none with nginx (a connection per call, refused at once); with Envoy, which
        keeps its connection to each pod open, a call written to that connection in the
        instant before Envoy has read that it closed (the kernel closes it as the process
        dies, about when the rehearsal reaps it) fails, and is not retried, since it was
        sent. Measured: such calls within a few ms; 0.1 s leaves room for a busy machine."""
        keeps = self.gateway.keeps_connections if self.gateway else self.config.gateway == "envoy"
        return ENVOY_DEAD_GRACE_S if keeps else 0.0

    @property
    def return_bound(self) -> float:
        """Seconds after killed backends are SERVING again by which the gateway sends them
        calls: nginx retries a failed backend after ``fail_timeout`` (whole seconds, plus
        one); Envoy once its health checks pass ``healthy_threshold`` times (plus one)."""
        if self.gateway is None:
            raise RuntimeError("the rehearsal is not running")
        return self.gateway.return_bound

    @property
    def partition_bound_s(self) -> float:
        """The slowest a call may be while a cluster is cut off (``PARTITION_BOUND_S``)."""
        return PARTITION_BOUND_S[self.config.gateway]

    @property
    def held_s(self) -> float:
        """How long the gateway waits on a silent pod before it gives a quick idempotent call
        to another (Envoy: the per-try timeout; nginx: the quick connect/read timeout)."""
        return self.config.per_try_timeout or SLOW_CALL_S

    @property
    def cert(self) -> Path:
        return self.workdir / "tls" / "tls.crt"

    @property
    def web_url(self) -> str:
        """The page, through the gateway ("" without ``web``)."""
        return f"https://{self.address}{WEB_PATH}" if self.config.web else ""

    @property
    def fleet_ca(self) -> Path:
        """The CA of the backends' certificates (with ``backend_tls``)."""
        return self.workdir / "tls" / "fleet" / "ca.crt"

    def target(self, *metadata: tuple[str, str], canary: bool = False) -> Target:
        """A client target for the gateway, verified against the rehearsal's certificate."""
        md = list(metadata)
        if self.config.auth_tokens:
            md.append(("authorization", f"Bearer {self.config.auth_tokens[0]}"))
        if canary:
            md.append((CANARY_HEADER, CANARY_VALUE))
        return Target(
            address=self.address, cacert=str(self.cert), authority=HOST, metadata=tuple(md)
        )

    def pod_weights(self) -> dict[str, int]:
        """nginx ``weight=`` of each fleet backend by pod (all 1 without ``weights``)."""
        c = self.config
        if not c.weights:
            return {b.pod: 1 for b in self.backends}
        per_pod = policy.pod_weights(
            dict(c.weights), {name: len(self.cluster(name)) for name in c.clusters}
        )
        return {b.pod: per_pod[b.cluster] for b in self.backends}

    def commands(self) -> list[str]:
        """Ready-to-paste commands against the running gateway."""
        a = self.address
        auth = ""
        if self.config.auth_tokens:
            auth = f" -m 'authorization:Bearer {self.config.auth_tokens[0]}'"
        grpcurl_auth = auth.replace(" -m ", " -H ")
        routed = []
        if self.config.route_header:
            routed.append(
                f"greeter call {a} --insecure --authority {HOST}{auth} "
                f"-m {self.config.route_header}:{self.config.clusters[-1]}"
            )
        web = []
        if self.config.web:
            web = [
                f"greeter call {a} --protocol grpc-web --insecure --authority {HOST}{auth}",
                f"greeter load {a} --protocol grpc-web --insecure --authority {HOST}{auth} "
                "-c 8 -n 2000",
            ]
        return [
            *web,
            f"grpcurl -insecure -authority {HOST} {a} list",
            f'grpcurl -insecure -authority {HOST}{grpcurl_auth} -d \'{{"name": "you"}}\' '
            f"{a} helloworld.Greeter/SayHello",
            f"greeter call {a} --insecure --authority {HOST}{auth}",
            f"greeter call {a} --insecure --authority {HOST}{auth} "
            f"-m {CANARY_HEADER}:{CANARY_VALUE}",
            *routed,
            f"greeter call {a} --insecure --authority {HOST}{auth} --method SayHelloStreamReply",
            f"greeter health {a} --insecure --authority {HOST}",
            f"greeter load {a} --insecure --authority {HOST}{auth} -c 8 -z 10s --rps 200",
        ]

    def trace_command(self) -> str:
        """With ``traces``: a ``greeter load`` through the gateway that starts a trace on every
        call and exports its CLIENT spans to the same endpoint ("" without)."""
        if not self.config.traces:
            return ""
        auth = ""
        if self.config.auth_tokens:
            auth = f" -m 'authorization:Bearer {self.config.auth_tokens[0]}'"
        return (
            f"OTEL_EXPORTER_OTLP_ENDPOINT={self.config.traces} greeter load {self.address} "
            f"--insecure --authority {HOST}{auth} -n 20 -c 2 --trace-sample 1"
        )

    # -- lifecycle -----------------------------------------------------------
    async def __aenter__(self) -> Rehearsal:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _backend(
        self, cluster: str, pod: str, pair: certs.Pair | None, name: str, host: str
    ) -> Backend:
        c = self.config
        metrics_port = METRICS_PORT if c.prometheus else 0
        command = [
            sys.executable,
            "-m",
            "greeter",
            "serve",
            f"--host={host}",
            f"--port={netfilter.GRPC_PORT}",
            f"--metrics-host={host}",
            f"--metrics-port={metrics_port}",
            f"--cluster-name={cluster}",
            f"--pod-name={pod}",
            f"--drain-delay={c.drain}",
            f"--grace-period={c.grace_period}",
            # Envoy pings its upstream connections every KEEPALIVE_INTERVAL_S (2 s) to find a
            # dead one; a server that allows pings only every 10 s (the default) answers a
            # busy pinger with GOAWAY (too_many_pings). The chart's server.keepaliveMinTime.
            f"--keepalive-min-time={KEEPALIVE_MIN_TIME_S}",
            "--access-log=false",
            "--log-format=json",
            "--event-loop=asyncio",
        ]
        if c.auth_tokens:
            command += ["--auth-enabled=true", f"--auth-tokens={','.join(c.auth_tokens)}"]
        if pair is not None:
            command += [f"--tls-cert={pair.cert}", f"--tls-key={pair.key}"]
        web_port = 0
        if c.web:
            web_port = WEB_PORT
            command += [f"--web-host={host}", f"--web-port={web_port}"]
        command += list(c.server_args)
        # Nothing from the caller's GREETER_* environment leaks into the backends.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GREETER_")}
        if c.traces:
            env = traces.pod_env(env, c.traces)
        log = self.workdir / "logs" / f"{pod}.log"
        ca = self.fleet_ca if pair is not None else None
        backend = Backend(
            cluster, pod, host, command, env, log, ca=ca, server_name=name, web_port=web_port
        )
        backend.metrics_port = metrics_port
        return backend

    async def start(self) -> None:
        c = self.config
        # The gateway's binary: fail before anything starts.
        binary = find_envoy(c.envoy) if c.gateway == "envoy" else find_nginx(c.nginx)
        if c.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="greeter-rehearse-"))
            self._made_workdir = True
        else:
            self.workdir = c.workdir
        if c.prometheus:  # its binary and the chart's rules, before anything starts
            rules_for = selector(*service_labels(BACKEND_HOST))
            folder = self.workdir / "prometheus"
            self.prometheus = Prometheus.prepare(folder, c.prometheus_binary, rules_for)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.firewall_problem = await asyncio.to_thread(netfilter.problem)
        if not self.firewall_problem:
            await asyncio.to_thread(netfilter.sweep)  # what killed runs left behind
            self.firewall = Firewall()
        pods = [(i, j) for i in range(len(c.clusters)) for j in range(c.pods_per_cluster)]
        self.block = netfilter.claim_block(pods)
        pair = certs.make_leaf(self.workdir / "tls", "tls", [HOST, "localhost", "127.0.0.1"])
        # With backend TLS: a fleet CA, and one certificate per Service (every pod of a release
        # mounts the same Secret), named as the gateway addresses the Service in the cluster.
        fleet_pair = canary_pair = None
        canary_name = CANARY_BACKEND_HOST if c.canary else BACKEND_HOST
        if c.backend_tls:
            folder = self.fleet_ca.parent
            ca = certs.make_ca(folder, "greeter rehearsal fleet CA")
            fleet_pair = certs.make_leaf(folder, "grpc-service", _service_names(BACKEND_HOST), ca)
            canary_pair = certs.make_leaf(
                folder, "grpc-service-canary", _service_names(CANARY_BACKEND_HOST), ca
            )
        block = self.block.block
        for i, cluster in enumerate(c.clusters):
            for index in range(c.pods_per_cluster):
                pod = pod_name(cluster, index)
                host = netfilter.pod_host(block, i, index)
                self.backends.append(self._backend(cluster, pod, fleet_pair, BACKEND_HOST, host))
        if c.canary:
            host = netfilter.canary_host(block)
            self.canary.append(
                self._backend(c.clusters[0], CANARY_POD, canary_pair, CANARY_BACKEND_HOST, host)
            )
        everyone = self.backends + self.canary
        await asyncio.to_thread(self._hold_pods)
        for backend in everyone:
            backend.spawn()
        await asyncio.gather(*(b.wait_ready() for b in everyone))
        backend_tls = (
            BackendTLS(self.fleet_ca, BACKEND_HOST, canary_name) if c.backend_tls else None
        )
        if c.gateway == "envoy":
            self.gateway = Envoy(
                self._envoy_gateway(pair, backend_tls), self.workdir / "envoy", binary
            )
        else:
            self.gateway = Nginx(
                self._nginx_gateway(pair, backend_tls), self.workdir / "nginx", binary
            )
        await asyncio.to_thread(self.gateway.start)
        if self.prometheus is not None:
            targets = [b.scrape_target() for b in everyone]
            await asyncio.to_thread(self.prometheus.start, targets, free_port())

    def _hold_pods(self) -> None:
        """Each pod with a quota (``pod_cpu``) in a CPU cgroup of its own (the groups a killed
        run left are removed first). When the quotas add up to a core at most and this
        process may use more than one, those pods are pinned to the first core and the last
        is left to the load tester (``client_core``), so the pods' quotas, not the machine,
        bound the fleet."""
        c = self.config
        if not c.pod_cpu:
            return
        reason = cpu_quota.problem()
        if reason:
            raise RuntimeError(f"--pod-cpu unavailable: {reason}")
        cpu_quota.sweep(QUOTA_PREFIX)
        held = [(b, c.pod_quota(b.pod)) for b in self.backends]
        cores = sorted(os.sched_getaffinity(0))
        total = sum(q for _, q in held if q is not None)
        pin = len(cores) > 1 and total <= 1.0
        for backend, quota in held:
            if quota is None:
                continue
            group = CpuQuota(cpu_quota.group_name(QUOTA_PREFIX, backend.pod), quota)
            self.quotas.append(group)
            backend.quota = group.create()
            if pin:
                backend.cpus = str(cores[0])
        self.client_core = cores[-1] if pin else None

    def _envoy_gateway(self, pair: certs.Pair, backend_tls: BackendTLS | None) -> EnvoyGateway:
        c = self.config
        return EnvoyGateway(
            port=c.port or free_port(),
            admin_port=free_port(),
            fleet=[Endpoint(b.upstream, b.cluster, b.pod) for b in self.backends],
            canary=[Endpoint(b.upstream, b.cluster, b.pod) for b in self.canary],
            cert=pair.cert,
            key=pair.key,
            access_log=self.workdir / "envoy" / "access.log",
            health=c.health_check,
            ejection_time=c.fail_timeout,
            connect_timeout=c.connect_timeout,
            backend_tls=backend_tls,
            weights=dict(c.weights),
            standby=c.standby,
            route_header=c.route_header,
            web=[b.web_upstream for b in self.backends + self.canary if b.web_port],
            delay_ms=c.gateway_delay_ms,
            retries=c.gateway_retries,
            per_try_timeout=c.per_try_timeout,
            traces=otlp_endpoint(c.traces) if c.traces else None,
        )

    def _nginx_gateway(self, pair: certs.Pair, backend_tls: BackendTLS | None) -> NginxGateway:
        c = self.config
        weights = self.pod_weights()
        return NginxGateway(
            port=c.port or free_port(),
            fleet=[b.upstream for b in self.backends],
            canary=[b.upstream for b in self.canary] or [b.upstream for b in self.backends],
            cert=pair.cert,
            key=pair.key,
            fail_timeout=c.fail_timeout,
            connect_timeout=c.connect_timeout,
            quick_timeout=c.per_try_timeout,
            backend_tls=backend_tls,
            weights={b.upstream: weights[b.pod] for b in self.backends},
            backup=[b.upstream for b in self.backends if b.cluster in c.standby],
            route_header=c.route_header,
            members={name: [b.upstream for b in self.cluster(name)] for name in c.clusters},
            web_fleet=[b.web_upstream for b in self.backends if b.web_port],
            web_canary=[b.web_upstream for b in self.canary if b.web_port],
        )

    async def stop(self) -> None:
        """Stop Prometheus, drain every backend (bounded), then stop the gateway; kill
        whatever is left."""
        bound = self.config.drain + self.config.grace_period + 5.0
        if self.prometheus is not None:
            await asyncio.to_thread(self.prometheus.stop)
        try:
            await asyncio.gather(*(b.stop(bound) for b in self.backends + self.canary))
            if self.gateway is not None:
                await asyncio.to_thread(self.gateway.stop)
        finally:
            self._undo_machine()
        if self._made_workdir and not self.config.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill_now(self) -> None:
        """Second Ctrl-C: SIGKILL everything at once, without waiting."""
        for backend in self.backends + self.canary:
            backend.signal(signal.SIGKILL)
        if self.prometheus is not None:
            self.prometheus.kill()
        if self.gateway is not None:
            self.gateway.kill()
        self._undo_machine()

    def _undo_machine(self) -> None:
        """Delete this run's packet-filter rules and release its address block."""
        if self.firewall is not None:
            self.firewall.clear()
        self._cut.clear()
        self._refused.clear()
        if self.block is not None:
            self.block.release()
        for group in self.quotas:
            group.remove()

    # -- disruptions ---------------------------------------------------------
    def cluster(self, name: str) -> list[Backend]:
        return [b for b in self.backends if b.cluster == name]

    async def restart(self, backend: Backend) -> int | None:
        """Terminate one backend as Kubernetes does, wait for its drain to finish, and start it
        again on the same socket. With nginx its endpoint is removed (its socket unlinked) and
        it gets SIGTERM; with Envoy it only gets SIGTERM, and Envoy's health checks see it
        go NOT_SERVING."""
        bound = self.config.drain + self.config.grace_period + 5.0
        if self.gateway is not None and self.gateway.drain_by_endpoint:
            self.remove_endpoint(backend)
        code = await backend.stop(bound)
        backend.spawn()
        self.restore_endpoint(backend)  # it takes calls as soon as it listens, as before
        backend.restarts += 1
        await backend.wait_ready()
        return code

    def remove_endpoint(self, backend: Backend) -> None:
        """Take the backend out of the gateway's endpoints: new connections are refused,
        connections already open keep being served. Kubernetes does this when a pod starts
        terminating, at the same time as it runs the preStop hook and sends SIGTERM. Without a
        packet filter (not root) the pod only gets SIGTERM: it keeps accepting through its
        drain delay, and refuses once it stops listening."""
        if self.firewall is not None:
            rule = self.firewall.refuse_new(backend.host, backend.port)
            self._refused.setdefault(backend.pod, []).append(rule)

    def restore_endpoint(self, backend: Backend) -> None:
        if self.firewall is not None:
            self.firewall.remove(self._refused.pop(backend.pod, []))

    def cut(self, name: str) -> list[Backend]:
        """Drop every packet between this machine and cluster ``name``'s pods, both ways."""
        if self.firewall is None:
            raise RuntimeError(f"partition unavailable: {self.firewall_problem}")
        victims = self.cluster(name)
        self._cut[name] = self.firewall.cut([b.host for b in victims])
        return victims

    def heal(self, name: str) -> None:
        if self.firewall is not None:
            self.firewall.remove(self._cut.pop(name, []))

    async def back_in_rotation(self, backend: Backend) -> None:
        """Until the gateway sends the (SERVING again) backend calls: nginx once
        ``fail_timeout`` has passed; Envoy once its health checks passed (bounded)."""
        if self.gateway is None:
            raise RuntimeError("the rehearsal is not running")
        await self.gateway.back_in_rotation([backend.upstream], self.return_bound + 30.0)

    async def kill(self, backends: Sequence[Backend]) -> None:
        """SIGKILL: no drain, connections reset, as when a whole cluster drops out."""
        for backend in backends:
            backend.signal(signal.SIGKILL)
        for backend in backends:
            await backend.wait_exit(5.0)

    async def revive(self, backends: Sequence[Backend]) -> None:
        for backend in backends:
            if not backend.alive:
                backend.spawn()
                backend.restarts += 1
        await asyncio.gather(*(b.wait_ready() for b in backends))
