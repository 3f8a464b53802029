"""Recovery: the sweeper (a dead worker's runs) and the hand-back (this worker stopping).

Every worker sweeps, every `_SWEEP_S`, one window of at most `_BATCH` active runs (the next
window each time, wrapping around: any number of active runs is covered at a bounded cost per
sweep): one ZRANGE, one pipeline of GETs on their leases, and a look at the status of those
without one. A run that should have a holder but has no lease (running or paused; or queued
while its job is gone) is reclaimed by `Leases.reclaim`, which bumps the attempt atomically; the
sweeper that wins then publishes `worker_lost` under the new attempt (status back to queued) and
enqueues the new attempt's job.
Only then may a worker start it, so `worker_lost` always precedes the next `workflow_started`.
If the sweeper dies in between, the placeholder lease expires and the next sweep reclaims the
run again.

Fast path: a run whose lease is still live but whose holder has no Redis connection left (see
`liveness`) is reclaimed the same way, fenced on the exact lease value, without waiting for the
TTL. Hand-back (SIGTERM) is the same move made by the holder itself, at once, for all its runs.
"""

from __future__ import annotations

import asyncio
import logging

from shared.errors import Fenced, NotFound, RunFinished
from shared.events import EventType
from shared.jobs import run_job_id

from .context import Engine
from .liveness import Liveness

__all__ = ["hand_back", "sweep", "sweep_once"]

logger = logging.getLogger(__name__)

_SWEEP_S = 0.25
_BATCH = 1000
_HELD = (b"running", b"paused")


async def sweep(engine: Engine) -> None:
    liveness = Liveness(engine.redis)
    offset = 0
    while True:
        await asyncio.sleep(_SWEEP_S)
        try:
            _, offset = await _sweep_window(engine, liveness, offset)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("sweep failed", exc_info=True)


async def sweep_once(engine: Engine, liveness: Liveness | None = None) -> int:
    """One full pass over every active run; returns how many were re-enqueued."""
    recovered, offset = 0, 0
    while True:
        found, offset = await _sweep_window(engine, liveness, offset)
        recovered += found
        if offset == 0:
            return recovered


async def _sweep_window(engine: Engine, liveness: Liveness | None, offset: int) -> tuple[int, int]:
    """Sweep the active runs from rank `offset`: (runs re-enqueued, where the next window starts).

    Ranks shift as runs finish, so a pass may skip a run; the next pass sees it.
    """
    ids = [
        rid.decode()
        for rid in await engine.redis.zrange(engine.keys.active, offset, offset + _BATCH - 1)
    ]
    following = offset + len(ids) if len(ids) == _BATCH else 0
    return await _sweep(engine, liveness, ids), following


async def _sweep(engine: Engine, liveness: Liveness | None, ids: list[str]) -> int:
    keys = engine.keys
    if not ids:
        return 0
    # Most runs hold a lease: one GET each, and a closer look only at the others.
    async with engine.redis.pipeline(transaction=False) as pipe:
        for rid in ids:
            pipe.get(keys.lease(rid))
        leases = await pipe.execute()
    held = {rid: value.decode() for rid, value in zip(ids, leases, strict=True) if value}
    unleased = [rid for rid in ids if rid not in held]
    # (run id, attempt, lease value it must still hold or None, why)
    orphans: list[tuple[str, int, str | None, str]] = []
    if liveness is not None:
        orphans += await _held_by_the_gone(engine, liveness, held)
    if unleased:
        async with engine.redis.pipeline(transaction=False) as pipe:
            for rid in unleased:
                pipe.hmget(keys.run(rid), ["attempt", "status"])
            replies = await pipe.execute()
        deleted: list[str] = []
        for rid, (attempt, status) in zip(unleased, replies, strict=True):
            if status is None:
                deleted.append(rid)
            elif status in _HELD or status == b"queued":
                orphans.append((rid, int(attempt or 1), None, "lease_expired"))
        if deleted:
            await engine.redis.zrem(keys.active, *deleted)
    if not orphans:
        return 0
    async with engine.redis.pipeline(transaction=False) as pipe:
        for rid, attempt, value, _ in orphans:
            job_id = run_job_id(rid, attempt)
            await engine.leases.reclaim_in(pipe, rid, attempt, job_id, held_as=value)
        outcomes = await pipe.execute()
    recovered = 0
    for (rid, attempt, _, why), outcome in zip(orphans, outcomes, strict=True):
        reclaimed = engine.leases.reclaimed(outcome)
        if reclaimed is not None:
            new, previous = reclaimed
            message = f"worker {previous or '?'} lost; attempt {new} queued"
            data = {"previous_attempt": attempt, "worker": previous, "reason": why}
            if await _requeue(engine, rid, new, message, data):
                recovered += 1
    return recovered


async def _held_by_the_gone(
    engine: Engine, liveness: Liveness, held: dict[str, str]
) -> list[tuple[str, int, str | None, str]]:
    """Runs whose lease is still live but whose holder has no connection any more."""
    holders: dict[str, list[tuple[str, int, str]]] = {}
    for rid, value in held.items():
        holder, _, attempt = value.rpartition(" ")
        if holder in ("-", "", engine.name) or not attempt.isdigit():
            continue  # placeholders, and ourselves: alive by definition
        holders.setdefault(holder, []).append((rid, int(attempt), value))
    gone = await liveness.gone(set(holders))
    return [
        (rid, attempt, value, "worker_gone")
        for holder in gone
        for rid, attempt, value in holders[holder]
    ]


async def hand_back(engine: Engine) -> None:
    """Give every run and task this worker holds back to the pool, now."""
    await asyncio.gather(
        *(_hand_back_run(engine, rid) for rid in list(engine.runs)),
        *(_hand_back_task(engine, job_id) for job_id in list(engine.tasks)),
    )


async def _hand_back_run(engine: Engine, run_id: str) -> None:
    handle = engine.runs.get(run_id)
    if handle is None:
        return
    attempt = handle.attempt
    try:
        reclaimed = await engine.leases.reclaim(
            run_id, attempt, run_job_id(run_id, attempt), held_as=engine.leases.run_value(attempt)
        )
    finally:
        handle.abort("handback")
    if reclaimed is None:
        return  # already fenced or finished: nothing of ours to hand back
    new, _ = reclaimed
    message = f"worker {engine.name} is shutting down: handed back; attempt {new} queued"
    data = {"previous_attempt": attempt, "worker": engine.name, "reason": "shutdown"}
    await _requeue(engine, run_id, new, message, data)


async def _hand_back_task(engine: Engine, job_id: str) -> None:
    execution = engine.tasks.get(job_id)
    if execution is None:
        return
    try:
        await execution.publisher.send(
            EventType.TASK_RETRYING,
            f"worker {engine.name} is shutting down: task handed back",
            task=execution.name,
            task_id=execution.task_id,
            data={"try": execution.try_ + 1, "reason": "shutdown"},
            wait=True,
        )
        await execution.enqueue_next()
    except (Fenced, RunFinished, NotFound):
        pass  # the run moved on or ended: nothing to hand back
    finally:
        execution.abort("handback")


async def _requeue(
    engine: Engine, run_id: str, attempt: int, message: str, data: dict[str, object]
) -> bool:
    try:
        await engine.bus.publish(run_id, EventType.WORKER_LOST, message, attempt=attempt, data=data)
    except (Fenced, RunFinished, NotFound) as exc:
        logger.info("run %s not re-enqueued: %s", run_id, exc)
        return False
    await engine.queue.enqueue_run(run_id, attempt)
    logger.warning("run %s: %s", run_id, message)
    return True
