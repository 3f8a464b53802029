"""CPU time and memory of whole process trees, for the fan-out benchmarks.

CPU is utime + stime as the kernel accounts it (psutil reads `/proc/<pid>/stat`), summed over a
process and every descendant alive at the moment of the sample: a gateway with several workers
counts as one. Descendants that exit between two samples take their time with them; the servers
measured here keep their processes for the whole run, so nothing is lost.

The window also reads the whole machine's busy time (`/proc/stat`, tick-sampled, so coarse):
what it shows beyond the named trees is load nobody in the benchmark put there, a sign that the
figures of that window are disturbed.

RSS is summed the same way. Shared pages (the interpreter mapped in several workers) are counted
once per process, which overstates a multi-process tree; the per-viewer figure uses a difference
of two samples of the same tree, where that cancels out.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psutil

__all__ = ["CpuWindow", "Usage", "settle", "tree_cpu_s", "tree_rss", "tree_size"]


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _machine_busy_s() -> float:
    t = psutil.cpu_times()
    # Not steal (the hypervisor's), nor guest (already inside user).
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def tree_size(pid: int) -> int:
    """How many processes `pid`'s tree has, itself included."""
    return len(_tree(pid))


def tree_cpu_s(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds of `pid` and (by default) every live descendant."""
    total = 0.0
    for proc in _tree(pid) if children else [psutil.Process(pid)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and every live descendant."""
    total = 0
    for proc in _tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@dataclass(frozen=True)
class Usage:
    """CPU seconds per named process tree over one window, the whole machine's busy CPU seconds,
    and the window's wall time."""

    cpu_s: dict[str, float]
    machine_s: float
    wall_s: float

    def percent(self, name: str) -> float:
        """Share of one core, in %, that `name` used over the window."""
        return self._pct(self.cpu_s[name])

    def _pct(self, seconds: float) -> float:
        return 100 * seconds / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def machine_pct(self) -> float:
        """The whole machine's busy time in % of one core (200 = two cores fully busy)."""
        return self._pct(self.machine_s)

    @property
    def other_pct(self) -> float:
        """Busy time no named tree accounts for, in % of one core (never below 0)."""
        return max(0.0, self._pct(self.machine_s - sum(self.cpu_s.values())))


class CpuWindow:
    """Samples named process trees at `start()` and `stop()`.

    `trees` maps a name to pids whose whole trees are counted together; `own` names pids counted
    alone (the benchmark's own process, whose children are the very servers being measured).
    """

    def __init__(self, trees: dict[str, list[int]], own: dict[str, int] | None = None) -> None:
        self._trees = trees
        self._own = own or {}
        self._t0 = 0.0
        self._before: dict[str, float] = {}
        self._machine = 0.0

    def _sample(self) -> dict[str, float]:
        out = {name: sum(map(tree_cpu_s, pids)) for name, pids in self._trees.items()}
        out.update({name: tree_cpu_s(pid, children=False) for name, pid in self._own.items()})
        return out

    def start(self) -> None:
        self._before = self._sample()
        self._machine = _machine_busy_s()
        self._t0 = time.monotonic()

    def stop(self) -> Usage:
        wall = time.monotonic() - self._t0
        machine = _machine_busy_s() - self._machine
        after = self._sample()
        return Usage({k: after[k] - self._before[k] for k in after}, machine, wall)


async def settle(pid: int, *, quiet_pct: float = 5.0, timeout: float = 30.0) -> float:
    """Wait until `pid`'s tree uses under `quiet_pct` of a core over half a second (say, the work
    a crowd's connections caused is done), at most `timeout`; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        window = CpuWindow({"tree": [pid]})
        window.start()
        await asyncio.sleep(0.5)
        if window.stop().percent("tree") < quiet_pct:
            break
    return time.monotonic() - t0
