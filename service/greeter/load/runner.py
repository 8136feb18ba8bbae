"""Run a load test: here, or split over ``procs`` worker processes whose counters and
histograms are merged exactly.

Phases, in every process: ``connect`` (all channels ready, or ConnectError with the
reason), ``warmup`` (calls not recorded), ``ready`` (wait for the common start time:
``--start-at``, or just after the last process is ready), ``load``, ``report``. Worker
processes ignore SIGINT; the parent turns Ctrl-C into a ``stop`` message, so every process
hands in what it did and the report is partial but exact. The processes' measurements are
merged by greeter.load.merge.combine, as ``greeter load merge`` merges reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from greeter.client import TargetError
from greeter.load.config import ConfigError, LoadConfig
from greeter.load.engine import ConnectError, Run, connected, request_bytes, start_loop
from greeter.load.outcome import Outcome, combine
from greeter.load.recorder import Recorder
from greeter.load.report import Report, build_report, wall_time

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]  # calls done, errors, seconds elapsed
Notice = Callable[[str], None]  # a warning for the user (the CLI: one line on stderr)
PROGRESS_EVERY = 0.5
DRAIN = 1.0  # seconds calls in flight get when the run ends by time or Ctrl-C
START_DELAY = 0.05  # the common start is this far after the last process is ready
SPAWN_GRACE = 60.0  # seconds a worker process gets to start, on top of connect and warmup


def run_load(
    config: LoadConfig,
    progress: Progress | None = None,
    handle_sigint: bool = False,
    notice: Notice | None = None,
) -> Report:
    """Run the load test described by ``config`` and return its report.

    Raises ConnectError when the target cannot be reached and ConfigError/TargetError
    for arguments that cannot work. With ``handle_sigint`` (the CLI), Ctrl-C stops the
    run and the report covers what was done (``interrupted`` is set). ``notice`` hears
    of a ``--start-at`` that passed before the load was ready."""
    config = replace(config, total=config.effective_total)
    request_bytes(config)  # a request that does not fit its message is a bad argument
    procs = min(config.procs, config.concurrency, config.total or config.concurrency)
    if procs <= 1:
        outcome = _run_here(replace(config, procs=1), progress, handle_sigint, notice)
    else:
        outcome = _run_procs(config, procs, progress, handle_sigint, notice)
    return build_report(replace(config, procs=procs), outcome)


def _start(config: LoadConfig, earliest: float, notice: Notice | None) -> float:
    """When the load phase starts (a perf_counter() time): at --start-at, or at
    ``earliest`` when there is none or it passed (then ``notice`` hears of it)."""
    if config.start_at is None:
        return earliest
    asked = time.perf_counter() + (config.start_at - time.time())
    if asked < earliest and notice is not None:
        notice(
            f"--start-at {wall_time(config.start_at)} passed "
            f"{time.perf_counter() - asked:.3f} s before the load was ready; starting now, "
            "late (start_lag_s in the report says by how much)"
        )
    return max(asked, earliest)


# -- in this process ----------------------------------------------------------------------
def _end_of(config: LoadConfig, start: float) -> float | None:
    if config.duration is not None:
        return start + config.duration
    scheduled = config.schedule_end()
    return None if scheduled is None else start + scheduled


async def _measure(run: Run, start: float, on_tick: Callable[[Recorder, float], None]) -> Outcome:
    """The ``load`` phase, from ``start`` (waiting for it, ticking meanwhile so that a
    stop is heard), with a progress tick every PROGRESS_EVERY."""
    config = run.config
    rec = Recorder()
    rec.track(start, config.timeline_interval)
    end = _end_of(config, start)

    async def ticks() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            on_tick(rec, max(0.0, time.perf_counter() - start))

    ticker = asyncio.ensure_future(ticks())
    try:
        await run.wait_until(start)
        # The wall-clock time of ``start``, when the run's clock started (the first call
        # was due): the same in every process of a --procs run, --start-at when on time.
        started = time.time() - (time.perf_counter() - start)
        lag = None if config.start_at is None else started - config.start_at
        if run.interrupted:
            return Outcome(rec, started, 1e-9, True, start_lag=lag)
        await run.phase(start, config.total, end, rec, DRAIN)
    finally:
        ticker.cancel()
    rec.close_timeline()
    finished = run.stopped_at or time.perf_counter()
    if end is not None:
        finished = min(finished, end)
    return Outcome(rec, started, max(finished - start, 1e-9), run.interrupted, start_lag=lag)


async def _warmup(run: Run) -> None:
    if run.config.warmup > 0:
        now = time.perf_counter()
        await run.phase(now, None, now + run.config.warmup, Recorder(), DRAIN)


def _run_here(
    config: LoadConfig, progress: Progress | None, handle_sigint: bool, notice: Notice | None
) -> Outcome:
    async def main() -> Outcome:
        async with connected(config) as channels:
            run = Run(config, channels)
            if handle_sigint and threading.current_thread() is threading.main_thread():
                asyncio.get_running_loop().add_signal_handler(signal.SIGINT, run.stop)
            await _warmup(run)
            if run.interrupted:
                return Outcome(Recorder(), time.time(), 1e-9, True)

            def tick(rec: Recorder, elapsed: float) -> None:
                if progress is not None:
                    progress(rec.count, rec.errors, elapsed)

            outcome = await _measure(run, _start(config, time.perf_counter(), notice), tick)
            await run.close()
            return outcome

    start_loop(config)
    return asyncio.run(main())


# -- in worker processes ----------------------------------------------------------------------
def _worker_main(config: LoadConfig, index: int, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    start_loop(config)
    try:
        asyncio.run(_worker(config, index, conn))
    except ConnectError as exc:
        conn.send(("connect_error", str(exc)))
    except (ConfigError, TargetError) as exc:
        conn.send(("bad_args", str(exc)))
    except BaseException:
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()


async def _worker(config: LoadConfig, index: int, conn: Connection) -> None:
    async with connected(config, first=index * config.connections) as channels:
        run = Run(config, channels)
        await _warmup(run)
        conn.send(("ready",))
        message = await asyncio.to_thread(conn.recv)
        if message[0] != "go":
            conn.send(("done", Recorder().to_dict(), time.time(), 0.0, True, None))
            return
        start = float(message[1])

        def tick(rec: Recorder, elapsed: float) -> None:
            while conn.poll():
                if conn.recv()[0] == "stop":
                    run.stop()
            conn.send(("progress", rec.count, rec.errors))

        out = await _measure(run, start, tick)
        await run.close()
        done = (out.recorder.to_dict(), out.started, out.duration, out.interrupted, out.start_lag)
        conn.send(("done", *done))


@contextlib.contextmanager
def _sigint_flag(enabled: bool) -> Iterator[list[bool]]:
    """While inside, Ctrl-C only sets a flag (when enabled and in the main thread)."""
    flag: list[bool] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.append(True))
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_procs(
    config: LoadConfig,
    procs: int,
    progress: Progress | None,
    handle_sigint: bool,
    notice: Notice | None,
) -> Outcome:
    ctx = multiprocessing.get_context("spawn")
    conns: list[Connection] = []
    workers: list[Any] = []
    with _sigint_flag(handle_sigint) as interrupted:
        try:
            for index in range(procs):
                mine, theirs = ctx.Pipe()
                worker = ctx.Process(
                    target=_worker_main,
                    args=(config.share(index, procs), index, theirs),
                    name=f"greeter-load-{index}",
                    daemon=True,
                )
                worker.start()
                theirs.close()
                conns.append(mine)
                workers.append(worker)
            # Phase: connect and warm up everywhere, then start together.
            limit = time.perf_counter() + config.connect_timeout + config.warmup + SPAWN_GRACE
            for conn in conns:
                message = _receive(conn, limit, interrupted)
                if message is None:  # Ctrl-C before the start
                    return _stop_all(conns, workers, Outcome(Recorder(), time.time(), 1e-9, True))
                _raise_for(message)
            start = _start(config, time.perf_counter() + START_DELAY, notice)
            for conn in conns:
                conn.send(("go", start))
            return _collect(conns, start, progress, interrupted)
        finally:
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.send(("stop",))
            for worker in workers:
                worker.join(timeout=5)
                if worker.is_alive():
                    worker.terminate()
                    worker.join(timeout=5)
            for conn in conns:
                conn.close()


def _stop_all(conns: list[Connection], workers: list[Any], outcome: Outcome) -> Outcome:
    for conn in conns:
        with contextlib.suppress(OSError):
            conn.send(("stop",))
    return outcome


def _receive(conn: Connection, limit: float, interrupted: list[bool]) -> tuple[Any, ...] | None:
    """The next message from a worker (None on Ctrl-C); a dead worker is a crash."""
    while time.perf_counter() < limit:
        if interrupted:
            return None
        try:
            if conn.poll(0.1):
                return tuple(conn.recv())
        except (EOFError, OSError):
            return ("crash", "a load worker process exited unexpectedly")
    return ("crash", "a load worker process did not start in time")


def _raise_for(message: tuple[Any, ...]) -> None:
    kind = message[0]
    if kind == "ready":
        return
    if kind == "connect_error":
        raise ConnectError(message[1])
    if kind == "bad_args":
        raise ConfigError(message[1])
    raise RuntimeError(f"load worker failed: {message[1] if len(message) > 1 else kind}")


def _collect(
    conns: list[Connection], start: float, progress: Progress | None, interrupted: list[bool]
) -> Outcome:
    parts: list[Outcome] = []
    counts = {i: (0, 0) for i in range(len(conns))}
    stopped = False
    pending = dict(enumerate(conns))
    last_tick = time.perf_counter()
    while pending:
        if interrupted and not stopped:
            stopped = True
            for conn in pending.values():
                with contextlib.suppress(OSError):
                    conn.send(("stop",))
        for index, conn in list(pending.items()):
            try:
                if not conn.poll(0.02):
                    continue
                message = conn.recv()
            except (EOFError, OSError):
                raise RuntimeError("a load worker process exited unexpectedly") from None
            if message[0] == "progress":
                counts[index] = (message[1], message[2])
            elif message[0] == "done":
                _, recorder, started, duration, stop, lag = message
                rec = Recorder.from_dict(recorder)
                parts.append(Outcome(rec, started, max(duration, 1e-9), stop, start_lag=lag))
                del pending[index]
            else:
                _raise_for(message)
        now = time.perf_counter()
        if progress is not None and now - last_tick >= PROGRESS_EVERY:
            last_tick = now
            progress(
                sum(c for c, _ in counts.values()), sum(e for _, e in counts.values()), now - start
            )
    merged = combine(parts)  # the processes of one run: still one run
    return replace(merged, interrupted=merged.interrupted or stopped, merged_from=1)
