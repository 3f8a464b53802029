"""Breadth: the wall time of a `research` run of breadth 8 on 4 workers against 1 worker.

The simulated model's pacing is I/O (sleeps), which one asyncio worker could overlap without
limit; so each worker is capped at `_MAX_JOBS` concurrent jobs (the run itself holds one), and the
pool size is what bounds parallelism, as CPU, memory or a model's rate limit do in production.
Token pacing is shortened so the whole benchmark takes seconds. The run's planning and synthesis
are sequential, so the ratio of wall times is below the ratio of the research phases (Amdahl);
both are reported.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from shared.bus import Bus
from shared.control import Control
from shared.redis import connect
from shared.settings import Settings

from .harness import BenchError, Result, Servers
from .listen import next_matching

__all__ = ["bench_breadth"]

_TARGET = 3.5
_MAX_JOBS = 2
_BREADTH = 8


async def _wait_workers(srv: Servers, control: Control, n: int) -> None:
    """Until `n` workers listen on the doorbell channel (each worker subscribes once ready)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        [(_, count)] = await control.redis.pubsub_numsub(srv.keys.wake_channel)
        if count >= n:
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"{n} workers did not come up within 30 s")


async def _wall_time(srv: Servers, workers: int, token_delay_ms: float) -> tuple[float, float]:
    """(run wall time, research phase time) of one research run on `workers` workers."""
    procs = [
        srv.worker(worker_max_jobs=_MAX_JOBS, llm_token_delay_ms=token_delay_ms)
        for _ in range(workers)
    ]
    redis = connect(srv.redis_url)
    settings = Settings(redis_url=srv.redis_url, namespace=srv.namespace)
    control = Control(redis, srv.keys, Bus(redis, srv.keys), settings)
    pubsub = redis.pubsub()
    try:
        await _wait_workers(srv, control, workers)
        run_id = uuid.uuid4().hex
        await pubsub.subscribe(srv.keys.run_channel(run_id))
        t0 = time.monotonic()
        await control.start(
            "research", {"topic": "tidal power", "breadth": _BREADTH, "depth": 1}, run_id=run_id
        )
        began, _ = await next_matching(
            pubsub, lambda e: e.get("type") == "iteration_started", 120, "iteration_started"
        )
        ended, _ = await next_matching(
            pubsub, lambda e: e.get("type") == "iteration_completed", 300, "iteration_completed"
        )
        done, last = await next_matching(
            pubsub,
            lambda e: e.get("type") in ("workflow_completed", "workflow_failed"),
            300,
            "the end of the research run",
        )
        if last["type"] != "workflow_completed":
            raise BenchError(f"research run failed: {last.get('message')}")
        return done - t0, ended - began
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()
        for proc in procs:
            srv.stop(proc)


async def bench_breadth(srv: Servers, quick: bool) -> Result:
    delay = 2.0 if quick else 4.0
    one, one_phase = await _wall_time(srv, 1, delay)
    four, four_phase = await _wall_time(srv, 4, delay)
    ratio = one / four
    return Result(
        name="breadth",
        title=f"research breadth {_BREADTH}: 4 workers (wall time)",
        figure=four,
        unit="s",
        baseline=one,
        baseline_label="the same run on 1 worker",
        ratio=ratio,
        target=f">= {_TARGET}x faster",
        met=ratio >= _TARGET,
        details={
            "breadth": _BREADTH,
            "max_jobs_per_worker": _MAX_JOBS,
            "token_delay_ms": delay,
            "one_worker_s": one,
            "four_workers_s": four,
            "research_phase_one_s": one_phase,
            "research_phase_four_s": four_phase,
        },
        notes=[
            f"research phase alone: {one_phase:.2f} s -> {four_phase:.2f} s "
            f"({one_phase / four_phase:.1f}x); simulated model, {delay:.0f} ms/token, "
            f"{_MAX_JOBS} jobs per worker",
        ],
    )
