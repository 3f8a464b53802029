"""Recovery: `kill -9` of the worker running a run → the run resumed on another worker.

Ours: two Tidings workers (default lease settings), a long `monty` run; once it has started, the
worker named in the run record is SIGKILLed and we time until the next attempt's
`workflow_started` (and note when `worker_lost` came). A killed worker's Redis connections vanish
at once; the other worker's sweeper notices that from CLIENT LIST (after a short grace) and
reclaims the run without waiting for its lease to lapse. Target: resumed within 3 s.
Baseline: plain arq, two workers, a job that hangs; its worker is SIGKILLed and we time until the
job starts again on the other one. arq can only notice through its in-progress key, which
expires `job_timeout + 10 s` after the job started. A full run measures it with
`job_timeout=2 s` (arq's best case; the default 300 s makes it 310 s); `--quick` computes it
instead of waiting, and says so.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import subprocess
import time
import uuid
from typing import Any

from tidings.bus import Bus
from tidings.control import Control
from tidings.errors import TidingsError
from tidings.redis import connect
from tidings.settings import Settings

from .arq_baseline import connect_pool
from .harness import BenchError, Result, Servers
from .listen import next_matching, wait_workers
from .targets import Target

__all__ = ["bench_recovery"]

_TARGET_S = 3.0
_ARQ_JOB_TIMEOUT_S = 2.0
_ARQ_EXTRA_S = 10.0  # arq's in-progress key outlives the job timeout by this much
_LONG = {"min_sleep_s": 600, "max_sleep_s": 600}


def _owner(worker: str, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """The process named by the run record's `worker` field (which carries the worker's pid)."""
    for proc in procs:
        if proc.poll() is None and re.search(rf"(?<!\d){proc.pid}(?!\d)", worker):
            return proc
    raise BenchError(f"no live worker matches the run's worker field {worker!r}")


async def _ours_once(srv: Servers, control: Control, workers: list[Any]) -> tuple[float, float]:
    """(seconds to worker_lost, seconds to the next attempt's workflow_started) after kill -9."""
    run_id = uuid.uuid4().hex
    pubsub = control.redis.pubsub()
    await pubsub.subscribe(srv.keys.run_channel(run_id))
    try:
        await control.start("monty", _LONG, run_id=run_id)
        await next_matching(
            pubsub, lambda e: e.get("type") == "workflow_started", 30, "workflow_started"
        )
        record = await control.get(run_id)
        victim = _owner(record.worker, workers)
        t0 = time.monotonic()
        srv.kill(victim)
        lost, _ = await next_matching(
            pubsub, lambda e: e.get("type") == "worker_lost", 60, "worker_lost"
        )
        resumed, _ = await next_matching(
            pubsub,
            lambda e: e.get("type") == "workflow_started" and e.get("attempt", 0) > record.attempt,
            60,
            "workflow_started of the next attempt",
        )
        workers.remove(victim)
        workers.append(srv.worker())  # keep two in the pool for the next sample
        with contextlib.suppress(TidingsError):  # it may have ended meanwhile
            await control.signal(run_id, "cancel")
        return lost - t0, resumed - t0
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _ours(srv: Servers, samples: int) -> tuple[list[float], list[float]]:
    redis = connect(srv.redis_url)
    settings = Settings(redis_url=srv.redis_url, namespace=srv.namespace)
    control = Control(redis, srv.keys, Bus(redis, srv.keys), settings)
    workers = [srv.worker(), srv.worker()]
    lost: list[float] = []
    resumed: list[float] = []
    try:
        await wait_workers(redis, srv.keys, 2)  # listening, so `monty` is in the catalog
        for _ in range(samples):
            a, b = await _ours_once(srv, control, workers)
            lost.append(a)
            resumed.append(b)
    finally:
        for proc in workers:
            srv.stop(proc)
        await redis.aclose()
    return lost, resumed


async def _arq_measured(srv: Servers) -> float:
    queue = f"{srv.namespace}:arq-recovery"
    args = ["--redis", srv.redis_url, "--queue", queue, "--job-timeout", str(_ARQ_JOB_TIMEOUT_S)]
    workers = [
        srv.python("tidings.services.bench.arq_baseline", *args, name="arq") for _ in range(2)
    ]
    pool = await connect_pool(srv.redis_url)
    pubsub = pool.pubsub()
    channel = f"{srv.namespace}:arq-recovery-started"
    await pubsub.subscribe(channel)
    try:
        await pool.enqueue_job("hang", channel, "victim", _queue_name=queue)
        _, first = await next_matching(pubsub, lambda e: e.get("tag") == "victim", 30, "arq job")
        victim = next(p for p in workers if p.pid == first["pid"])
        t0 = time.monotonic()
        srv.kill(victim)
        t1, _ = await next_matching(
            pubsub,
            lambda e: e.get("tag") == "victim" and e.get("pid") != first["pid"],
            _ARQ_JOB_TIMEOUT_S + _ARQ_EXTRA_S + 20,
            "arq's retry of the killed job",
        )
        return t1 - t0
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await pool.aclose()
        for proc in workers:
            srv.stop(proc)


async def bench_recovery(srv: Servers, quick: bool) -> Result:
    lost, resumed = await _ours(srv, 1 if quick else 3)
    figure = statistics.median(resumed)
    if quick:
        baseline = _ARQ_JOB_TIMEOUT_S + _ARQ_EXTRA_S
        label = f"arq, job_timeout {_ARQ_JOB_TIMEOUT_S:.0f} s + 10 s (computed)"
    else:
        baseline = await _arq_measured(srv)
        label = f"arq, job_timeout {_ARQ_JOB_TIMEOUT_S:.0f} s (measured)"
    return Result(
        name="recovery",
        title="recovery after kill -9 (to next attempt started)",
        figure=figure,
        unit="s",
        baseline=baseline,
        baseline_label=label,
        ratio=baseline / figure,
        targets=[Target("figure", "<=", _TARGET_S, f"<= {_TARGET_S:.0f} s")],
        details={
            "samples": len(resumed),
            "to_worker_lost_s": lost,
            "to_resumed_s": resumed,
            "arq_measured": not quick,
            "arq_default_s": 300 + _ARQ_EXTRA_S,
        },
        notes=[
            f"worker_lost after {statistics.median(lost):.2f} s, next attempt started after "
            f"{figure:.2f} s (medians of {len(lost)}; all: "
            + ", ".join(f"{s:.2f}" for s in resumed)
            + " s); the sweeper sees the killed worker's Redis connections vanish",
            f"arq with its default job_timeout (300 s) would wait {300 + _ARQ_EXTRA_S:.0f} s",
        ],
    )
