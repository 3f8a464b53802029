"""Recovery: the sweeper, which gives a dead worker's runs to the pool again.

Every worker sweeps, every `_SWEEP_S`, one window of at most `_BATCH` active runs (the next
window each time, wrapping around: any number of active runs is covered at a bounded cost per
sweep): one ZRANGE, one pipeline of GETs on their leases, and a look at the status of those
without one. A run that should have a holder but has no lease (running or paused; or queued
while its job is gone), and has had none for a full lease TTL as this sweeper saw it, is
reclaimed by `Leases.reclaim`, which bumps the attempt atomically; the sweeper that wins then
publishes `worker_lost` under the new attempt (status back to queued) and enqueues the new
attempt's job. Only then may a worker start it, so `worker_lost` always precedes the next
`workflow_started`. If the sweeper dies in between, the placeholder lease expires and the next
sweep reclaims the run again.

Why wait a TTL more: a lease's TTL runs in Redis, by the clock, also while its holder cannot
reach Redis. When Redis restarts (or the network blips) for longer than the TTL, every lease has
lapsed the moment Redis is back, although no worker died; each holder renews its lease as soon
as it reconnects (`heartbeat`), well within a TTL, and must not find its run given away first.
The TTL counts from the first sweep that finds the lease missing, and starts over after a sweep
that failed (this sweeper was cut off too). The cost is that a frozen worker (SIGSTOP, a
partition of that worker alone) loses its runs up to two TTLs after its last renewal instead of
one; a dead one is noticed sooner anyway (below). A sweeper never reclaims a run its own worker
holds.

Fast path: a run whose lease is still live but whose holder has no Redis connection left (see
`liveness`) is reclaimed the same way, fenced on the exact lease value, without waiting for the
TTL. After its own reconnection the sweeper gives that signal no weight until live workers have
had time to reconnect too. Hand-back (SIGTERM, `handback`) is the same move made by the holder
itself, at once, for all its runs.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tidings.jobs import DEFAULT_VERSION, run_job_id

from .context import Engine
from .handback import requeue
from .liveness import Liveness
from .outage import OUTAGE_ERRORS, OutageNotice

__all__ = ["Sweeper", "sweep"]

logger = logging.getLogger(__name__)

_SWEEP_S = 0.25
_BATCH = 1000
_HELD = (b"running", b"paused")


class Sweeper:
    """One worker's sweeping, and what it remembers between sweeps: since when it has seen each
    unleased run without a lease (see the module docstring), and where the next window starts."""

    def __init__(
        self, engine: Engine, liveness: Liveness | None = None, *, grace_s: float | None = None
    ) -> None:
        self.engine = engine
        self.liveness = liveness
        self.grace_s = engine.settings.lease_ttl_ms / 1000 if grace_s is None else grace_s
        self._offset = 0
        self._unleased_since: dict[str, float] = {}
        self._seen: set[str] = set()  # runs looked at during the current pass

    async def sweep_window(self) -> int:
        """Sweep the next window of active runs; returns how many were re-enqueued.

        Ranks shift as runs finish, so a pass may skip a run; the next pass sees it.
        """
        engine = self.engine
        offset = self._offset
        ids = [
            rid.decode()
            for rid in await engine.redis.zrange(engine.keys.active, offset, offset + _BATCH - 1)
        ]
        self._offset = offset + len(ids) if len(ids) == _BATCH else 0
        self._seen.update(ids)
        if self._offset == 0:  # a pass is over: forget the runs it did not meet (finished)
            for rid in set(self._unleased_since) - self._seen:
                del self._unleased_since[rid]
            self._seen.clear()
        return await self._sweep(ids)

    def forget(self) -> None:
        """This sweeper could not watch for a while: what it saw missing may have come back."""
        self._unleased_since.clear()

    async def sweep_pass(self) -> int:
        """Every active run once, from the start; returns how many were re-enqueued."""
        self._offset = 0
        recovered = await self.sweep_window()
        while self._offset:
            recovered += await self.sweep_window()
        return recovered

    async def _sweep(self, ids: list[str]) -> int:
        engine = self.engine
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
        for rid in held:
            self._unleased_since.pop(rid, None)
        # (run id, attempt, lease value it must still hold or None, why)
        orphans: list[tuple[str, int, str | None, str]] = []
        if self.liveness is not None:
            orphans += await _held_by_the_gone(engine, self.liveness, held)
        if unleased:
            orphans += await self._lapsed(unleased)
        if not orphans:
            return 0
        async with engine.redis.pipeline(transaction=False) as pipe:
            for rid, _, _, _ in orphans:
                pipe.hmget(keys.run(rid), ["workflow", "version"])
            routes = await pipe.execute()
        queues = [
            keys.queue_for(wf.decode(), (v or DEFAULT_VERSION.encode()).decode()) if wf else ""
            for wf, v in routes
        ]
        async with engine.redis.pipeline(transaction=False) as pipe:
            for (rid, attempt, value, _), queue in zip(orphans, queues, strict=True):
                job_id = run_job_id(rid, attempt)
                await engine.leases.reclaim_in(pipe, rid, attempt, job_id, queue, held_as=value)
            outcomes = await pipe.execute()
        recovered = 0
        for (rid, attempt, _, why), outcome, queue in zip(orphans, outcomes, queues, strict=True):
            reclaimed = engine.leases.reclaimed(outcome)
            if reclaimed is not None:
                self._unleased_since.pop(rid, None)
                new, previous = reclaimed
                message = f"worker {previous or '?'} lost; attempt {new} queued"
                data = {"previous_attempt": attempt, "worker": previous, "reason": why}
                if await requeue(engine, rid, new, message, data, queue):
                    recovered += 1
        return recovered

    async def _lapsed(self, unleased: list[str]) -> list[tuple[str, int, str | None, str]]:
        """The unleased runs that should have a holder and have had none for `grace_s`."""
        engine = self.engine
        async with engine.redis.pipeline(transaction=False) as pipe:
            for rid in unleased:
                pipe.hmget(engine.keys.run(rid), ["attempt", "status"])
            replies = await pipe.execute()
        now = time.monotonic()
        deleted: list[str] = []
        lapsed: list[tuple[str, int, str | None, str]] = []
        for rid, (raw_attempt, status) in zip(unleased, replies, strict=True):
            attempt = int(raw_attempt or 1)
            if status is None:
                deleted.append(rid)
            elif status not in _HELD and status != b"queued":
                self._unleased_since.pop(rid, None)  # finishing: no holder needed
            elif (mine := engine.runs.get(rid)) is not None and mine.attempt == attempt:
                self._unleased_since.pop(rid, None)  # ours: our lease loop renews it
            elif now - self._unleased_since.setdefault(rid, now) >= self.grace_s:
                lapsed.append((rid, attempt, None, "lease_expired"))
        if deleted:
            await engine.redis.zrem(engine.keys.active, *deleted)
        return lapsed


async def sweep(engine: Engine) -> None:
    sweeper = Sweeper(engine, Liveness(engine.redis, engine.name))
    outage = OutageNotice("sweeper")
    while True:
        await asyncio.sleep(_SWEEP_S)
        try:
            await sweeper.sweep_window()
        except asyncio.CancelledError:
            raise
        except OUTAGE_ERRORS as exc:
            sweeper.forget()
            outage.failed(exc)
        except Exception:
            logger.warning("sweep failed", exc_info=True)
        else:
            outage.ok()


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
