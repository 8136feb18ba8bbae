"""Connect, find out whether the target serves grpc.testing.TestService, run the chosen cases
concurrently (they are independent; the long ones set the run's length, about --max-wait)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from greeter.check.cases import Case, Result, registry, run_case
from greeter.check.context import CLIENT_OPTIONS, Context
from greeter.client import Target, open_channel, plaintext_hint

CONNECT_TIMEOUT_S = 5.0


class ConnectError(RuntimeError):
    """The target could not be reached (refused, TLS mismatch, timed out)."""


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


async def _why_not_ready(ctx: Context, reason: str) -> str:
    hint = await asyncio.to_thread(plaintext_hint, ctx.target)
    return f"cannot connect to {ctx.target.address}: {hint or reason}"


async def connect(ctx: Context, text: bool = False) -> None:
    """Open the channel (or the gRPC-Web connection, ``text``: base64) and wait until it
    is ready."""
    if ctx.web:
        from greeter.web.client import WebChannel

        ctx.web_channel = WebChannel(ctx.target, text=text)
        try:
            await ctx.web_channel.connect(CONNECT_TIMEOUT_S)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise ConnectError(await _why_not_ready(ctx, str(exc) or type(exc).__name__)) from None
        return
    try:
        ctx.channel = open_channel(ctx.target, CONNECT_TIMEOUT_S, CLIENT_OPTIONS)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise ConnectError(await _why_not_ready(ctx, str(exc))) from None
    try:
        await asyncio.wait_for(_ready_or_failed(ctx.channel), CONNECT_TIMEOUT_S)
    except (TimeoutError, ConnectionError) as exc:
        reason = str(exc) or f"not connected within {CONNECT_TIMEOUT_S:g}s"
        probe = ctx.channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            await probe(b"", timeout=CONNECT_TIMEOUT_S, wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            reason = f"{reason}; {exc.details()}"
        raise ConnectError(await _why_not_ready(ctx, reason)) from None


async def _ready_or_failed(channel: grpc.aio.Channel) -> None:
    """Return when the channel is ready; a first failure to connect (refused, TLS) ends the
    wait at once (ConnectionError), rather than after gRPC's reconnect backoff."""
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise ConnectionError("the connection failed")
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


async def close(ctx: Context) -> None:
    if ctx.channel is not None:
        await ctx.channel.close()
    if ctx.web_channel is not None:
        await ctx.web_channel.close()


async def run_check(
    target: Target, cases: Sequence[Case], max_wait: float, protocol: str = "grpc"
) -> CheckRun:
    """Run ``cases`` against ``target``; raises ConnectError when it cannot be reached."""
    from greeter.check.interop_cases import serves_test_service

    started = time.perf_counter()
    ctx = Context(target, max_wait, web=protocol != "grpc")
    text = protocol == "grpc-web-text"
    try:
        await connect(ctx, text)
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
