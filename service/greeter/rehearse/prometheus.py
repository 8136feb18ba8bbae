"""A real Prometheus in the rehearsal (``greeter rehearse --prometheus``).

The Debian ``prometheus`` binary runs unprivileged with everything under the rehearsal's work
folder (``prometheus/prometheus.yml``, ``rules.json``, ``data/``, ``prometheus.log``), listens on
127.0.0.1 and scrapes every backend's ``/metrics`` once a second. Each backend serves metrics on
a 127.0.0.1 port of its own that it keeps across restarts, so a backend restarted by the rolling
drain is scraped again as soon as it is back.

Every series gets the labels a ServiceMonitor scrape gives the chart's pods, so the chart's alert
rules and dashboard work unchanged: ``job`` and ``namespace`` from the backend's Service
(``grpc-service`` in ``gateway-demo``; the canary's is ``grpc-service-canary``), and the target
labels ``cluster`` and ``pod``, the names the backend sends as ``x-greeter-cluster`` and
``x-greeter-pod``. The alert rules of ``chart/files/prometheus-rules.yaml`` are loaded filled in
with the chart's defaults (:func:`greeter.monitoring.rule_groups`) and evaluated every second.

Both files are written as JSON, which Prometheus reads as the YAML it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greeter import monitoring

logger = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install -y prometheus (the Debian package)"
SCRAPE_INTERVAL_S = 1
READY_TIMEOUT_S = 60.0
# Prometheus applies new targets every 5 s: the first scrapes come that long after it is ready.
FIRST_SCRAPE_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
# The label names the chart's ServiceMonitor and rules use (prometheusRule.clusterLabel).
CLUSTER_LABEL = "cluster"
POD_LABEL = "pod"
# 127.0.0.1 only, never through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusError(RuntimeError):
    """prometheus is missing, rejects its configuration, or would not start."""


class QueryError(RuntimeError):
    """Prometheus answered a query with an error (a bad expression, say)."""


def find_prometheus(binary: str = "") -> str:
    """Path of prometheus (``binary``, else PATH); PrometheusError naming the apt package."""
    path = shutil.which(binary or "prometheus")
    if path:
        return path
    if binary:
        raise PrometheusError(f"prometheus not found at {binary!r}: {INSTALL_HINT}")
    raise PrometheusError(f"--prometheus needs prometheus, which is not installed: {INSTALL_HINT}")


def service_labels(service_host: str) -> tuple[str, str]:
    """``job`` and ``namespace`` of a Service's DNS name (``grpc-service.gateway-demo.svc``):
    what a ServiceMonitor scrape labels its pods with (job = the Service's name)."""
    name, _, rest = service_host.partition(".")
    namespace = rest.partition(".")[0]
    if not name or not namespace:
        raise ValueError(f"{service_host!r} is not a Service name like NAME.NAMESPACE.svc")
    return name, namespace


def selector(job: str, namespace: str) -> str:
    """The chart's default rule selector for a release whose Service is ``job``."""
    return f"job={json.dumps(job)},namespace={json.dumps(namespace)}"


@dataclass(frozen=True)
class ScrapeTarget:
    """One backend's ``/metrics``, with the labels its series get."""

    job: str
    namespace: str
    cluster: str
    pod: str
    address: str  # 127.0.0.1:PORT


def render_config(targets: Sequence[ScrapeTarget], rules_file: Path) -> dict[str, Any]:
    """prometheus.yml: one scrape job per Service, every target with its labels."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for t in targets:
        labels = {"namespace": t.namespace, CLUSTER_LABEL: t.cluster, POD_LABEL: t.pod}
        jobs.setdefault(t.job, []).append({"targets": [t.address], "labels": labels})
    interval = f"{SCRAPE_INTERVAL_S}s"
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,  # at most the interval (the default 10s is refused)
            "evaluation_interval": interval,
        },
        "rule_files": [str(rules_file)],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": static}
            for job, static in jobs.items()
        ],
    }


class PrometheusAPI:
    """Prometheus' HTTP API at ``url`` (``http://127.0.0.1:PORT``), as the tests and a user's
    script ask it: instant queries, rules, targets."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def api(self, path: str, params: Mapping[str, str] | None = None, timeout: float = 10.0) -> Any:
        """GET (or, with ``params``, POST a form to) ``/api/v1/<path>``; the ``data`` of a
        success, QueryError with Prometheus' own message otherwise."""
        url = f"{self.url}/api/v1/{path}"
        body = urllib.parse.urlencode(params).encode() if params else None
        try:
            with _OPENER.open(url, data=body, timeout=timeout) as reply:
                answer = json.loads(reply.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the error as JSON
            try:
                answer = json.loads(exc.read())
            except ValueError:
                raise QueryError(f"{path}: HTTP {exc.code}") from None
        if answer.get("status") != "success":
            raise QueryError(f"{answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query (now, or at the Unix time ``at``): its vector's samples, or the
        scalar/string as a one-element list."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        samples: list[dict[str, Any]] = result
        return samples


class Prometheus:
    """The prometheus process: :meth:`prepare` (checks, before anything starts), :meth:`start`,
    :attr:`client` (its HTTP API), :meth:`stop` (SIGTERM, bounded, then SIGKILL)."""

    def __init__(self, folder: Path, binary: str, rules: Mapping[str, Any]) -> None:
        self.folder = folder
        self.binary = binary
        self.rules = rules
        self.port = 0
        self.targets: list[ScrapeTarget] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def prepare(cls, folder: Path, binary: str = "", rule_selector: str = "") -> Prometheus:
        """Find the binary and load the chart's rules (for ``rule_selector``, default the
        chart's default release) or fail with a clear error, starting nothing."""
        path = find_prometheus(binary)
        try:
            rules = monitoring.rule_groups(rule_selector or monitoring.DEFAULT_SELECTOR)
        except (monitoring.MonitoringError, OSError) as exc:
            raise PrometheusError(f"cannot load the alert rules: {exc}") from None
        return cls(folder, path, rules)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.folder / "prometheus.yml"

    @property
    def rules_file(self) -> Path:
        return self.folder / "rules.json"

    @property
    def log(self) -> Path:
        return self.folder / "prometheus.log"

    def start(self, targets: Sequence[ScrapeTarget], port: int) -> None:
        """Write the configuration, start prometheus and wait until it is ready and has
        scraped every target once (bounded)."""
        self.port = port
        self.targets = list(targets)
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        self.rules_file.write_text(json.dumps(self.rules, indent=2) + "\n")
        config = render_config(self.targets, self.rules_file)
        self.config_file.write_text(json.dumps(config, indent=2) + "\n")
        command = [
            self.binary,
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
                # Own session: a terminal's Ctrl-C reaches the rehearsal, which stops this.
                start_new_session=True,
            )
        self._wait_ready(READY_TIMEOUT_S)
        self._wait_scraped(FIRST_SCRAPE_TIMEOUT_S)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise PrometheusError(f"prometheus exited with {code}: {self._log_tail()}")
            with (
                contextlib.suppress(OSError),
                _OPENER.open(f"{self.url}/-/ready", timeout=2.0) as reply,
            ):
                if reply.status == 200:
                    return
            time.sleep(0.1)
        raise PrometheusError(f"prometheus was not ready within {timeout}s; see {self.log}")

    def _wait_scraped(self, timeout: float) -> None:
        """Until every target has been scraped successfully once: from then on each backend's
        series are there (and the rules see every pod), whatever the rehearsal does next."""
        want = {t.address for t in self.targets}
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        healthy: set[str] = set()
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited: {self._log_tail()}")
            with contextlib.suppress(OSError, QueryError):
                active = self.client.api("targets", timeout=5.0)["activeTargets"]
                last = {t["labels"]["instance"]: t["lastError"] for t in active}
                healthy = {t["labels"]["instance"] for t in active if t["health"] == "up"}
                if want <= healthy:
                    return
            time.sleep(0.2)
        missing = {a: last.get(a) or "not scraped yet" for a in sorted(want - healthy)}
        raise PrometheusError(
            f"prometheus did not scrape every backend within {timeout}s: {missing}; see {self.log}"
        )

    def _log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            tail = self.log.read_text(errors="replace").strip().splitlines()[-lines:]
            return " | ".join(tail) or "(no output)"
        return "(no log)"

    @property
    def client(self) -> PrometheusAPI:
        return PrometheusAPI(self.url)

    # -- stopping ------------------------------------------------------------------------
    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (prometheus closes its database), SIGKILL if it lingers past ``timeout``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("prometheus did not stop within %ss; killing it", timeout)
            self.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
            return proc.poll()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
