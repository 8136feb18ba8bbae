"""Keeps grpc's helper threads from preempting the event loop (``thread_policy``).

grpc.aio hands every completion (a call accepted, a message read, a batch
sent) from its poller thread to the event loop, and grpc's event-engine
threads do the socket I/O. When they share a core with the loop, Linux lets
each woken thread preempt the running one: measured here, the loop thread was
preempted about six times per unary call. A ``SCHED_BATCH`` thread keeps its
fair share of the CPU (same weight, same nice value) but never preempts on
wake-up, so the loop runs until it waits, and the completions that piled up
meanwhile are handled together. On an idle core a batch thread runs at once,
so this costs nothing when the server is not busy.

A new thread inherits the policy of the thread that starts it. The server's
start-up therefore runs inside :func:`helper_threads`: the starting thread
(the event loop's) switches to ``SCHED_BATCH``, every thread grpc and the
metrics endpoint start meanwhile is born batch, and the starting thread then
returns to its own policy. Threads that existed before are left alone, so an
embedding program's threads are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from greeter.settings import THREAD_POLICIES

logger = logging.getLogger("greeter.threads")

_NAMES = {
    getattr(os, name): name
    for name in ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE", "SCHED_FIFO", "SCHED_RR")
    if hasattr(os, name)
}


def supported() -> bool:
    return all(hasattr(os, name) for name in ("SCHED_BATCH", "SCHED_OTHER", "sched_setscheduler"))


@contextlib.contextmanager
def helper_threads(policy: str) -> Iterator[str]:
    """Threads started inside run with ``policy``; yields what was applied.

    Yields ``"batch"`` or ``"normal"`` as asked; ``"unchanged (...)"`` when the
    process was started under another policy (``chrt``), which is kept; or
    ``"normal (<why not batch>)"`` when batch cannot be had (not Linux, or the
    container forbids the call). Never raises for those: the server works the
    same, only with more context switches.
    """
    if policy not in THREAD_POLICIES:
        raise ValueError(f"thread policy {policy!r} is not one of {THREAD_POLICIES}")
    if policy == "normal":
        yield "normal"
        return
    if not supported():
        yield "normal (SCHED_BATCH is Linux-only)"
        return
    try:
        own = os.sched_getscheduler(0)
        if own == os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as exc:  # a sandbox that forbids the calls
        yield f"normal (SCHED_BATCH refused: {exc.strerror or exc})"
        return
    if own != os.SCHED_OTHER:
        # Started under chrt or a real-time policy: that was someone's choice; keep it.
        yield f"unchanged (the process runs under scheduling policy {_NAMES.get(own, own)})"
        return
    try:
        yield "batch"
    finally:
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError as exc:  # pragma: no cover - Linux always lets BATCH return to OTHER
            logger.warning("could not return the event loop thread to SCHED_OTHER: %s", exc)
