"""Fault injection for gateway testing: delays and error statuses, by
percentage or asked for per call through request metadata."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable

import grpc

from greeter.pipeline import Hooks, Metadata, Method
from greeter.settings import status_code

DELAY_HEADER = "x-greeter-fault-delay-ms"
STATUS_HEADER = "x-greeter-fault-status"
MAX_DELAY_MS = 300_000


def parse_delay_ms(text: str) -> float:
    """Seconds of delay asked for by ``x-greeter-fault-delay-ms``; ValueError if bad."""
    value = float(text)
    if not 0 <= value <= MAX_DELAY_MS:
        raise ValueError(f"{DELAY_HEADER} must be between 0 and {MAX_DELAY_MS}")
    return value / 1000


async def sleep_at_least(seconds: float) -> None:
    """Sleep for no less than ``seconds`` of wall time. uvloop's timers run from the
    loop's cached clock and can fire early; an injected delay is a
    promise a test asserts on, so it is topped up until it has really passed."""
    clock = time.perf_counter
    end = clock() + seconds
    while (left := end - clock()) > 0:  # noqa: ASYNC110 (a deadline, not an event)
        await asyncio.sleep(left)


def parse_status(text: str) -> grpc.StatusCode:
    """The status asked for by ``x-greeter-fault-status``; ValueError if bad."""
    return status_code(text)


class Faults:
    def __init__(
        self,
        services: frozenset[str],
        delay: float,
        delay_percent: float,
        status: grpc.StatusCode,
        status_percent: float,
    ) -> None:
        self._services = services
        self._delay = delay
        self._delay_fraction = delay_percent / 100
        self._status = status
        self._status_fraction = status_percent / 100

    def bind(self, method: Method) -> Hooks | None:
        if method.service not in self._services:
            return None
        draw = random.random

        async def before(
            context: grpc.aio.ServicerContext, metadata: Metadata
        ) -> Awaitable[None] | None:
            delay = self._delay if draw() < self._delay_fraction else 0.0
            status = self._status if draw() < self._status_fraction else None
            for key, value in metadata:
                try:
                    if key == DELAY_HEADER:
                        delay = parse_delay_ms(str(value))
                    elif key == STATUS_HEADER:
                        status = parse_status(str(value))
                except ValueError as exc:
                    return context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{key}: {exc}")
            if delay > 0:
                await sleep_at_least(delay)
            if status is not None and status is not grpc.StatusCode.OK:
                # Returned, not awaited: the pipeline stamps the server-timing (the delay
                # included), then sends it.
                return context.abort(status, f"injected fault: {status.name}")
            return None

        return Hooks(before=before, reads_metadata=True)
