"""The case registry: each case a small independent coroutine with a name, what it proves
and the gateway settings that break it (the table of docs/check.md comes from here).

A case returns a :class:`Verdict` or raises :class:`Failed` / :class:`Skipped`; anything
else it raises is a FAIL naming the exception, never a crash of the whole run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greeter.check.context import Context

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
STATUSES = (PASS, FAIL, SKIP)
# The columns of the table: the gateways users run in front of the chart.
GATEWAYS = ("ALB", "ingress-nginx", "Emissary", "Envoy Gateway", "Istio")
INTEROP, GATEWAY = "interop", "gateway"


@dataclass
class Verdict:
    status: str
    detail: str
    measured: dict[str, Any] = field(default_factory=dict)


class Failed(Exception):
    """The case failed: what was expected, what came back (the likely setting is the case's)."""

    def __init__(self, expected: str, got: str, **measured: Any) -> None:
        super().__init__(f"expected {expected}; got {got}")
        self.expected = expected
        self.got = got
        self.measured = measured


class Skipped(Exception):
    """The case cannot run against this target; the message says why."""


Run = Callable[["Context"], Awaitable[Verdict]]


@dataclass(frozen=True)
class Case:
    name: str
    group: str  # INTEROP (the standard interop cases) or GATEWAY (the known pitfalls)
    proves: str
    # The setting of each gateway in GATEWAYS that breaks it ("" none known), and the fix.
    breaks: dict[str, str]
    fix: str
    run: Run
    # Why gRPC-Web cannot carry the case ("": the same case runs over gRPC-Web, through
    # the Context's calls, which speak either protocol).
    web_skip: str = ""
    # Needs grpc.testing.TestService on the target (greeter serve --interop).
    needs_interop: bool = True
    # Its waits grow with --max-wait.
    long: bool = False

    def likely(self) -> str:
        """The gateway settings that usually break the case, for a FAIL line."""
        named = [f"{gw}: {setting}" for gw, setting in self.breaks.items() if setting]
        return "; ".join(named) if named else self.fix


CASES: dict[str, Case] = {}


def case(
    name: str,
    *,
    group: str,
    proves: str,
    fix: str,
    breaks: dict[str, str] | None = None,
    web_skip: str = "",
    needs_interop: bool = True,
    long: bool = False,
) -> Callable[[Run], Run]:
    """Register the decorated coroutine as the case ``name``."""
    unknown = set(breaks or {}) - set(GATEWAYS)
    if unknown:
        raise ValueError(f"case {name}: unknown gateways {sorted(unknown)}")

    def register(run: Run) -> Run:
        if name in CASES:
            raise ValueError(f"case {name} registered twice")
        CASES[name] = Case(
            name=name,
            group=group,
            proves=proves,
            breaks=dict(breaks or {}),
            fix=fix,
            run=run,
            web_skip=web_skip,
            needs_interop=needs_interop,
            long=long,
        )
        return run

    return register


def registry() -> dict[str, Case]:
    """Every case, interop cases first, in the order they are listed."""
    from greeter.check import gateway_cases, interop_cases  # noqa: F401  (they register)

    return dict(sorted(CASES.items(), key=lambda kv: kv[1].group != INTEROP))


@dataclass
class Result:
    name: str
    status: str
    detail: str
    elapsed_s: float
    group: str
    setting: str = ""  # FAIL: the likely gateway setting
    measured: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "elapsed_s": round(self.elapsed_s, 3),
            "group": self.group,
        }
        if self.setting:
            data["setting"] = self.setting
        if self.measured:
            data["measured"] = self.measured
        return data


async def run_case(item: Case, ctx: Context) -> Result:
    """One case, its exceptions turned into a verdict."""
    started = time.perf_counter()
    setting = ""
    measured: dict[str, Any] = {}
    try:
        if ctx.web and item.web_skip:
            raise Skipped(f"gRPC-Web cannot carry it: {item.web_skip}")
        if item.needs_interop and not ctx.interop:
            raise Skipped(ctx.interop_missing)
        verdict = await asyncio.wait_for(item.run(ctx), ctx.case_timeout(item))
        status, detail, measured = verdict.status, verdict.detail, verdict.measured
        if status == FAIL:
            setting = item.likely()
    except TimeoutError:
        status, detail = FAIL, f"no verdict within {ctx.case_timeout(item):g}s (the case hung)"
        setting = item.likely()
    except Skipped as exc:
        status, detail = SKIP, str(exc)
    except Failed as exc:
        status, detail, measured, setting = FAIL, str(exc), exc.measured, item.likely()
    except Exception as exc:  # a case's own error is its FAIL, never the run's crash
        status, detail, setting = FAIL, f"{type(exc).__name__}: {exc}", item.likely()
    if status == FAIL and setting:
        detail = f"{detail}; likely: {setting}"
    return Result(
        item.name, status, detail, time.perf_counter() - started, item.group, setting, measured
    )
