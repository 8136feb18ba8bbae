"""The gateway's own count of a scenario's calls, from its access log.

Both gateways write one line per call with the pods it tried (``upstream=``: nginx lists every
backend it tried, comma-separated; Envoy names the last and counts ``attempts=``) and the
call's ``grpc_status``. Counting the probe's method there, from the byte the log had reached
when the probe started, gives the gateway's side of "how many calls, which pod served them",
to set beside the probe's own records (:class:`greeter.rehearse.findings.GatewayCounts`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

_UPSTREAM = re.compile(r"upstream=(.*?) (?:upstream_status|cluster)=")
_STATUS = re.compile(r"grpc_status=(\S+)")
_ATTEMPTS = re.compile(r"attempts=(\d+)")
_FLAGS = re.compile(r"flags=(\S+)")
# Envoy's response flags for a call it answered itself without a pod's answer: a circuit
# breaker's overflow (UO: more calls in flight than ``max_requests``), no healthy pod (UH).
GATEWAY_ANSWERED = ("UO", "UH")


@dataclass(frozen=True)
class LoggedCall:
    """One access-log line: the pods tried (last: the one that answered) and the status."""

    upstreams: tuple[str, ...]
    grpc_status: str
    attempts: int
    flags: str = "-"  # Envoy's response flags (nginx logs none)

    @property
    def gateway_answered(self) -> bool:
        """Envoy answered it itself (:data:`GATEWAY_ANSWERED`): no pod's answer."""
        return any(flag in GATEWAY_ANSWERED for flag in self.flags.split(","))

    @property
    def retried(self) -> bool:
        return self.attempts > 1 or len(self.upstreams) > 1

    @property
    def ok(self) -> bool:
        return self.grpc_status in ("0", "OK")  # nginx logs the number, Envoy the name


def parse(line: str) -> LoggedCall | None:
    found = _UPSTREAM.search(line)
    if found is None:
        return None
    upstreams = tuple(u.strip() for u in found.group(1).split(",") if u.strip() not in ("", "-"))
    status = _STATUS.search(line)
    attempts = _ATTEMPTS.search(line)
    flags = _FLAGS.search(line)
    return LoggedCall(
        upstreams,
        status.group(1) if status else "-",
        int(attempts.group(1)) if attempts else len(upstreams),
        flags.group(1) if flags else "-",
    )


def calls(log: Path, since: int, path: str) -> list[LoggedCall]:
    """The calls to ``path`` logged after byte ``since``."""
    if not log.exists():
        return []
    with log.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    found = (parse(line) for line in text.splitlines() if f" {path} " in line)
    return [c for c in found if c is not None]


def served_by_pod(logged: list[LoggedCall], pods: Mapping[str, str]) -> dict[str, int]:
    """Successful calls by the pod that answered them (``pods``: address to pod name)."""
    return dict(Counter(pods.get(c.upstreams[-1], c.upstreams[-1]) for c in logged if c.ok))


# Envoy's %GRPC_STATUS% is CamelCase ("ResourceExhausted"); it spells CANCELLED with one L.
_ENVOY_SPELLING = {"CANCELED": "CANCELLED"}


def code_name(status: str) -> str:
    """A logged grpc-status as gRPC names it (``RESOURCE_EXHAUSTED``): nginx logs the number,
    Envoy the CamelCase name; "-" (none, e.g. a reset stream) stays "-"."""
    if status.isdigit():
        number = int(status)
        found = next((c for c in grpc.StatusCode if c.value[0] == number), None)
        return found.name if found is not None else status
    if status in ("-", "OK"):
        return status
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", status).upper()
    return _ENVOY_SPELLING.get(snake, snake)


def codes_by_pod(logged: list[LoggedCall], pods: Mapping[str, str]) -> dict[str, Counter[str]]:
    """Each pod's calls by the code it answered (the last pod tried answered the call; the
    calls the gateway answered itself are no pod's)."""
    out: dict[str, Counter[str]] = {}
    for c in logged:
        if c.upstreams and not c.gateway_answered:
            pod = pods.get(c.upstreams[-1], c.upstreams[-1])
            out.setdefault(pod, Counter())[code_name(c.grpc_status)] += 1
    return out
