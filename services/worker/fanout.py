"""`run.parallel`, the run's side: enqueue each task as its own job, then wait for them all.

Task ids are `p<n>.<i>` (the n-th `parallel` call of the execution, i-th task) or `<key>.<i>`
(`parallel(..., key=)`), stable across re-executions, so a re-executed run finds the results
earlier attempts committed (`task:<id>` in the steps hash) and enqueues only what is missing.
Specs go to the run's tasks hash (with the run's workflow and version, so `ctx.info` tells
them), jobs to the queue (`task:{ID}:{TID}:{attempt}.{try}`).

Replay: before a stored result (or failure) is used, the spec it was produced for is read back
from the tasks hash: another activity, or for `p<n>` ids other arguments, raises `ReplayMismatch`
(the fan-outs ran in another order than in the earlier attempt); a result is never handed to the
wrong call. Results come back validated into the activity's return annotation (`replay`).

Waiting is a BLPOP on the run's `done` list, which executions push to when they finish; it is
only a doorbell: after every wake-up (or every second at most) the run reads the truth in one
pipeline: committed results and failures, live task leases, queued jobs. A task that is neither
committed, leased nor queued, and stays so for a full lease TTL, lost its worker: it is
re-enqueued with the next try (`task_retrying`). The wait covers a lease that ran out while Redis
was away: its worker renews it as soon as Redis is back. Deterministic job ids make racing
re-enqueues harmless.

Progress over a span (`run.parallel(..., progress=(start, end))`): the run counts the committed
results it reads after each wake-up and publishes a `task_progress` event at
`start + (end - start) * done / n` whenever the count grew, through its fenced publisher; the
script keeps the run's progress monotonic. Each task's spec also carries its share, so a task's
own `ctx.progress(fraction)` asks for `start + share * fraction` on the event it publishes anyway
(see `TaskExecution.progress`): a lower bound of the true sum, so it never overshoots; it moves
the bar before the first task completes and inside a one-task fan-out, at no extra round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tidings import codec
from tidings.events import EventType
from tidings.jobs import TASK_JOB, queue_of, task_job_id
from tidings.sdk import ReplayMismatch, TaskFailed, TaskSpec, registry

from .messages import failed_message, retrying_message
from .outage import until_redis
from .replay import adapter_for, describe_invalid, typed

if TYPE_CHECKING:
    from .run import RunHandle

__all__ = ["TaskFailed", "run_parallel"]

# Worker losses a task may suffer beyond its failure retries before it fails for good.
_LOST_EXTRA = 3


async def run_parallel(
    run: RunHandle,
    group: str,
    specs: Sequence[TaskSpec[Any]],
    span: tuple[float, float] | None = None,
    *,
    keyed: bool = False,
) -> list[Any]:
    engine = run.engine
    keys, redis = engine.keys, engine.redis
    ids = [f"{group}.{i}" for i in range(len(specs))]
    if not ids:
        return []
    by_id = dict(zip(ids, specs, strict=True))
    # An unknown activity fails the run here, before anything is enqueued.
    adapters = {tid: adapter_for(registry.get_activity(by_id[tid].activity).fn) for tid in ids}
    meter = _Meter(run, span, len(ids))
    queue = queue_of(keys, run)
    tag = keys.run_tag(run.run_id)
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for tid in ids:
        if f"task:{tid}" in run.steps:
            results[tid] = codec.loads(run.steps[f"task:{tid}"])
        elif f"fail:{tid}" in run.steps:
            failed[tid] = codec.loads(run.steps[f"fail:{tid}"]).get("error", "failed")
    if results or failed:
        await _check_replay(run, by_id, [*results, *failed], keyed)
    pending = [tid for tid in ids if tid not in results and tid not in failed]
    await meter.report(len(results))
    if pending:
        await run.checkpoint()
        tries = {tid: 0 for tid in pending}

        def enqueue(tid: str, client: Any = None) -> Any:
            job_id = task_job_id(run.run_id, tid, run.attempt, 0, tag)
            return engine.queue.enqueue(
                TASK_JOB, job_id, run.run_id, tid, run.attempt, 0, queue=queue, client=client
            )

        async def enqueue_all() -> None:
            # The specs are written before any job is queued: a claim reads its task's spec.
            async with redis.pipeline(transaction=False) as pipe:
                pipe.delete(keys.done(run.run_id))
                specs_json = {tid: _spec_json(run, by_id[tid], meter.share) for tid in pending}
                pipe.hset(
                    keys.tasks(run.run_id),
                    mapping={tid: codec.dumps(spec) for tid, spec in specs_json.items()},
                )
                if not keys.clustered:
                    for tid in pending:
                        await enqueue(tid, pipe)
                await pipe.execute()
            if keys.clustered:  # a cluster pipeline takes no script of the queue's
                await asyncio.gather(*(enqueue(tid) for tid in pending))

        await until_redis(enqueue_all, f"run {run.run_id}: enqueue {group}")
        await _wait(run, by_id, tries, results, failed, meter, queue)
    if failed:
        first = next(tid for tid in ids if tid in failed)
        raise TaskFailed(f"task {first} failed: {failed[first]}")
    out = []
    for tid in ids:
        run.steps.setdefault(f"task:{tid}", codec.dumps(results[tid]))
        try:
            out.append(typed(adapters[tid], results[tid]))
        except ValidationError as exc:
            run.mismatch = ReplayMismatch(
                f"task {tid}: its stored result does not fit the return annotation of activity "
                f"{by_id[tid].activity!r} (code changed under a running run?): "
                f"{describe_invalid(exc)}"
            )
            raise run.mismatch from None
    return out


async def _check_replay(
    run: RunHandle, by_id: dict[str, TaskSpec[Any]], stored: list[str], keyed: bool
) -> None:
    """Results stored for these ids were produced for the same calls, or `ReplayMismatch`."""

    async def read() -> list[bytes | None]:
        found: list[bytes | None] = await run.engine.redis.hmget(  # type: ignore[misc]
            run.engine.keys.tasks(run.run_id), stored
        )
        return found

    raw = await until_redis(read, f"run {run.run_id}: read task specs")
    for tid, spec_raw in zip(stored, raw, strict=True):
        if spec_raw is None:
            continue  # nothing recorded to compare with
        was = codec.loads(spec_raw)
        spec = by_id[tid]
        why = ""
        if was.get("activity") != spec.activity:
            why = f"activity {was.get('activity')!r}, this execution asks for {spec.activity!r}"
        elif not keyed and (
            was.get("args") != codec.loads(codec.dumps(list(spec.args)))
            or (was.get("kwargs") or {}) != codec.loads(codec.dumps(spec.kwargs))
        ):
            why = f"{spec.activity!r} with other arguments than this execution passes"
        if why:
            run.mismatch = ReplayMismatch(
                f"task {tid} was recorded for {why}: the fan-outs ran in another order than in "
                "the earlier attempt (a condition or loop that is not deterministic, or code "
                "changed under a running run); give parallel calls in conditionals and loops a "
                "key= of their own"
            )
            raise run.mismatch


async def _wait(
    run: RunHandle,
    specs: dict[str, TaskSpec[Any]],
    tries: dict[str, int],
    results: dict[str, Any],
    failed: dict[str, str],
    meter: _Meter,
    queue: str,
) -> None:
    engine = run.engine
    keys, redis = engine.keys, engine.redis
    tick = min(1.0, engine.settings.lease_refresh_ms / 1000)
    grace = engine.settings.lease_ttl_ms / 1000
    loop = asyncio.get_running_loop()
    missing_since: dict[str, float] = {}
    what = f"run {run.run_id}: wait for tasks"
    while tries:
        pending = list(tries)
        snapshot = partial(_snapshot, run, pending, tries, queue)
        done, fails, *probes = await until_redis(snapshot, what)
        now = loop.time()
        lost: list[str] = []
        for i, tid in enumerate(pending):
            leased, queued, queued_next = probes[3 * i : 3 * i + 3]
            if done[i] is not None:
                results[tid] = codec.loads(done[i])
                del tries[tid]
            elif fails[i] is not None:
                failed[tid] = codec.loads(fails[i]).get("error", "failed")
                del tries[tid]
            elif queued_next is not None:
                tries[tid] += 1  # its execution scheduled a retry
            elif not leased and queued is None:
                # Its worker died, or Redis was away while the lease ran out and the worker has
                # not renewed it yet. Only a lease missing for a full TTL as seen from here
                # means lost: a live worker renews it as soon as it reaches Redis.
                if now - missing_since.setdefault(tid, now) >= grace:
                    lost.append(tid)
                continue
            missing_since.pop(tid, None)
        await meter.report(len(results))
        for tid in lost:
            del missing_since[tid]
            tries[tid] += 1
            if tries[tid] > specs[tid].retries + _LOST_EXTRA:
                failed[tid] = await _give_up(run, specs[tid], tid, tries[tid])
                del tries[tid]
                continue
            name = specs[tid].name or specs[tid].activity
            limit = specs[tid].retries + _LOST_EXTRA + 1
            await run.publisher.send(
                EventType.TASK_RETRYING,
                retrying_message(name, tries[tid] + 1, limit, "its worker was lost"),
                task=name,
                task_id=tid,
                data={"try": tries[tid], "reason": "worker_lost"},
            )
            await until_redis(
                partial(
                    engine.queue.enqueue,
                    TASK_JOB,
                    task_job_id(run.run_id, tid, run.attempt, tries[tid], keys.run_tag(run.run_id)),
                    run.run_id,
                    tid,
                    run.attempt,
                    tries[tid],
                    queue=queue,
                ),
                what,
            )
        if not tries:
            return
        await until_redis(
            partial(redis.blpop, [keys.done(run.run_id)], timeout=tick),  # type: ignore[arg-type]
            what,
        )
        await asyncio.sleep(0)


async def _snapshot(
    run: RunHandle, pending: list[str], tries: dict[str, int], queue: str
) -> list[Any]:
    """Committed results and failures, then per task: leased, queued, next try queued.

    One script: an atomic snapshot, so a claim (ZREM + lease, one script) between two probes
    cannot make a task look lost. Its keys (the run's steps and task leases, its bucket's queue)
    share the run's slot in a cluster.
    """
    engine = run.engine
    rid, tag = run.run_id, engine.keys.run_tag(run.run_id)
    jobs = [
        (
            task_job_id(rid, tid, run.attempt, tries[tid], tag),
            task_job_id(rid, tid, run.attempt, tries[tid] + 1, tag),
        )
        for tid in pending
    ]
    return await engine.leases.probe_tasks(rid, queue, pending, jobs)


async def _give_up(run: RunHandle, spec: TaskSpec[Any], tid: str, tries: int) -> str:
    """A task whose executions keep dying (say, it crashes its worker) fails for good."""
    error = f"its worker was lost {tries} times"
    name = spec.name or spec.activity
    cmd = run.publisher.command(
        EventType.TASK_FAILED,
        failed_message(name, error),
        task=name,
        task_id=tid,
        data={"error": error, "try": tries},
    )
    steps = run.engine.keys.steps(run.run_id)
    await run.publisher.commit(cmd, steps, f"fail:{tid}", codec.dumps_str({"error": error}))
    return error


def _spec_json(
    run: RunHandle, spec: TaskSpec[Any], share: tuple[float, float] | None
) -> dict[str, Any]:
    return {
        "activity": spec.activity,
        "args": list(spec.args),
        "kwargs": spec.kwargs,
        "name": spec.name or spec.activity,
        "retries": spec.retries,
        "timeout": spec.timeout,
        "span": share,
        "workflow": run.workflow,
        "version": run.version,
    }


class _Meter:
    """The run's progress over a fan-out's span: one event each time the done count grows."""

    def __init__(self, run: RunHandle, span: tuple[float, float] | None, total: int) -> None:
        if span is not None and not 0 <= span[0] <= span[1] <= 100:
            raise ValueError(f"a progress span goes from low to high within 0..100, not {span}")
        self.run = run
        self.span = span
        self.total = total
        self.done = -1

    @property
    def share(self) -> tuple[float, float] | None:
        """What one task is worth, as the span `(start, start + (end - start) / n)`."""
        if self.span is None:
            return None
        start, end = self.span
        return (start, start + (end - start) / self.total)

    async def report(self, done: int) -> None:
        if self.span is None or done <= self.done:
            return
        self.done = done
        start, end = self.span
        await self.run.publisher.send(
            EventType.TASK_PROGRESS,
            f"{done} of {self.total} tasks done",
            progress=start + (end - start) * done / self.total,
            data={"done": done, "total": self.total},
        )
