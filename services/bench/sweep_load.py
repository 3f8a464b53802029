"""Idle Redis load of recovery: commands per second that 8 workers cost while 1,000 runs sleep.

Ours: 8 Tidings workers with room for every run (`TIDINGS_WORKER_MAX_JOBS` raised so their run
slots hold them all), 1,000 `monty` runs that sleep for ten minutes (a progress event a minute),
all running. Nothing happens but the workers' own upkeep: lease renewals (every
`lease_refresh_ms`), the sweeps that look for lost runs, the liveness checks. We count every
command Redis executes over a window (`INFO commandstats` before and after; commands a script
runs count one each, as Redis counts them) and report commands per second, with the biggest
contributors.

Baseline, side by side in the same run: the same pool with the sweeping it did before lease
deadlines added back, one sweeper per worker each doing what every worker did four times a
second: read a window of up to 1,000 active runs, GET each one's lease, CLIENT LIST
(O(workers x active runs)). It is measured right after ours, over the same runs and renewals, so
the ratio is what the old sweeping cost on top of everything else (it slightly flatters the
baseline's cost by our own sweeps, ~1 % of the figure). With the deadlines sorted set a sweep
reads only the leases that fell due, one worker sweeps at a time, and CLIENT LIST is rate-limited:
what is left is the renewals, which each worker needs for the runs it holds anyway.

Measured on the code before lease deadlines itself (commit 7ef56c5, this scenario): 20,519
commands/s, of which 16,458 GETs by sweeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

from redis.asyncio import Redis

import tidings.services.workflows  # noqa: F401  (the shipped workflows: `monty`)
from tidings.bus import Bus
from tidings.control import Control
from tidings.jobs import workers_listening
from tidings.redis import connect
from tidings.settings import Settings

from .harness import BenchError, Result, Servers
from .targets import Target

__all__ = ["bench_sweep"]

_WORKERS = 8
_RUNS = 1000
_SLEEPING = {"min_sleep_s": 600, "max_sleep_s": 600, "progress_interval_s": 60}
_OLD_SWEEP_S = 0.25
_OLD_WINDOW = 1000
_BASELINE_LABEL = (
    "the same pool plus the former sweeping (every worker GETs every lease each 0.25 s)"
)


def _max_jobs(runs_per_worker: int) -> int:
    """Job slots per worker whose run slots (all but a quarter) hold `runs_per_worker`."""
    from tidings.services.worker.dispatch import run_slots

    slots = runs_per_worker
    while run_slots(slots) < runs_per_worker:
        slots += 1
    return slots


async def _commandstats(redis: Redis) -> dict[str, int]:
    stats: dict[str, Any] = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def _former_sweeper(srv: Servers, stop: asyncio.Event) -> None:
    """What each worker's sweeper did before lease deadlines, minus acting on what it found
    (nothing is lost here): a window of active runs, a GET per lease, CLIENT LIST."""
    redis = connect(srv.redis_url)
    try:
        while not stop.is_set():
            ids = await redis.zrange(srv.keys.active, 0, _OLD_WINDOW - 1)
            async with redis.pipeline(transaction=False) as pipe:
                for rid in ids:
                    pipe.get(srv.keys.lease(rid.decode()))
                await pipe.execute()
            await redis.client_list()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _OLD_SWEEP_S)
    finally:
        await redis.aclose()


async def _count(redis: Redis, window_s: float) -> dict[str, Any]:
    """Commands Redis executed over `window_s`: per second, and the biggest contributors."""
    before = await _commandstats(redis)
    t0 = time.monotonic()
    await asyncio.sleep(window_s)
    after = await _commandstats(redis)
    elapsed = time.monotonic() - t0
    deltas = {
        name: after[name] - before.get(name, 0)
        for name in after
        if name != "info" and after[name] > before.get(name, 0)
    }
    top = sorted(deltas.items(), key=lambda kv: -kv[1])[:8]
    return {
        "window_s": round(elapsed, 2),
        "commands_per_s": sum(deltas.values()) / elapsed,
        "by_command_per_s": {name: round(n / elapsed, 1) for name, n in top},
    }


async def _until(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def measure(srv: Servers, *, workers: int, runs: int, window_s: float) -> dict[str, Any]:
    """Start `workers` and `runs` sleeping runs; count Redis commands over `window_s`."""
    redis = connect(srv.redis_url)
    settings = Settings(redis_url=srv.redis_url, namespace=srv.namespace)
    control = Control(redis, srv.keys, Bus(redis, srv.keys), settings)
    max_jobs = _max_jobs(-(-runs // workers) + 2)
    procs = [srv.worker(worker_max_jobs=max_jobs) for _ in range(workers)]
    try:

        async def listening() -> bool:
            for proc in procs:
                if proc.poll() is not None:
                    raise BenchError(f"a worker exited:\n{srv.tail(proc)}")
            return await workers_listening(redis, srv.keys) >= workers

        await _until(listening, "the workers", 60)
        ids = [uuid.uuid4().hex for _ in range(runs)]
        for i in range(0, runs, 100):
            await asyncio.gather(
                *(control.start("monty", _SLEEPING, run_id=rid) for rid in ids[i : i + 100])
            )

        async def all_running() -> bool:
            async with redis.pipeline(transaction=False) as pipe:
                for rid in ids:
                    pipe.hget(srv.keys.run(rid), "status")
                statuses = await pipe.execute()
            return all(s == b"running" for s in statuses)

        await _until(all_running, f"{runs} runs running", 120)
        await asyncio.sleep(3.0)  # past start-up: renewals and sweeps at their steady pace
        ours = await _count(redis, window_s)
        stop = asyncio.Event()
        former = [asyncio.create_task(_former_sweeper(srv, stop)) for _ in range(workers)]
        try:
            await asyncio.sleep(1.0)
            baseline = await _count(redis, window_s)
        finally:
            stop.set()
            await asyncio.gather(*former)
        return {
            "workers": workers,
            "runs": runs,
            "max_jobs": max_jobs,
            **ours,
            "baseline": baseline,
        }
    finally:
        for proc in procs:
            srv.kill(proc)
        await redis.aclose()


async def bench_sweep(srv: Servers, quick: bool) -> Result:
    found = await measure(srv, workers=_WORKERS, runs=_RUNS, window_s=5.0 if quick else 15.0)
    figure = found["commands_per_s"]
    baseline = found["baseline"]["commands_per_s"]
    by = ", ".join(f"{k} {v:,.0f}/s" for k, v in found["by_command_per_s"].items())
    return Result(
        name="sweep",
        title=f"idle Redis load, {_WORKERS} workers x {_RUNS:,} running runs",
        figure=figure,
        unit="cmd/s",
        baseline=baseline,
        baseline_label=_BASELINE_LABEL,
        ratio=baseline / figure,
        targets=[Target("ratio", ">=", 2.0, ">= 2x fewer than before")],
        details=found,
        notes=[f"{figure:,.0f} commands/s over {found['window_s']} s: {by}"],
    )
