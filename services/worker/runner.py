"""The arq job function for one attempt of a run: claim, start, execute, finish.

The terminal event is the only place a run's outcome is decided: `workflow_completed` (with the
result in the run hash), `workflow_failed` (error), or `workflow_cancelled`. A run that lost its
fence (another attempt owns it), was finished under it (cancelled while queued) or was handed
back on shutdown publishes nothing more: its successor speaks for it.

A Redis outage is not the workflow's failure either. What the execution needs from Redis waits
for it to come back (`outage.until_redis`) and the run carries on as the same attempt. Should a
connection error still reach this level (a workflow's own call to Redis, say), the run is left
to its lease and re-executed from its checkpoints.

Versions: a run is executed only by a worker that registered the version recorded on the run
for its workflow. Jobs are routed by version (`Keys.queue_for`), so a worker should never meet
another version's run; if it does (a stale queue, a hand-made job), it does not replay the run
against other code: it logs an error and hands the run back, with the job deferred by
`_VERSION_DEFER_MS`, so a worker serving that version takes it (`worker_lost`, reason `version`).

Outcomes decided after the body: a run whose cancel the workflow swallowed still ends
`workflow_cancelled`; a run that met a `ReplayMismatch` fails with it, even if the workflow
caught it.

Redis at its memory cap is different: it answers, and refuses every write. A publish is retried
for `TIDINGS_STORAGE_FULL_WAIT_S` (`Bus`); past that the run fails ("storage full"). Its
terminal event, whichever it is, is then written past the cap (one event and the record): a run
that could not end would hold its keys forever, while an ended one expires with the retention.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tidings import codec
from tidings.errors import Fenced, NotFound, RunFinished, StorageFull
from tidings.events import EventType
from tidings.jobs import queue_of, run_job_id
from tidings.sdk import WorkflowError, registry

from .context import Engine
from .handback import hand_back_run, requeue
from .messages import describe_error
from .outage import OUTAGE_ERRORS, until_redis
from .run import RunHandle

__all__ = ["execute_run_job"]

logger = logging.getLogger(__name__)

# Errors of publishing (the run moved on, ended, or was deleted): nothing left to say.
_QUIET = (Fenced, RunFinished, NotFound)
# What the workflow's body may raise that still means "not ours any more" rather than "failed".
_GONE = (Fenced, RunFinished)
_FULL = (StorageFull, RedisOutOfMemoryError)
_FULL_MESSAGE = "storage full: Redis is at its memory cap (maxmemory) and refused the run's writes"
_VERSION_DEFER_MS = 5_000


async def execute_run_job(ctx: dict[str, Any], run_id: str, attempt: int) -> None:
    engine: Engine = ctx["engine"]
    job_id = run_job_id(run_id, attempt, engine.keys.run_tag(run_id))
    status = await engine.leases.claim_run(run_id, attempt, job_id, ctx["queue"])
    if status != "ok":
        logger.info("run job %s not run: %s", job_id, status)
        return
    handle = RunHandle(engine, run_id, attempt)
    engine.runs[run_id] = handle
    try:
        if engine.closing:
            # Claimed while this worker is stopping (the job was already on its way): the
            # hand-back has started without it, so it goes straight back itself.
            try:
                await hand_back_run(engine, run_id)
            except OUTAGE_ERRORS as exc:
                logger.warning("run %s: not handed back (%s); the sweepers will", run_id, exc)
        else:
            await _drive(handle)
    finally:
        if engine.runs.get(run_id) is handle:  # a newer attempt may have landed here since
            del engine.runs[run_id]
        handle.publisher.close()
        if handle.abort_reason not in ("fenced", "handback"):
            lease, value = engine.keys.lease(run_id), engine.leases.run_value(attempt)
            release = partial(engine.leases.release, lease, value)
            await asyncio.shield(until_redis(release, f"run {run_id}: release the lease"))


async def _drive(handle: RunHandle) -> None:
    engine = handle.engine
    await handle.load()
    if not await _serves_version(handle):
        return
    try:
        await handle.publisher.send(
            EventType.WORKFLOW_STARTED,
            f"attempt {handle.attempt} on {engine.name}",
            wait=True,
            data={"attempt": handle.attempt, "worker": engine.name},
            fields={"worker": engine.name},
        )
    except _QUIET as exc:
        logger.info("run %s attempt %d not started: %s", handle.run_id, handle.attempt, exc)
        return
    except StorageFull:
        fields = {"error": _FULL_MESSAGE}
        await _terminal(handle, EventType.WORKFLOW_FAILED, _FULL_MESSAGE, fields=fields)
        return
    if handle.signals.cancel:
        await _terminal(handle, EventType.WORKFLOW_CANCELLED, "cancelled")
        return
    if handle.abort_reason is not None:
        return  # handed back or fenced while starting: its body must not start here
    handle.main = asyncio.create_task(_body(handle), name=f"run:{handle.run_id}")
    try:
        result = await handle.main
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the worker itself is stopping
        if handle.abort_reason == "cancel":
            await _terminal(handle, EventType.WORKFLOW_CANCELLED, "cancelled")
        return
    except _GONE as exc:
        logger.info("run %s attempt %d aborted: %s", handle.run_id, handle.attempt, exc)
        return
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        # Redis unreachable for longer than the client retries: this is not the workflow's
        # failure. Stop here; the lease lapses and the run is re-executed from its checkpoints.
        logger.warning("run %s attempt %d lost Redis: %s", handle.run_id, handle.attempt, exc)
        handle.abort("redis")
        return
    except Exception as exc:
        if handle.abort_reason == "cancel":  # the workflow turned its cancellation into this
            await _terminal(handle, EventType.WORKFLOW_CANCELLED, "cancelled")
            return
        if handle.abort_reason is not None:
            return
        logger.info("run %s failed", handle.run_id, exc_info=True)
        error = _FULL_MESSAGE if isinstance(exc, _FULL) else describe_error(handle.mismatch or exc)
        await _terminal(handle, EventType.WORKFLOW_FAILED, error, fields={"error": error})
        return
    if handle.abort_reason == "cancel":  # the workflow swallowed its cancellation
        await _terminal(handle, EventType.WORKFLOW_CANCELLED, "cancelled")
        return
    if handle.mismatch is not None:  # the workflow caught it: the run fails all the same
        error = describe_error(handle.mismatch)
        await _terminal(handle, EventType.WORKFLOW_FAILED, error, fields={"error": error})
        return
    value = codec.dumps(result)
    await _terminal(
        handle,
        EventType.WORKFLOW_COMPLETED,
        "completed",
        progress=100,
        data={"result": codec.loads(value)},
        fields={"result": value.decode()},
    )


async def _serves_version(handle: RunHandle) -> bool:
    """This worker registered the run's version of its workflow; else hand the run back.

    An unknown workflow is the body's to fail (as it always was)."""
    definition = registry.workflows.get(handle.workflow)
    if definition is None or definition.version == handle.version:
        return True
    engine, run_id, attempt = handle.engine, handle.run_id, handle.attempt
    logger.error(
        "run %s is %s version %s but this worker serves version %s: not executed here; "
        "handed back for a worker that serves it",
        run_id,
        handle.workflow,
        handle.version,
        definition.version,
    )
    job_id = run_job_id(run_id, attempt, engine.keys.run_tag(run_id))
    held = engine.leases.run_value(attempt)
    # Where it was found: this worker's version's queue in the run's bucket.
    served = engine.keys.queue_for(handle.workflow, definition.version, engine.keys.bucket(run_id))
    try:
        reclaimed = await engine.leases.reclaim(run_id, attempt, job_id, served, held_as=held)
    finally:
        handle.abort("handback")
    if reclaimed is None:
        return False  # fenced or finished meanwhile: not ours to hand back
    new, _ = reclaimed
    message = (
        f"worker {engine.name} serves {handle.workflow} version {definition.version}, not "
        f"{handle.version}: handed back; attempt {new} queued"
    )
    data = {"previous_attempt": attempt, "worker": engine.name, "reason": "version"}
    queue = queue_of(engine.keys, handle)
    await requeue(engine, run_id, new, message, data, queue, defer_ms=_VERSION_DEFER_MS)
    return False


async def _body(handle: RunHandle) -> Any:
    definition = registry.get_workflow(handle.workflow)
    try:
        # The gateway checked the JSON schema; the model applies the rest (cross-field rules,
        # defaults). Input it refuses fails the run at once, with what was wrong.
        model = definition.Input.model_validate(handle.input or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise WorkflowError(f"invalid input for workflow {handle.workflow!r}: {problems}") from None
    return await definition.fn(handle, model)


async def _terminal(handle: RunHandle, type: EventType, message: str, **kwargs: Any) -> None:
    try:
        try:
            await handle.publisher.send(type, message, wait=True, **kwargs)
        except StorageFull:
            logger.warning("run %s: storage full; %s written past the cap", handle.run_id, type)
            await handle.engine.bus.publish(
                handle.run_id, type, message, attempt=handle.attempt, allow_oom=True, **kwargs
            )
    except _QUIET as exc:
        logger.info("run %s: %s not published: %s", handle.run_id, type.value, exc)
