"""The lease loop: renew every lease this worker holds, in one pipeline, every refresh period.

The same pipeline reads each run's signal-list length, so a signal whose doorbell was missed is
still picked up within one period. A refresh that finds the run fenced (another attempt owns
it) or finished aborts the local execution at once: a worker that was frozen (SIGSTOP, a long
GC pause, a partition) and comes back stops before it can do anything else.

While Redis is unreachable the loop keeps trying, every fraction of a second, instead of waiting
out its period (`outage.until_redis`): the moment Redis is back, the lease is renewed. A lease
that lapsed during the outage is simply set again (the refresh script accepts a missing lease as
long as the run's attempt is still ours, i.e. nobody took the run over), and the sweeping
worker leaves a missing lease alone for a full lease TTL before it calls the run lost (see
`sweeper`), so the owner carries on as the same attempt. Each renewal also moves the run's entry
in `<ns>:lease_deadlines` (`Leases.refresh_run`), so sweeps never read a lease that is renewed.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from .context import Engine
from .outage import until_redis

__all__ = ["keep_leases"]

logger = logging.getLogger(__name__)


async def keep_leases(engine: Engine) -> None:
    period = engine.settings.lease_refresh_ms / 1000
    while True:
        await asyncio.sleep(period)
        try:
            await until_redis(partial(refresh_once, engine), "lease refresh")
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("lease refresh failed", exc_info=True)


async def refresh_once(engine: Engine) -> None:
    runs = list(engine.runs.values())
    tasks = list(engine.tasks.values())
    if not runs and not tasks:
        return
    leases, keys = engine.leases, engine.keys
    async with engine.redis.pipeline(transaction=False) as pipe:
        for run in runs:
            await leases.refresh_run(pipe, run.run_id, run.attempt)
            pipe.llen(keys.signals(run.run_id))
        for task in tasks:
            await leases.refresh_task(pipe, task.run_id, task.task_id, task.attempt, task.try_)
        replies = await pipe.execute(raise_on_error=False)
    for i, run in enumerate(runs):
        outcome, length = replies[2 * i], replies[2 * i + 1]
        word = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        if word in ("fenced", "finished", "missing"):
            logger.warning(
                "run %s attempt %d: lease refresh says %s", run.run_id, run.attempt, word
            )
            run.abort("fenced" if word == "fenced" else "finished")
        elif isinstance(length, int) and length > run.signals.read:
            engine.spawn(run.signals.poll(), name=f"signals:{run.run_id}")
    for task, outcome in zip(tasks, replies[2 * len(runs) :], strict=True):
        word = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        if word in ("fenced", "finished", "missing"):
            task.abort("fenced" if word == "fenced" else "finished")
