"""Processes held to a share of a core, as ``resources.limits.cpu`` holds a pod: a CPU cgroup
(cgroup v1 ``cpu`` controller, ``/sys/fs/cgroup/cpu/<name>``) with ``cpu.cfs_quota_us`` =
cores x ``cpu.cfs_period_us``, the process's PID written to its ``cgroup.procs`` (root only).

Each group is named ``<prefix>-pid<PID>-<what>``, PID the process that made it; it is removed
on every way out (:meth:`CpuQuota.remove`, also at interpreter exit), and :func:`sweep` removes
those whose PID is gone: what a SIGKILLed run left behind (as
:mod:`greeter.rehearse.netfilter` does with its packet-filter rules).

Used by ``greeter rehearse --pod-cpu`` and by ``python -m bench.overload``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from greeter.rehearse.netfilter import pid_alive

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000
# The kernel's smallest quota is 1 ms a period: 0.01 core at the 100 ms period.
MIN_CORES = 0.01
MAX_CORES = 64.0
_NAME = re.compile(r"^(?P<prefix>.+)-pid(?P<pid>\d+)-")


def problem(root: Path = CPU_ROOT) -> str:
    """Why no CPU quota can be made here ("" when it can)."""
    if os.geteuid() != 0:
        return "not root: a CPU quota needs a cgroup (run as root)"
    if not (root / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {root}"
    if not os.access(root, os.W_OK):
        return f"{root} is not writable"
    return ""


def check_cores(cores: float, what: str = "cores") -> float:
    """``cores`` if the kernel can hold a process to it, else ValueError naming ``what``."""
    if not MIN_CORES <= cores <= MAX_CORES:
        raise ValueError(f"{what}: {cores:g} is not between {MIN_CORES:g} and {MAX_CORES:g} cores")
    return cores


def _move_out(group: Path, root: Path) -> None:
    """Every process still in ``group`` back to the root group (a group with one cannot go)."""
    with contextlib.suppress(OSError):
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)


def _rmdir(group: Path, root: Path) -> bool:
    for _ in range(20):  # bounded: a process being killed leaves its group a moment later
        _move_out(group, root)
        try:
            group.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class CpuQuota:
    """One group holding its processes to ``cores`` of a core (made by :meth:`create`)."""

    name: str
    cores: float
    root: Path = CPU_ROOT
    created: bool = field(default=False, init=False)

    @property
    def path(self) -> Path:
        return self.root / self.name

    def create(self) -> CpuQuota:
        check_cores(self.cores)
        self.path.mkdir()
        self.created = True
        atexit.register(self.remove)  # an error path that skips the owner's stop
        (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (self.path / "cpu.cfs_quota_us").write_text(str(round(PERIOD_US * self.cores)))
        return self

    def add(self, pid: int) -> None:
        """Hold process ``pid`` (every thread of it, and the children it starts later)."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        """Seconds its processes were held back by the quota so far (``cpu.stat``)."""
        with contextlib.suppress(OSError):
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "throttled_time":
                    return int(value) / 1e9
        return 0.0

    def remove(self) -> None:
        """Gone, whatever is still in it (idempotent)."""
        if self.created and _rmdir(self.path, self.root):
            self.created = False


def group_name(prefix: str, what: str, pid: int | None = None) -> str:
    """``<prefix>-pid<PID>-<what>``: the PID (this process's by default) lets :func:`sweep`
    tell a live run's group from a dead one's."""
    return f"{prefix}-pid{os.getpid() if pid is None else pid}-{what}"


def groups(prefix: str, root: Path = CPU_ROOT) -> list[Path]:
    """The groups named by :func:`group_name` with ``prefix``."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and (m := _NAME.match(p.name)) and m.group("prefix") == prefix
    )


def sweep(prefix: str, root: Path = CPU_ROOT) -> int:
    """Remove the ``prefix`` groups whose PID is gone; how many."""
    gone = 0
    for group in groups(prefix, root):
        found = _NAME.match(group.name)
        if found and not pid_alive(int(found.group("pid"))) and _rmdir(group, root):
            gone += 1
    return gone


@contextlib.contextmanager
def held(prefix: str, what: str, cores: float) -> Iterator[CpuQuota | None]:
    """A quota of ``cores`` for the block, removed after it; None when none can be made here."""
    quota = CpuQuota(group_name(prefix, what), cores)
    if problem():
        yield None
        return
    sweep(prefix)
    try:
        quota.create()
    except OSError:
        quota.remove()
        yield None
        return
    try:
        yield quota
    finally:
        quota.remove()
