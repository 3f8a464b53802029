"""A fanned-out task's execution on whichever worker took its job, and its `TaskContext`.

Claiming is one script (`Leases.claim_task`): it removes the job from the queue, checks the
run's attempt and that nobody committed the task yet, sets the task lease, returns the spec.
The outcome is committed with `Bus.publish_once` on `task:<id>` (result) or `fail:<id>` (final
error), so when two executions race (a worker presumed lost comes back) exactly one
`task_completed` is published. A failure with tries left publishes `task_retrying` and enqueues
the next try with a short back-off before the lease is released, so the waiting run never sees
the task as lost. A task's `timeout` bounds each try here, on the worker executing it: the
activity is cancelled and the try counts as failed ("StepTimeout: … timed out"), then retried,
and the last one fails the task (`parallel` raises `TaskFailed`). The result is validated against
the activity's return annotation before it is committed: one that does not fit fails the try.

Every event is fenced by the run attempt the job was enqueued for. A Redis outage is waited out
as a run's is (`outage.until_redis`), and the lease loop renews the task's lease the moment Redis
is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tidings import codec
from tidings.errors import Fenced, RunFinished
from tidings.events import EventType
from tidings.jobs import TASK_JOB, task_job_id
from tidings.sdk import RunInfo, StepTimeout, TaskContext, registry
from tidings.sdk.model import Message, Tool, ToolResult

from .context import EngineViews
from .conversation import publish_conversation
from .handback import hand_back_task
from .messages import (
    completed_message,
    describe_error,
    failed_message,
    retrying_message,
    started_message,
)
from .outage import OUTAGE_ERRORS, until_redis
from .publisher import Publisher
from .replay import adapter_for, describe_invalid, typed
from .tokens import stream_tokens

if TYPE_CHECKING:
    from .context import Engine

__all__ = ["TaskExecution", "execute_task_job"]

logger = logging.getLogger(__name__)

_BACKOFF_MS = 200


class TaskExecution(EngineViews):
    """Also the `TaskContext` the activity receives."""

    def __init__(
        self, engine: Engine, run_id: str, task_id: str, attempt: int, try_: int, spec: Any
    ) -> None:
        self.engine = engine
        self.run_id = run_id
        self.task_id = task_id
        self.attempt = attempt
        self.try_ = try_
        self.spec = spec
        self.queue = ""  # the run's queue, where its next try goes (set by `execute_task_job`)
        self.name = str(spec.get("name") or spec["activity"])
        self.publisher = Publisher(engine.bus, run_id, attempt, on_error=self._publish_failed)
        self.abort_reason: str | None = None
        self.main: asyncio.Task[Any] | None = None

    @property
    def info(self) -> RunInfo:
        return RunInfo(
            run_id=self.run_id,
            workflow=str(self.spec.get("workflow", "")),
            version=str(self.spec.get("version", "1")),
            attempt=self.attempt,
            try_=self.try_,
            task_id=self.task_id,
            task=self.name,
        )

    @property
    def lease_key(self) -> str:
        return self.engine.keys.task_lease(self.run_id, self.task_id)

    def job_id(self, try_: int) -> str:
        tag = self.engine.keys.run_tag(self.run_id)
        return task_job_id(self.run_id, self.task_id, self.attempt, try_, tag)

    # -- TaskContext ----------------------------------------------------------------------------

    async def progress(self, fraction: float, message: str = "", **data: Any) -> None:
        fraction = max(0.0, min(1.0, fraction))
        overall = None
        if self.spec.get("span"):
            # The run's share for this task: `start + share * fraction` is a lower bound of the
            # fan-out's true progress (the sum over its tasks), so asking for it never overshoots,
            # and it rides on this event: no extra round trip.
            start, end = self.spec["span"]
            overall = start + (end - start) * fraction
        await self.publisher.send(
            EventType.TASK_PROGRESS,
            message,
            task=self.name,
            task_id=self.task_id,
            progress=overall,
            data={"fraction": fraction, **data},
        )

    async def emit(self, type: EventType, message: str = "", **data: Any) -> None:
        await self.publisher.send(
            type, message, task=self.name, task_id=self.task_id, data=data or None
        )

    def converse(
        self,
        messages: Sequence[Message],
        tools: Sequence[Tool] = (),
        *,
        max_rounds: int = 4,
        max_tokens: int = 400,
        data: dict[str, Any] | None = None,
    ) -> AsyncIterator[str | ToolResult]:
        return publish_conversation(
            self.model,
            self.publisher,
            messages,
            tools,
            task=self.name,
            task_id=self.task_id,
            max_rounds=max_rounds,
            max_tokens=max_tokens,
            data=data,
        )

    def stream_llm(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 400
    ) -> AsyncIterator[str]:
        return stream_tokens(
            self.model,
            self.publisher,
            prompt,
            task=self.name,
            task_id=self.task_id,
            system=system,
            max_tokens=max_tokens,
        )

    async def complete(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 400
    ) -> str:
        parts = [d async for d in self.stream_llm(prompt, system=system, max_tokens=max_tokens)]
        return "".join(parts)

    # -- execution ------------------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
        self.publisher.close()
        if self.main is not None and not self.main.done():
            self.main.cancel(f"task {reason}")

    def _publish_failed(self, exc: Exception) -> None:
        self.abort("fenced" if isinstance(exc, Fenced) else "finished")

    async def execute(self) -> None:
        """Run the activity and commit its outcome. Once the task is not this execution's any
        more (handed back, fenced, its run finished), whatever it was doing, it stops quietly:
        another execution speaks for the task."""
        try:
            await self._execute()
        except (Fenced, RunFinished) as exc:
            logger.info("task %s/%s try %d stops: %s", self.run_id, self.task_id, self.try_, exc)

    async def _execute(self) -> None:
        await self.publisher.send(
            EventType.TASK_STARTED,
            started_message(self.name),
            task=self.name,
            task_id=self.task_id,
            data={"worker": self.engine.name, "try": self.try_},
        )
        args = self.spec.get("args") or []
        kwargs = self.spec.get("kwargs") or {}
        timeout = self.spec.get("timeout")
        try:
            activity = registry.get_activity(self.spec["activity"])
            self.main = asyncio.ensure_future(activity.fn(self, *args, **kwargs))
            if timeout is None:
                result = await self.main
            else:
                result = await self._bounded(self.main, float(timeout))
            value = codec.dumps(result)
            try:
                typed(adapter_for(activity.fn), codec.loads(value))
            except ValidationError as exc:
                raise TypeError(
                    f"activity {activity.name!r} returned a value its return annotation does "
                    f"not describe: {describe_invalid(exc)}"
                ) from None
        except asyncio.CancelledError:
            if self.abort_reason is None or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            return  # fenced, finished or handed back: another execution speaks for it
        except (Fenced, RunFinished):
            raise  # not the activity's failure (see `execute`)
        except Exception as exc:
            await self._failed(exc)
            return
        cmd = self.publisher.command(
            EventType.TASK_COMPLETED,
            completed_message(self.name),
            task=self.name,
            task_id=self.task_id,
            data={"result": codec.loads(value), "worker": self.engine.name, "try": self.try_},
        )
        await self.publisher.commit(
            cmd, self.engine.keys.steps(self.run_id), f"task:{self.task_id}", value.decode()
        )

    async def _bounded(self, main: asyncio.Future[Any], timeout: float) -> Any:
        try:
            return await asyncio.wait_for(main, timeout)
        except TimeoutError:
            if not main.cancelled():
                raise  # the activity's own TimeoutError
            raise StepTimeout(f"task {self.name} timed out after {timeout:g} s") from None

    async def _failed(self, exc: Exception) -> None:
        error = describe_error(exc)
        retries = int(self.spec.get("retries", 0))
        if self.try_ < retries:
            await self.publisher.send(
                EventType.TASK_RETRYING,
                retrying_message(self.name, self.try_ + 2, retries + 1, error),
                task=self.name,
                task_id=self.task_id,
                data={"try": self.try_ + 1, "error": error},
                wait=True,
            )
            await self.enqueue_next(defer_ms=_BACKOFF_MS * 2**self.try_)
            return
        cmd = self.publisher.command(
            EventType.TASK_FAILED,
            failed_message(self.name, error),
            task=self.name,
            task_id=self.task_id,
            data={"error": error, "try": self.try_},
        )
        await self.publisher.commit(
            cmd,
            self.engine.keys.steps(self.run_id),
            f"fail:{self.task_id}",
            codec.dumps_str({"error": error}),
        )

    async def enqueue_next(self, defer_ms: int = 0) -> None:
        await self.engine.queue.enqueue(
            TASK_JOB,
            self.job_id(self.try_ + 1),
            self.run_id,
            self.task_id,
            self.attempt,
            self.try_ + 1,
            queue=self.queue,
            defer_ms=defer_ms,
        )


async def execute_task_job(
    ctx: dict[str, Any], run_id: str, task_id: str, attempt: int, try_: int
) -> None:
    """The arq job function for one try of one task."""
    engine: Engine = ctx["engine"]
    job_id = task_job_id(run_id, task_id, attempt, try_, engine.keys.run_tag(run_id))
    queue = ctx["queue"]  # the run's queue (`fanout`)
    status, spec = await engine.leases.claim_task(run_id, task_id, attempt, try_, job_id, queue)
    if status != "ok" or spec is None:
        logger.debug("task job %s not run: %s", job_id, status)
        return
    execution = TaskExecution(engine, run_id, task_id, attempt, try_, codec.loads(spec))
    execution.queue = queue
    engine.tasks[job_id] = execution
    handed_back = False
    try:
        if engine.closing:
            # Claimed while this worker is stopping: straight back to the pool (see `handback`).
            try:
                await hand_back_task(engine, job_id)
            except OUTAGE_ERRORS as exc:
                logger.warning("task %s: not handed back (%s); its run will", job_id, exc)
        else:
            await execution.execute()
    except asyncio.CancelledError:
        handed_back = execution.abort_reason == "handback"
        raise
    finally:
        engine.tasks.pop(job_id, None)
        if execution.abort_reason in (None, "handback") or handed_back:
            await asyncio.shield(_release(engine, execution))


async def _release(engine: Engine, execution: TaskExecution) -> None:
    value = engine.leases.task_value(execution.attempt, execution.try_)

    # The run may have ended meanwhile: its doorbell list then expires with it.
    done = engine.keys.done(execution.run_id)

    async def release() -> None:
        if engine.keys.clustered:  # a cluster pipeline takes no script of the bus's: in turn
            await engine.leases.release(execution.lease_key, value)
            await engine.bus.append(execution.run_id, done, execution.task_id)
            return
        async with engine.redis.pipeline(transaction=False) as pipe:
            await engine.leases.release(execution.lease_key, value, client=pipe)
            await engine.bus.append(execution.run_id, done, execution.task_id, client=pipe)
            await pipe.execute()

    await until_redis(release, f"task {execution.run_id}/{execution.task_id}: release")


def _conforms(execution: TaskExecution) -> TaskContext:
    return execution  # mypy checks TaskExecution against the protocol activities receive
