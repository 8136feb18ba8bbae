"""What the pod saw of a call: the interop service remembers calls that carry a check id and
answers a lookup (an EmptyCall) with what the pod that served the lookup knows. Through a
gateway that spreads calls over pods, the lookup is repeated (bounded) until it reaches the
pod that served the call; if it never does, the case says so instead of guessing.

Two cases looking up at once through a round-robin gateway would take turns on its rotation
and each see only every other pod, for ever: the lookups of a run take turns (a lock), and a
random extra call now and then shifts where in the rotation the next lookup lands."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass

from greeter._proto.grpc.testing import empty_pb2
from greeter.check.cases import Skipped
from greeter.check.context import Context
from greeter.interop.checklog import CHECK_ID, CHECK_LOOKUP, CHECK_SEEN, ENDED, RUNNING, UNKNOWN
from greeter.interop.checklog import Seen as PodSeen

__all__ = ["ENDED", "Seen", "find", "new_id", "tag"]

EMPTY_CALL = "/grpc.testing.TestService/EmptyCall"
LOOKUPS = 60  # at most this many lookups, spread over LOOKUP_BUDGET_S
LOOKUP_BUDGET_S = 10.0


@dataclass
class Seen:
    """What one pod said: ``state`` (unknown, running, ended), the end's status ``code``,
    seconds from the call's start to its end (or to the lookup), and which pod it was."""

    state: str
    code: str = ""
    duration_s: float | None = None
    pod: str = ""


def new_id() -> str:
    return uuid.uuid4().hex


def tag(check_id: str) -> list[tuple[str, str]]:
    """The request metadata that makes the serving pod remember a call."""
    return [(CHECK_ID, check_id)]


async def lookup_once(ctx: Context, check_id: str) -> Seen:
    reply = await ctx.unary(
        EMPTY_CALL, empty_pb2.Empty(), empty_pb2.Empty, metadata=[(CHECK_LOOKUP, check_id)]
    )
    raw = reply.get(CHECK_SEEN)
    if not reply.ok or raw is None:
        return Seen(UNKNOWN, pod=reply.pod)
    try:
        seen = PodSeen.parse(raw if isinstance(raw, str) else raw.decode())
    except ValueError:
        return Seen(UNKNOWN, pod=reply.pod)
    after = None if seen.after_ms is None else seen.after_ms / 1000
    return Seen(seen.state, seen.code, after, reply.pod)


async def find(ctx: Context, check_id: str, *, ended: bool) -> Seen:
    """Look up until a pod knows the call (and, with ``ended``, knows it ended); Skipped
    when no lookup reached it within the bounds."""
    async with ctx.lookup_lock:
        return await _find(ctx, check_id, ended)


async def _find(ctx: Context, check_id: str, ended: bool) -> Seen:
    deadline = time.monotonic() + LOOKUP_BUDGET_S
    pods: set[str] = set()
    running: Seen | None = None
    tries = 0
    while tries < LOOKUPS:
        tries += 1
        seen = await lookup_once(ctx, check_id)
        pods.add(seen.pod or "?")
        if seen.state == ENDED or (seen.state == RUNNING and not ended):
            return seen
        if seen.state == RUNNING:
            running = seen
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(LOOKUP_BUDGET_S / LOOKUPS)
        if random.random() < 0.5:  # a shift in the rotation
            await ctx.unary(EMPTY_CALL, empty_pb2.Empty(), empty_pb2.Empty)
    if running is not None:
        return running
    raise Skipped(
        f"could not reach the pod that served the call: {tries} lookups reached "
        f"{len(pods)} pod(s) ({', '.join(sorted(pods))}), none knew it"
    )
