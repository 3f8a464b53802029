"""Runs that belong to the stream that started them (`/monty/stream`): stopped once nobody has
watched them for a grace period, and after a longest lifetime in any case.

- Starting such a run enters it in `<ns>:stream_runs`, scored by when it counts as orphaned
  (now + a lease time + `TIDINGS_ORPHAN_GRACE_S`), and in `<ns>:stream_runs:ends`, scored by
  now + `TIDINGS_STREAM_RUN_MAX_S`.
- Viewers move the orphan time (`presence.py`): every lease of a viewer of the run, on any
  gateway and through any route (an EventSource reconnecting with `Last-Event-ID`, the
  dashboard), pushes it to the lease's expiry + grace when acquired and at each renewal; a viewer
  leaving brings it forward to now + grace. Other runs are never entered, so those writes
  (`ZADD XX`) leave them alone.
- The sweeper: each gateway tries every `grace / 4` (at most 5 s) to take a lock that lasts as
  long (SET NX PX), so one gateway sweeps at a time. The holder reads only the runs whose time
  has come (ZRANGEBYSCORE up to now, in both sets), makes sure no live lease still holds an
  orphan candidate (one that does is re-scored from its latest lease), and stops the others
  exactly as seed 003's stop does: `Control.signal(run, "stop")`, whose payload says why. The
  run finishes its current iteration and completes. Runs that ended already just leave both
  sets.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.control import Control
from tidings.errors import Conflict, NotFound
from tidings.keys import Keys
from tidings.settings import Settings

from .presence import now_ms

__all__ = ["StreamRuns"]

log = logging.getLogger(__name__)

_BATCH = 100


class StreamRuns:
    """Ownership of stream-started runs, and the sweeper that stops orphaned ones."""

    def __init__(
        self, redis: Redis, keys: Keys, settings: Settings, control: Control, gateway_id: str
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.control = control
        self.gateway_id = gateway_id
        self.grace_ms = int(settings.orphan_grace_s * 1000)
        self.lease_ms = int(settings.viewer_lease_s * 1000)
        self.max_ms = int(settings.stream_run_max_s * 1000)
        self.period = min(5.0, max(0.05, settings.orphan_grace_s / 4))
        self._task: asyncio.Task[None] | None = None

    async def own(self, run_id: str) -> None:
        """`run_id` was started by a stream: it ends when its viewers are gone."""
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.stream_runs, {run_id: now + self.lease_ms + self.grace_ms})
            pipe.zadd(self.keys.stream_run_ends, {run_id: now + self.max_ms})
            await pipe.execute()

    async def sweep(self) -> int:
        """Stop what is due, if this gateway holds the sweep lock; the number of runs stopped."""
        keys = self.keys
        lock_ms = int(self.period * 1000)
        if not await self.redis.set(keys.stream_runs_lock, self.gateway_id, nx=True, px=lock_ms):
            return 0
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(keys.stream_runs, "-inf", now, start=0, num=_BATCH)
            pipe.zrangebyscore(keys.stream_run_ends, "-inf", now, start=0, num=_BATCH)
            idle, old = await pipe.execute()
        stopped = 0
        max_s = self.max_ms / 1000
        for raw in old:
            run_id = raw.decode()
            stopped += await self._stop(run_id, f"ran for its longest, {max_s:g} s")
        done = set(old)
        for raw in idle:
            if raw in done:
                continue
            run_id = raw.decode()
            latest = await self.redis.zrange(keys.run_viewers(run_id), -1, -1, withscores=True)
            if latest and latest[0][1] > now:
                # Still watched (its gateway's next renewal would have said so).
                orphaned = int(latest[0][1]) + self.grace_ms
                await self.redis.zadd(keys.stream_runs, {run_id: orphaned}, xx=True)
                continue
            grace = self.grace_ms / 1000
            stopped += await self._stop(run_id, f"no viewer for {grace:g} s")
        return stopped

    async def _stop(self, run_id: str, why: str) -> int:
        """Stop the run as seed 003's stop does; forget it either way."""
        stopped = 0
        try:
            await self.control.signal(run_id, "stop", {"reason": why})
            stopped = 1
            log.info("stopped run %s: %s", run_id, why)
        except (Conflict, NotFound):
            pass  # ended (or gone) already
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.stream_runs, run_id)
            pipe.zrem(self.keys.stream_run_ends, run_id)
            await pipe.execute()
        return stopped

    # -- lifetime ------------------------------------------------------------------------------

    def start(self) -> None:
        assert self._task is None, "sweeper already started"
        self._task = asyncio.create_task(self._run(), name="tidings-gateway-stream-runs")

    async def close(self, timeout: float = 2.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel("gateway shutting down")
            await asyncio.wait({task}, timeout=timeout)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.sweep()
            except (RedisError, OSError) as exc:
                log.warning("stream runs sweep: redis unreachable (%s)", exc)
            except Exception:
                log.exception("stream runs sweep failed")
