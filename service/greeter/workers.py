"""``greeter serve --workers N``: N server processes on one port, one parent.

A Python gRPC server is bound to one core, so to use every core the parent
starts N worker processes that each run the ordinary server on the same port
(``SO_REUSEPORT``: the kernel spreads *connections* over the workers, not
calls). The parent:

1. ``startup``: checks the port is free (so a clash fails instead of silently
   sharing it), makes a private ``PROMETHEUS_MULTIPROC_DIR`` and serves the
   aggregated ``/metrics`` from it, then starts the workers;
2. ``serve``: waits for a signal, or for a worker to exit on its own (then the
   others are drained too and the exit code is non-zero);
3. ``drain``: forwards SIGTERM to every worker at once, so they run their
   drain phases together, and waits for them within drain delay + grace
   period (+ a margin), killing any that overrun;
4. ``metrics``: stops the metrics endpoint and removes the directory.

Each worker runs in its own process group (a terminal's Ctrl-C reaches only
the parent, which forwards it once), tags its identity with
``x-greeter-worker: <index>`` and its log lines with ``worker``. A second
SIGTERM/SIGINT to the parent kills the workers and exits at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from greeter import ports
from greeter.metrics import MULTIPROC_DIR_ENV
from greeter.settings import Settings

logger = logging.getLogger(__name__)

STARTUP_FAILURE = 3
WORKER_FAILED = 1
STOP_MARGIN = 10.0  # seconds beyond drain delay + grace period before workers are killed
_PR_SET_PDEATHSIG = 1


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker if the parent dies without forwarding a signal."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def worker_main(settings: Settings, index: int) -> None:
    """Entry point of a worker process (spawned, so it starts from a fresh interpreter)."""
    os.setpgid(0, 0)  # signals come from the parent only
    _die_with_parent()
    from greeter import logs, server

    logs.configure(settings.log_level, settings.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(index))
    raise SystemExit(server.run(settings, worker=index))


def resolve_port(settings: Settings) -> int:
    """Check the gRPC port is free (and pick one for port 0) before workers share it."""
    if settings.is_unix:
        raise OSError("workers share a TCP port (SO_REUSEPORT); a unix socket cannot be shared")
    return ports.resolve_port(settings.host, settings.port)


class Supervisor:
    """The parent process: starts, watches and drains the workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers: list[BaseProcess] = []
        self.signals: list[int] = []
        self._context = multiprocessing.get_context("spawn")

    # -- signals ---------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signals:
            logger.warning("second signal %s: killing workers", signal.Signals(signum).name)
            for worker in self.workers:
                if worker.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGKILL)
            os._exit(128 + signum)
        self.signals.append(signum)

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    # -- phases ----------------------------------------------------------------
    def start_workers(self, settings: Settings) -> None:
        for index in range(settings.workers):
            worker = self._context.Process(
                target=worker_main, args=(settings, index), name=f"greeter-worker-{index}"
            )
            worker.start()
            self.workers.append(worker)
        logger.info(
            "workers started",
            extra={
                "phase": "startup",
                "workers": len(self.workers),
                "pids": [w.pid for w in self.workers],
                "address": f"{settings.host}:{settings.port}",
            },
        )

    def wait_until_stop(self) -> BaseProcess | None:
        """Block until a signal arrives (None) or a worker exits on its own (that worker)."""
        sentinels = {w.sentinel: w for w in self.workers}
        while not self.signals:
            ready = wait(list(sentinels), timeout=0.5)
            if ready:
                return sentinels[ready[0]]  # type: ignore[index]
        return None

    def drain(self) -> list[int | None]:
        """SIGTERM every live worker together; wait, bounded; kill the ones that overrun."""
        for worker in self.workers:
            if worker.exitcode is None and worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        limit = self.settings.drain_delay + self.settings.grace_period + STOP_MARGIN
        deadline = time.monotonic() + limit
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            if worker.exitcode is None:
                logger.error("worker %s overran the drain: killing it", worker.name)
                worker.kill()
                worker.join(5)
        return [w.exitcode for w in self.workers]


def run(settings: Settings) -> int:
    """Run ``settings.workers`` servers on one port until SIGTERM/SIGINT; the exit code."""
    from greeter.metrics import MetricsEndpoint, mark_worker_dead, multiprocess_registry

    began = time.perf_counter()
    supervisor = Supervisor(settings)
    supervisor.install_signal_handlers()
    # 1. startup
    try:
        port = resolve_port(settings)
    except OSError as exc:
        address = f"{settings.host}:{settings.port}"
        logger.error("start-up failed: cannot listen on %s: %s", address, exc)
        return STARTUP_FAILURE
    settings = settings.replace(port=port)
    metrics_dir = tempfile.mkdtemp(prefix="greeter-metrics-") if settings.metrics_port else ""
    endpoint: MetricsEndpoint | None = None
    previous = os.environ.get(MULTIPROC_DIR_ENV)
    try:
        if metrics_dir:
            # Workers inherit it; prometheus_client chooses multiprocess mode from it.
            os.environ[MULTIPROC_DIR_ENV] = metrics_dir
            endpoint = MetricsEndpoint(
                multiprocess_registry(), settings.metrics_host, settings.metrics_port
            )
            try:
                endpoint.start()
            except OSError as exc:
                logger.error("start-up failed: cannot listen on metrics port: %s", exc)
                return STARTUP_FAILURE
        supervisor.start_workers(settings)
        # 2. serve
        failed = supervisor.wait_until_stop()
        if failed is not None:
            failed.join()
            logger.error(
                "worker %s exited with %s: stopping the others", failed.name, failed.exitcode
            )
        else:
            logger.info("signal %s: draining workers", signal.Signals(supervisor.signals[0]).name)
        # 3. drain
        codes = supervisor.drain()
        logger.info(
            "workers stopped",
            extra={"phase": "stop", "exit_codes": codes},
        )
    finally:
        # 4. metrics
        if endpoint is not None:
            endpoint.stop()
        if metrics_dir:
            for worker in supervisor.workers:
                if worker.pid is not None:
                    with contextlib.suppress(OSError):
                        mark_worker_dead(worker.pid)
            shutil.rmtree(metrics_dir, ignore_errors=True)
            if previous is None:
                os.environ.pop(MULTIPROC_DIR_ENV, None)
            else:
                os.environ[MULTIPROC_DIR_ENV] = previous
    logger.info("stopped", extra={"took_s": round(time.perf_counter() - began, 3)})
    if failed is not None:
        return STARTUP_FAILURE if failed.exitcode == STARTUP_FAILURE else WORKER_FAILED
    return 0 if all(code == 0 for code in codes) else WORKER_FAILED
