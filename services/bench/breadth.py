"""Breadth: the wall time of a `research` run of breadth 8 on 4 workers against 1 worker.

Each worker's capacity is `worker_max_jobs=2`, the smallest that lets one worker finish a run that
fans out: the run itself holds one job slot while it waits for its tasks, and `run_slots` keeps at
least one for tasks (one run slot + one task slot). Without such a cap the comparison would be
meaningless: the simulated model's pacing is I/O (sleeps), which one asyncio worker could overlap
without limit, so one worker would run all eight questions at once. In production the cap stands
for what really bounds a worker process: its core, its memory, its share of a model's rate limit.

What that gives: on 1 worker the eight `research_question` tasks run one after another (one task
slot); on 4 workers the run's worker has one task slot free and the three others two each, seven
in all, so the eight tasks take two waves: the research phase gains about 8 / 2 = 4x, the ratio
of the pool sizes (a little more when the eighth task follows a short one, as tasks differ in
length). The run's planning and synthesis are sequential, so the wall-time ratio is a little
lower (Amdahl). Both are reported. Token pacing is shortened so the
whole benchmark takes seconds; it scales every model call alike, so the ratios keep.
"""

from __future__ import annotations

import time
import uuid

from tidings.bus import Bus
from tidings.control import Control
from tidings.redis import connect
from tidings.settings import Settings

from .harness import BenchError, Result, Servers
from .listen import next_matching, wait_workers
from .targets import Target

__all__ = ["bench_breadth"]

_TARGET = 3.5
_MAX_JOBS = 2
_BREADTH = 8


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
        await wait_workers(redis, srv.keys, workers)
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
        targets=[Target("ratio", ">=", _TARGET, f">= {_TARGET}x faster")],
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
            f"({one_phase / four_phase:.1f}x; 8 tasks in 8 waves -> 2 waves, ~4x if equal); "
            f"planning + synthesis: {one - one_phase:.2f} s -> {four - four_phase:.2f} s",
            f"capacity: worker_max_jobs={_MAX_JOBS} per worker = 1 run slot + 1 task slot "
            f"(task slots: 1 worker 1, 4 workers 7); simulated model, {delay:.0f} ms/token",
        ],
    )
