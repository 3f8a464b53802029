"""Hand-back: a stopping worker gives every run and task it holds back to the pool, at once.

A run is handed back the way a sweeper recovers a dead worker's run (`Leases.reclaim`, fenced on
this worker's exact lease value): the attempt is bumped, `worker_lost` is published under the new
attempt (status back to queued) and the new attempt's job is enqueued. A task is stopped first,
then `task_retrying` (reason `shutdown`) is published and its next try enqueued, so nothing of the
stopped try is published after it.

What makes this safe to call while jobs are still starting:
- `Engine.closing` is set before the first hand-back. A run or task claimed after that (its job
  was already on its way when the worker stopped picking jobs) is handed back by its own job as
  soon as the claim succeeds (`runner`, `tasks`), so nothing claimed is ever left out.
- An execution's publisher refuses events once closed, with an error, never a cancellation
  (`Publisher.close`), so a hand-back racing a fence or a lease check ends in a result.
- Each hand-back is awaited whole by `hand_back`; failures are logged one by one and never stop
  the others. Should Redis be unreachable, what could not be handed back is recovered by the
  sweeping worker once its lease (or the placeholder lease) lapses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tidings.errors import Fenced, NotFound, RunFinished
from tidings.events import EventType
from tidings.jobs import RUN_JOB, queue_of, queue_of_fields, run_job_id

from .context import Engine

if TYPE_CHECKING:
    from .run import RunHandle

__all__ = ["hand_back", "hand_back_run", "hand_back_task", "requeue"]

logger = logging.getLogger(__name__)

_GONE = (Fenced, RunFinished, NotFound)


async def hand_back(engine: Engine) -> int:
    """Hand back every run and task this worker holds now; returns how many failed."""
    results = await asyncio.gather(
        *(hand_back_run(engine, rid) for rid in list(engine.runs)),
        *(hand_back_task(engine, job_id) for job_id in list(engine.tasks)),
        return_exceptions=True,
    )
    failed = 0
    for result in results:
        if isinstance(result, BaseException):
            failed += 1
            logger.warning("hand-back failed: %s; the sweepers will recover it", result)
    return failed


async def hand_back_run(engine: Engine, run_id: str) -> None:
    handle = engine.runs.get(run_id)
    if handle is None or handle.abort_reason not in (None, "cancel"):
        return  # fenced, finished or already handed back: nothing of ours to give
    attempt, queue = handle.attempt, await _queue(engine, handle)
    try:
        if queue is None:
            return  # the record is gone: nothing to move
        reclaimed = await engine.leases.reclaim(
            run_id,
            attempt,
            run_job_id(run_id, attempt, engine.keys.run_tag(run_id)),
            queue,
            held_as=engine.leases.run_value(attempt),
        )
    finally:
        handle.abort("handback")
    if reclaimed is None:
        return  # already fenced or finished: nothing of ours to hand back
    new, _ = reclaimed
    message = f"worker {engine.name} is shutting down: handed back; attempt {new} queued"
    data = {"previous_attempt": attempt, "worker": engine.name, "reason": "shutdown"}
    await requeue(engine, run_id, new, message, data, queue)


async def _queue(engine: Engine, handle: RunHandle) -> str | None:
    """The run's queue; read from its record when the run was claimed but not loaded yet (a job
    claimed while the worker stops hands its run back before loading it). None: no record."""
    if handle.workflow:
        return queue_of(engine.keys, handle)
    key = engine.keys.run(handle.run_id)
    workflow, version = await engine.redis.hmget(key, ["workflow", "version"])  # type: ignore[misc]
    if not workflow:
        return None
    return queue_of_fields(engine.keys, workflow, version, handle.run_id)


async def hand_back_task(engine: Engine, job_id: str) -> None:
    execution = engine.tasks.get(job_id)
    if execution is None or execution.abort_reason is not None:
        return  # fenced, finished or already handed back
    # Stop the activity and its publisher first: nothing of this try follows `task_retrying`.
    execution.abort("handback")
    try:
        await engine.bus.publish(
            execution.run_id,
            EventType.TASK_RETRYING,
            f"worker {engine.name} is shutting down: task handed back",
            task=execution.name,
            task_id=execution.task_id,
            data={"try": execution.try_ + 1, "reason": "shutdown"},
            attempt=execution.attempt,
        )
        await execution.enqueue_next()
    except _GONE:
        pass  # the run moved on (its new attempt enqueues the task again) or ended


async def requeue(
    engine: Engine,
    run_id: str,
    attempt: int,
    message: str,
    data: dict[str, object],
    queue: str,
    *,
    defer_ms: int = 0,
) -> bool:
    """After a reclaim: `worker_lost` under the new attempt, then the new attempt's job (on the
    run's `queue`, due in `defer_ms`)."""
    try:
        await engine.bus.publish(run_id, EventType.WORKER_LOST, message, attempt=attempt, data=data)
    except _GONE as exc:
        logger.info("run %s not re-enqueued: %s", run_id, exc)
        return False
    job_id = run_job_id(run_id, attempt, engine.keys.run_tag(run_id))
    await engine.queue.enqueue(RUN_JOB, job_id, run_id, attempt, queue=queue, defer_ms=defer_ms)
    logger.warning("run %s: %s", run_id, message)
    return True
