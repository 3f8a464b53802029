"""One SSE server under one viewer crowd: a sequence of loads, each with its CPU and latency.

The steps, identical for every server so the figures compare:

1. create `runs` runs; viewer `i` watches run `i % runs`; connect the crowd and publish a `log`
   marker to every run every 0.2 s (1 s above 2,000 viewers) until each viewer has received one
   (so every viewer is subscribed), then wait until the server is quiet (`cpu.settle`);
2. per load: sample CPU (server tree, Valkey, this process = the publisher, the crowd), publish
   (`paced.py`), poll the crowd's count until every delivery has arrived (or nothing arrived for
   2 s, or a deadline), and sample CPU again at that moment, before any viewer disconnects;
3. publish `workflow_completed` to every run, wait for the viewers to end, collect the report.

CPU per delivery is the server tree's CPU over the window divided by the `task_progress` events
the viewers actually counted in it; a server that falls behind is still charged for all the work
until it catches up, and one that drops events is charged per event really delivered.

Each window also records how much of the machine was busy outside the benchmark's processes.
The machine may be shared (a test suite, a package install): CPU per delivery barely notices,
latency does. `measure_hubs` measures a server whose windows were disturbed once more and keeps
the quieter attempt; the figures say how many attempts it took.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from tidings.bus import Bus
from tidings.redis import connect
from tidings.runs import RunStore

from .cpu import CpuWindow, settle
from .crowd import Crowd
from .harness import Servers, percentile
from .hubs import TIDINGS, Hub, running
from .paced import publish_burst, publish_marker, publish_paced, publish_terminal

__all__ = [
    "DISTURBED_PCT",
    "Load",
    "LoadFigures",
    "Measured",
    "bench_bus",
    "create_runs",
    "measure",
    "measure_hubs",
]

log = logging.getLogger(__name__)

# A window in which more than this (% of a core) was busy outside the benchmark's own processes
# (the machine is shared: someone's test suite, a package install) is disturbed: `measure_hubs`
# measures that server once more and keeps the quieter attempt.
DISTURBED_PCT = 25.0
_POOL = 32  # the publisher's connections


@dataclass(frozen=True)
class Load:
    """`rate` events/s per run for `seconds`, or with `rate == 0` a burst of `events` per run."""

    tag: str
    rate: float = 0.0
    seconds: float = 0.0
    events: int = 0


@dataclass
class LoadFigures:
    events_per_run: int
    expected: int
    deliveries: int
    complete: bool
    wall_s: float
    drain_s: float  # from the last publish to the last delivery counted
    deliveries_per_s: float
    server_cpu_s: float
    server_cpu_pct: float
    cpu_us_per_delivery: float | None
    valkey_cpu_s: float
    publisher_cpu_s: float
    crowd_cpu_pct: float
    machine_cpu_pct: float  # the whole machine, % of one core
    other_cpu_pct: float  # of which no measured process: background load disturbing the window
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_samples: int = 0


@dataclass
class Measured:
    """Every load's figures for one server, and what the crowd reported at the end."""

    loads: dict[str, LoadFigures]
    crowd: dict[str, Any]
    ready_s: float
    attempts: int = 1

    @property
    def disturbance(self) -> float:
        """The worst window's CPU busy outside the benchmark, % of a core."""
        return max((f.other_cpu_pct for f in self.loads.values()), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            **{tag: asdict(f) for tag, f in self.loads.items()},
            "crowd": self.crowd,
            "ready_s": round(self.ready_s, 2),
            "attempts": self.attempts,
        }


@asynccontextmanager
async def bench_bus(srv: Servers) -> AsyncIterator[Bus]:
    """The publisher's bus on the benchmark's Valkey, closed on exit."""
    redis = connect(srv.redis_url, max_connections=_POOL)
    try:
        yield Bus(redis, srv.keys)
    finally:
        await redis.aclose()


async def create_runs(bus: Bus, srv: Servers, n: int) -> list[str]:
    store = RunStore(bus.redis, srv.keys)
    runs = []
    # A batch at a time, each create holding a connection: stay within the pool (`bench_bus`).
    for start in range(0, n, _POOL // 2):
        made = await asyncio.gather(
            *(store.create("bench", None) for _ in range(start, min(n, start + _POOL // 2)))
        )
        runs += [r.run_id for r in made]
    return runs


async def _one_load(
    bus: Bus, crowd: Crowd, cpu: CpuWindow, run_ids: list[str], per_run: int, load: Load
) -> LoadFigures:
    before = (await crowd.count()).counted
    loop = asyncio.get_running_loop()
    cpu.start()
    t0 = loop.time()
    if load.rate:
        events = await publish_paced(bus, run_ids, load.rate, load.seconds, load.tag)
    else:
        events = await publish_burst(bus, run_ids, load.events, load.tag)
    published = loop.time()
    expected = events * len(run_ids) * per_run
    counted = await crowd.wait_counted(before + expected, timeout=max(30.0, 3 * load.seconds))
    usage = cpu.stop()
    wall = loop.time() - t0
    deliveries = counted - before
    server = usage.cpu_s["server"]
    return LoadFigures(
        events_per_run=events,
        expected=expected,
        deliveries=deliveries,
        complete=deliveries == expected,
        wall_s=round(wall, 3),
        drain_s=round(loop.time() - published, 3),
        deliveries_per_s=round(deliveries / wall, 1),
        server_cpu_s=round(server, 3),
        server_cpu_pct=round(usage.percent("server"), 1),
        cpu_us_per_delivery=round(server * 1e6 / deliveries, 3) if deliveries else None,
        valkey_cpu_s=round(usage.cpu_s["valkey"], 3),
        publisher_cpu_s=round(usage.cpu_s["publisher"], 3),
        crowd_cpu_pct=round(usage.percent("crowd"), 1),
        machine_cpu_pct=round(usage.machine_pct, 1),
        other_cpu_pct=round(usage.other_pct, 1),
    )


async def measure(
    srv: Servers,
    bus: Bus,
    hub: Hub,
    loads: list[Load],
    *,
    runs: int = 1,
    viewers_per_run: int,
    timed: int = 50,
) -> Measured:
    """Run `loads` one after another on `hub` with one crowd; see the module docstring."""
    run_ids = await create_runs(bus, srv, runs)
    targets = [hub.events_url(run_ids[i % runs]) for i in range(runs * viewers_per_run)]
    assert srv.valkey.pid is not None
    async with Crowd(targets, timed=timed, log_dir=srv.dir) as crowd:
        ready_s = await crowd.ready(lambda: publish_marker(bus, run_ids))
        ready_s += await settle(hub.proc.pid)
        cpu = CpuWindow(
            {"server": [hub.proc.pid], "valkey": [srv.valkey.pid], "crowd": crowd.pids},
            own={"publisher": os.getpid()},
        )
        figures = {}
        for load in loads:
            figures[load.tag] = await _one_load(bus, crowd, cpu, run_ids, viewers_per_run, load)
        await publish_terminal(bus, run_ids)
        await crowd.wait_done(timeout=30)
        report = await crowd.report()
    for tag, samples in report.latencies.items():
        if tag in figures and samples:
            figures[tag].p50_ms = round(percentile(samples, 50), 2)
            figures[tag].p99_ms = round(percentile(samples, 99), 2)
            figures[tag].latency_samples = len(samples)
    return Measured(figures, report.summary(), ready_s)


async def measure_hubs(
    srv: Servers,
    bus: Bus,
    keys: list[str],
    loads: list[Load],
    *,
    runs: int = 1,
    viewers_per_run: int,
    timed: int = 50,
    retry: bool = True,
) -> dict[str, Measured | str]:
    """`measure` on a fresh server of each kind in turn, a disturbed one twice if `retry` (the
    quieter attempt is kept). A baseline that fails is reported by its error and the others
    still run; Tidings failing fails the benchmark."""
    out: dict[str, Measured | str] = {}
    for key in keys:
        for attempt in (1, 2) if retry else (1,):
            try:
                with running(srv, key) as hub:
                    measured = await measure(
                        srv,
                        bus,
                        hub,
                        loads,
                        runs=runs,
                        viewers_per_run=viewers_per_run,
                        timed=timed,
                    )
            except Exception as exc:
                if key == TIDINGS:
                    raise
                log.debug("baseline %s failed", key, exc_info=True)
                out.setdefault(key, f"{type(exc).__name__}: {exc}")
                break
            best = out.get(key)
            if not isinstance(best, Measured) or measured.disturbance < best.disturbance:
                out[key] = best = measured
            best.attempts = attempt
            if measured.disturbance <= DISTURBED_PCT:
                break
            log.info("%s: %.0f%% of a core busy elsewhere", key, measured.disturbance)
    return out
