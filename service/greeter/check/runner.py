"""Connect, find out whether the target serves grpc.testing.TestService, run the chosen cases
concurrently (they are independent; the long ones set the run's length, about --max-wait)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from greeter.check.cases import Case, Result, registry, run_case
from greeter.check.context import CLIENT_OPTIONS, Context
from greeter.client import (
    DEFAULT_CONNECT_TIMEOUT,
    ConnectFailed,
    Target,
    connect_failure,
    open_connected_channel,
)
from greeter.durations import parse_duration

DEFAULT_CONNECT_TIMEOUT_S = parse_duration(DEFAULT_CONNECT_TIMEOUT)


@dataclass
class CheckRun:
    target: Target
    protocol: str
    max_wait: float
    interop: bool
    interop_status: str
    results: list[Result]
    elapsed_s: float


def choose(only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[Case]:
    """The cases to run, in registry order (``only`` empty: all); unknown names: ValueError."""
    cases = registry()
    unknown = [n for n in (*only, *skip) if n not in cases]
    if unknown:
        raise ValueError(f"no such case: {', '.join(unknown)}; the cases are: {', '.join(cases)}")
    return [c for name, c in cases.items() if (not only or name in only) and name not in skip]


async def connect(ctx: Context, connect_timeout: float, text: bool = False) -> None:
    """Open the channel (or the gRPC-Web connection, ``text``: base64) and wait until it
    is ready; :class:`ConnectFailed` with the client commands' one line when it cannot."""
    if not ctx.web:
        ctx.channel = await open_connected_channel(ctx.target, connect_timeout, CLIENT_OPTIONS)
        return
    from greeter.web.client import WebChannel

    ctx.web_channel = WebChannel(ctx.target, text=text)
    try:
        await ctx.web_channel.connect(connect_timeout)
    except OSError as exc:  # refused, TLS, timed out
        why = str(exc) or type(exc).__name__
        raise ConnectFailed(await asyncio.to_thread(connect_failure, ctx.target, why)) from None


async def close(ctx: Context) -> None:
    if ctx.channel is not None:
        await ctx.channel.close()
    if ctx.web_channel is not None:
        await ctx.web_channel.close()


async def run_check(
    target: Target,
    cases: Sequence[Case],
    max_wait: float,
    protocol: str = "grpc",
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> CheckRun:
    """Run ``cases`` against ``target``; raises ConnectFailed when it cannot be reached."""
    from greeter.check.interop_cases import serves_test_service

    started = time.perf_counter()
    ctx = Context(target, max_wait, web=protocol != "grpc")
    text = protocol == "grpc-web-text"
    try:
        await connect(ctx, connect_timeout, text)
        ctx.interop, status = await serves_test_service(ctx)
        if not ctx.interop:
            ctx.interop_missing = f"{ctx.interop_missing} (EmptyCall: {status})"
        results = await asyncio.gather(*(run_case(c, ctx) for c in cases))
    finally:
        await close(ctx)
    return CheckRun(
        target, protocol, max_wait, ctx.interop, status, list(results),
        time.perf_counter() - started,
    )  # fmt: skip
