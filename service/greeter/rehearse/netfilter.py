"""What the rehearsal changes on the machine, and how it undoes it: pods on loopback addresses
of their own, and packet-filter rules that cut or refuse them.

- **Addresses**: every pod listens on ``127.B.C.P`` (B a block per run, C the cluster, P the
  pod), on the real pods' ports. All of 127.0.0.0/8 reaches ``lo`` with no set-up, so nothing
  is added to the machine for them. A run claims its block by binding ``127.B.0.1`` on the gRPC
  port and holding that socket for its life: a second run at the same time cannot bind it and
  takes another block, and the kernel frees it however the run ends (SIGKILL included).
- **Rules** (``iptables``, root only): ``DROP`` both ways between the machine and a cluster's
  addresses (a partition: no reset, connections stay "open"), and ``REJECT`` of new connections
  to one pod (its endpoint removed while it drains). Each rule carries a comment
  ``greeter-rehearse pid=PID``; the run deletes its own on every exit (``clear``, also at
  interpreter exit), and the next run deletes those whose PID is gone (``sweep``): what a
  SIGKILLed run left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

# The real pods' ports (chart/values.yaml: server.port, web.port, metrics.port).
GRPC_PORT = 50051
WEB_PORT = 8080
METRICS_PORT = 9090
TAG = "greeter-rehearse"
CHAIN = "INPUT"
_PID = re.compile(rf'--comment "?{TAG} pid=(\d+)')
# Blocks 127.B.x.x a run may claim (127.0.x.x is left to the machine's own services).
BLOCKS = range(64, 250)


def problem() -> str:
    """Why the rehearsal cannot filter packets here ("" when it can)."""
    if os.geteuid() != 0:
        return "not root: partitions need iptables (run as root)"
    if not shutil.which("iptables"):
        return "no iptables: install it (apt-get install -y iptables)"
    check = _iptables("-S", CHAIN, check=False)
    if check.returncode != 0:
        return f"iptables does not work here: {check.stderr.strip() or check.returncode}"
    return ""


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock another rehearsal may hold for a moment.
    return subprocess.run(
        ["iptables", "-w", "5", *args], capture_output=True, text=True, check=check, timeout=30
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tagged_rules(pid: int | None = None) -> list[str]:
    """The rehearsals' rules (``iptables -S`` lines), all of them or one PID's."""
    out = _iptables("-S", CHAIN, check=False).stdout
    rules = []
    for line in out.splitlines():
        found = _PID.search(line)
        if found and (pid is None or int(found.group(1)) == pid):
            rules.append(line)
    return rules


def _delete(rule: str) -> None:
    words = shlex.split(rule)
    if words[:1] == ["-A"]:
        _iptables("-D", *words[1:], check=False)


def sweep() -> int:
    """Delete the rules of rehearsals that are no longer running; how many."""
    gone = 0
    for rule in tagged_rules():
        found = _PID.search(rule)
        if found and not pid_alive(int(found.group(1))):
            _delete(rule)
            gone += 1
    return gone


@dataclass
class Firewall:
    """This run's rules: added with its PID in the comment, deleted on every way out."""

    pid: int = field(default_factory=os.getpid)
    rules: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        atexit.register(self.clear)  # an error path that skips the rehearsal's stop

    def _add(self, spec: list[str], what: str) -> list[str]:
        rule = [*spec, "-m", "comment", "--comment", f"{TAG} pid={self.pid} {what}"]
        _iptables("-I", CHAIN, *rule)
        self.rules.append(rule)
        return rule

    def _remove(self, rule: list[str]) -> None:
        if rule in self.rules:
            self.rules.remove(rule)
            _iptables("-D", CHAIN, *rule, check=False)

    def cut(self, hosts: Sequence[str]) -> list[list[str]]:
        """Drop every packet to and from ``hosts`` (both directions, no reset)."""
        added = []
        for host in hosts:
            for direction in ("-d", "-s"):
                spec = ["-i", "lo", direction, f"{host}/32", "-j", "DROP"]
                added.append(self._add(spec, f"cut {host}"))
        return added

    def refuse_new(self, host: str, port: int) -> list[str]:
        """Refuse new TCP connections to ``host:port`` (reset), keep the open ones."""
        spec = ["-i", "lo", "-d", f"{host}/32", "-p", "tcp", "--dport", str(port), "--syn"]
        return self._add([*spec, "-j", "REJECT", "--reject-with", "tcp-reset"], f"refuse {host}")

    def remove(self, rules: Sequence[list[str]]) -> None:
        for rule in list(rules):
            self._remove(rule)

    def clear(self) -> None:
        """Delete every rule of this run (idempotent)."""
        for rule in list(self.rules):
            self._remove(rule)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            for line in tagged_rules(self.pid):  # also any the list lost track of
                _delete(line)


def pod_host(block: int, cluster: int, pod: int) -> str:
    """The address of pod ``pod`` of cluster ``cluster`` (both from 0) in ``block``."""
    return f"127.{block}.{cluster + 1}.{pod + 1}"


def canary_host(block: int) -> str:
    return f"127.{block}.250.1"


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class AddressBlock:
    """A run's ``127.B.0.0/16``, held by a bound socket on ``127.B.0.1``."""

    block: int
    claim: socket.socket

    def release(self) -> None:
        self.claim.close()


def claim_block(
    hosts_per_block: Sequence[tuple[int, int]], candidates: Iterator[int] | None = None
) -> AddressBlock:
    """Claim a free block: its claim address bound, and every pod address (``(cluster,
    pod)`` pairs) free on the gRPC port (no pod a killed run left behind holds one)."""
    order = list(BLOCKS)
    random.shuffle(order)
    for block in candidates or iter(order):
        claim = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            claim.bind((f"127.{block}.0.1", GRPC_PORT))
        except OSError:
            claim.close()
            continue
        hosts = [pod_host(block, c, p) for c, p in hosts_per_block] + [canary_host(block)]
        if all(_bindable(h, GRPC_PORT) for h in hosts):
            return AddressBlock(block, claim)
        claim.close()
    raise RuntimeError("no free loopback address block 127.64-249.x.x for the pods")
