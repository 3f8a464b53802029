"""Recovery: the sweeper, which gives a dead worker's runs to the pool again, at a cost that does
not grow with the number of active runs.

One sweep at a time. Every `_SWEEP_S` each worker asks for the sweep turn (`<ns>:lock:sweep`, a
lock of `_LEAD_MS` that its holder renews at each turn); only the holder sweeps, so the pool sweeps
as often as one worker would. A worker that gains the turn starts with no memory (below); one that
loses it, or is cut off from Redis, forgets what it saw. A holder that dies loses the turn when
the lock lapses and the next worker to ask takes over.

What a sweep reads: `<ns>:lease_deadlines` holds run id → when its lease lapses (Redis's clock),
written by every script that grants or renews a run lease (`leases`). A sweep reads only the
entries that fell due, at most `_BATCH`, oldest first (one script that also reads Redis's
clock), then one pipeline of their lease, its TTL and the run's status. For each:
- the run ended, or its record is gone: the entry is dropped;
- its lease is live (renewed meanwhile): nothing to do (the entry follows the lease's TTL);
- its own worker holds it: left to our lease loop;
- queued with its job on its queue: looked at again in `_QUEUED_RECHECK_S`;
- otherwise it should have a holder and has none (running or paused; or queued while its job is
  gone). Once it has had none for a full lease TTL as this sweeper saw it, it is reclaimed by
  `Leases.reclaim`, which bumps the attempt atomically; the sweeper that wins then publishes
  `worker_lost` under the new attempt (status back to queued) and enqueues the new attempt's job.
  Only then may a worker start it, so `worker_lost` always precedes the next `workflow_started`.
  If the sweeper dies in between, the placeholder lease (which has its deadline too) lapses and
  a later sweep reclaims the run again.
Runs that never had an entry (a queued run whose job vanished before any worker took it, runs
written before deadlines existed) are found by the audit: every `_AUDIT_S` the sweeper reads one
window of `<ns>:active` (the next one each time, wrapping around) and gives each run without an
entry one that is due at once (ZMSCORE, then ZADD NX: two commands per window).

Why wait a TTL more: a lease's TTL runs in Redis, by the clock, also while its holder cannot
reach Redis. When Redis restarts (or the network blips) for longer than the TTL, every lease has
lapsed the moment Redis is back, although no worker died; each holder renews its lease as soon
as it reconnects (`heartbeat`), well within a TTL, and must not find its run given away first.
The TTL counts from the first sweep that finds the lease missing; it starts over when the entry
was renewed since (its deadline moved), after a sweep that failed (this sweeper was cut off too)
and when the turn changes hands. The cost is that a frozen worker (SIGSTOP, a partition of that
worker alone) loses its runs up to two TTLs after its last renewal instead of one; a dead one is
noticed sooner anyway (below). A sweeper never reclaims a run its own worker holds.

Fast path: a worker killed outright loses its Redis connections at once. Workers register in
`<ns>:workers` (`doorbell`); every `_LIVENESS_S` (every sweep while one is missing) the sweeper
asks CLIENT LIST whether each registered worker still has a connection (`liveness`: only after a
grace, and not in the first moments after an outage). The runs of one that is gone are found by
reading the leases of the runs in `<ns>:lease_deadlines` (once per worker lost, not per sweep),
and reclaimed the same way, fenced on the exact lease value, without waiting for the TTL; a
worker left holding nothing is dropped from the registry. Hand-back (SIGTERM, `handback`) is the
same move made by the holder itself, at once, for all its runs.

Buckets: the indexes above exist once per bucket (`Keys.lease_deadlines_in`, `active_in`; one
on a single Redis, one per bucket in a cluster, each in its bucket's slot with the runs it
indexes, so the lease scripts stay on one slot). A sweep reads the due entries of every bucket
(a batch each, one `_DUE` script per bucket, each on its node's clock), an audit one window of
every bucket's `active`. The turn's lock and the registry of workers are namespace-global keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from tidings.jobs import queue_of_fields, run_job_id
from tidings.keys import Keys

from .context import Engine
from .handback import requeue
from .liveness import Liveness
from .outage import OUTAGE_ERRORS, OutageNotice

__all__ = ["Sweeper", "sweep"]

logger = logging.getLogger(__name__)

_SWEEP_S = 0.25
_LEAD_MS = 750  # the sweep turn's lock; its holder renews it every _SWEEP_S
_BATCH = 1000
_AUDIT_S = 1.0
_LIVENESS_S = 0.5
_QUEUED_RECHECK_S = 5.0
_HELD = (b"running", b"paused")
_ENDED = (b"completed", b"failed", b"cancelled")

# KEYS: lock. ARGV: worker, ttl ms. 1: the turn was ours and is renewed; 2: taken now; 0: another's.
_TURN = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""
# KEYS: lock. ARGV: worker. Give the turn up if it is ours.
_LEAVE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lease deadlines. ARGV: how many. Returns {now ms (Redis clock), id, score, id, score, …}
# for the entries due now, oldest first.
_DUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[1])
table.insert(due, 1, string.format('%d', now))
return due
"""

Orphan = tuple[str, int, str | None, str, str]  # run id, attempt, lease it must hold, why, queue


class Sweeper:
    """One worker's sweeping, and what it remembers between sweeps: since when it has seen each
    due run without a lease, and at which deadline (see the module docstring); where the next
    audit window starts."""

    def __init__(
        self, engine: Engine, liveness: Liveness | None = None, *, grace_s: float | None = None
    ) -> None:
        self.engine = engine
        self.liveness = liveness
        self.grace_s = engine.settings.lease_ttl_ms / 1000 if grace_s is None else grace_s
        self._audit_offsets = [0] * len(engine.keys.bucket_ids)  # per bucket
        self._last_due = 0  # the most entries the last sweep found due in one bucket
        self._unleased_since: dict[str, tuple[float, float]] = {}  # run → (first seen, deadline)
        redis = engine.redis
        self._turn = redis.register_script(_TURN)
        self._leave = redis.register_script(_LEAVE)
        self._due = redis.register_script(_DUE)

    def forget(self) -> None:
        """This sweeper could not watch for a while: what it saw missing may have come back."""
        self._unleased_since.clear()
        if self.liveness is not None:
            self.liveness.forget()

    async def take_turn(self) -> int:
        """0: another worker sweeps now; 1: we still do; 2: we do from now on."""
        keys = self.engine.keys
        return int(await self._turn(keys=[keys.sweep_lock], args=[self.engine.name, _LEAD_MS]))

    async def leave_turn(self) -> None:
        await self._leave(keys=[self.engine.keys.sweep_lock], args=[self.engine.name])

    async def sweep_pass(self) -> int:
        """Audit every active run, then sweep until no due entry is left to act on; returns how
        many runs were re-enqueued (what a test or a tool calls; the loop goes step by step)."""
        self._audit_offsets = [0] * len(self._audit_offsets)
        await self.audit()
        while any(self._audit_offsets):
            await self.audit()
        recovered = await self.sweep_due()
        for _ in range(1000):  # more may be due than one batch: on until a batch is not full
            if self._last_due < _BATCH:
                break
            recovered += await self.sweep_due()
        return recovered

    async def audit(self) -> None:
        """Give the runs of the next window of each bucket's `<ns>:active` without a deadline
        one due now (the entry goes to the deadlines of the run's own bucket)."""
        redis, keys = self.engine.redis, self.engine.keys
        buckets = list(keys.bucket_ids)
        async with redis.pipeline(transaction=False) as pipe:
            for b in buckets:
                offset = self._audit_offsets[b]
                pipe.zrange(keys.active_in(b), offset, offset + _BATCH - 1)
            windows: list[Any] = await pipe.execute()
        for b, ids in zip(buckets, windows, strict=True):
            self._audit_offsets[b] = self._audit_offsets[b] + len(ids) if len(ids) == _BATCH else 0
        seen = [(b, ids) for b, ids in zip(buckets, windows, strict=True) if ids]
        if not seen:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for b, ids in seen:
                pipe.zmscore(keys.lease_deadlines_in(b), ids)
            scores = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for (b, ids), found in zip(seen, scores, strict=True):
                missing = {rid: 0 for rid, score in zip(ids, found, strict=True) if score is None}
                if missing:
                    pipe.zadd(keys.lease_deadlines_in(b), missing, nx=True)
            await pipe.execute()

    async def _read_due(self) -> tuple[dict[str, float], dict[int, int]]:
        """The due entries of every bucket (at most `_BATCH` each): run id → deadline, and each
        bucket's now (ms, its node's clock). Forgets the runs not due any more (renewed)."""
        keys = self.engine.keys
        buckets = list(keys.bucket_ids)
        replies = await asyncio.gather(
            *(self._due(keys=[keys.lease_deadlines_in(b)], args=[_BATCH]) for b in buckets)
        )
        due: dict[str, float] = {}  # run id → deadline
        now_of: dict[int, int] = {}
        complete: set[int] = set()
        for b, reply in zip(buckets, replies, strict=True):
            now_of[b] = int(reply[0])
            found = {reply[i].decode(): float(reply[i + 1]) for i in range(1, len(reply), 2)}
            if len(found) < _BATCH:
                complete.add(b)
            due.update(found)
        self._last_due = max((len(r) // 2 for r in replies), default=0)
        for rid in set(self._unleased_since) - set(due):
            if keys.bucket(rid) in complete:  # every due entry of its bucket is here
                del self._unleased_since[rid]
        return due, now_of

    async def sweep_due(self) -> int:
        """Look at the due entries (at most `_BATCH` per bucket); returns how many runs were
        re-enqueued."""
        engine, keys = self.engine, self.engine.keys
        due, now_of = await self._read_due()
        if not due:
            return 0
        ids = list(due)
        async with engine.redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                pipe.get(keys.lease(rid))
                pipe.pttl(keys.lease(rid))
                pipe.hmget(keys.run(rid), ["attempt", "status", "workflow", "version"])
            replies = await pipe.execute()
        drop: list[str] = []
        live: dict[str, int] = {}
        unleased: list[tuple[str, int, bytes, str]] = []  # run id, attempt, status, queue
        for i, rid in enumerate(ids):
            lease, pttl, (raw_attempt, status, workflow, version) = replies[3 * i : 3 * i + 3]
            attempt = int(raw_attempt or 1)
            if status is None or status in _ENDED or not workflow:
                drop.append(rid)
            elif lease is not None:
                self._unleased_since.pop(rid, None)
                if pttl > 0:
                    live[rid] = now_of[keys.bucket(rid)] + pttl
            elif (mine := engine.runs.get(rid)) is not None and mine.attempt == attempt:
                self._unleased_since.pop(rid, None)  # ours: our lease loop renews it
            elif (queue := _queue_or_none(keys, rid, workflow, version)) is None:
                drop.append(rid)  # nothing could ever run it: never read it again
            else:
                unleased.append((rid, attempt, status, queue))
        async with engine.redis.pipeline(transaction=False) as pipe:
            for b, rids in _by_bucket(keys, drop).items():
                pipe.zrem(keys.lease_deadlines_in(b), *rids)
                if ended := [rid for rid in rids if rid not in live]:
                    pipe.zrem(keys.active_in(b), *ended)
            for b, rids in _by_bucket(keys, list(live)).items():
                pipe.zadd(keys.lease_deadlines_in(b), {r: live[r] for r in rids}, xx=True, gt=True)
            for rid, attempt, _, queue in unleased:
                pipe.zscore(queue, run_job_id(rid, attempt, keys.run_tag(rid)))
            results = await pipe.execute()
        queued_jobs = results[len(results) - len(unleased) :]
        recheck: dict[str, int] = {}
        orphans: list[Orphan] = []
        now = time.monotonic()
        for (rid, attempt, status, queue), job in zip(unleased, queued_jobs, strict=True):
            if status == b"queued" and job is not None:
                self._unleased_since.pop(rid, None)
                recheck[rid] = now_of[keys.bucket(rid)] + int(_QUEUED_RECHECK_S * 1000)
                continue
            if status not in _HELD and status != b"queued":
                continue
            first, deadline = self._unleased_since.get(rid, (now, due[rid]))
            if deadline != due[rid]:  # renewed since we first saw it missing: start over
                first = now
            self._unleased_since[rid] = (first, due[rid])
            if now - first >= self.grace_s:
                orphans.append((rid, attempt, None, "lease_expired", queue))
        if recheck:
            async with engine.redis.pipeline(transaction=False) as pipe:
                for b, rids in _by_bucket(keys, list(recheck)).items():
                    entries = {r: recheck[r] for r in rids}
                    pipe.zadd(keys.lease_deadlines_in(b), entries, xx=True, gt=True)
                await pipe.execute()
        return await self._reclaim(orphans)

    async def check_liveness(self) -> int:
        """Reclaim the runs of registered workers that have no connection left (see the module
        docstring); returns how many were re-enqueued."""
        engine, keys = self.engine, self.engine.keys
        if self.liveness is None:
            return 0
        names = {name.decode() for name in await engine.redis.hkeys(keys.workers)}  # type: ignore[misc]
        gone = await self.liveness.gone(names - {engine.name})
        if not gone:
            return 0
        held: dict[str, list[Orphan]] = {name: [] for name in gone}
        for bucket in keys.bucket_ids:
            await self._held_by(bucket, held)
        idle = [name for name, runs in held.items() if not runs]
        if idle:
            await engine.redis.hdel(keys.workers, *idle)  # type: ignore[misc]
        return await self._reclaim([orphan for runs in held.values() for orphan in runs])

    async def _held_by(self, bucket: int, held: dict[str, list[Orphan]]) -> None:
        """Add to `held` (worker → its runs) the runs of `bucket` whose lease names one of them."""
        engine, keys = self.engine, self.engine.keys
        deadlines, offset = keys.lease_deadlines_in(bucket), 0
        while ids := await engine.redis.zrange(deadlines, offset, offset + _BATCH - 1):
            offset += len(ids)
            async with engine.redis.pipeline(transaction=False) as pipe:
                for rid in ids:
                    pipe.get(keys.lease(rid.decode()))
                    pipe.hmget(keys.run(rid.decode()), ["workflow", "version"])
                replies = await pipe.execute()
            for i, rid in enumerate(ids):
                lease, (workflow, version) = replies[2 * i], replies[2 * i + 1]
                holder, _, attempt = (lease or b"").decode().rpartition(" ")
                if (
                    holder in held
                    and attempt.isdigit()
                    and workflow
                    and (queue := _queue_or_none(keys, rid.decode(), workflow, version))
                ):
                    value = lease.decode()
                    held[holder].append((rid.decode(), int(attempt), value, "worker_gone", queue))

    async def _reclaim(self, orphans: list[Orphan]) -> int:
        if not orphans:
            return 0
        engine = self.engine
        async with engine.redis.pipeline(transaction=False) as pipe:
            for rid, attempt, value, _, queue in orphans:
                job_id = run_job_id(rid, attempt, engine.keys.run_tag(rid))
                await engine.leases.reclaim_in(pipe, rid, attempt, job_id, queue, held_as=value)
            outcomes = await pipe.execute()
        recovered = 0
        for (rid, attempt, _, why, queue), outcome in zip(orphans, outcomes, strict=True):
            reclaimed = engine.leases.reclaimed(outcome)
            if reclaimed is not None:
                self._unleased_since.pop(rid, None)
                new, previous = reclaimed
                message = f"worker {previous or '?'} lost; attempt {new} queued"
                data: dict[str, Any] = {"previous_attempt": attempt, "worker": previous}
                data["reason"] = why
                if await requeue(engine, rid, new, message, data, queue):
                    recovered += 1
        return recovered


def _queue_or_none(keys: Keys, run_id: str, workflow: bytes, version: bytes | None) -> str | None:
    """The run's queue; None, with a warning, for a record whose workflow or version cannot name
    one (no code of ours writes such a record): one such run must not stall every sweep."""
    try:
        return queue_of_fields(keys, workflow, version, run_id)
    except ValueError as exc:
        logger.warning("run %s cannot be recovered: %s", run_id, exc)
        return None


def _by_bucket(keys: Keys, run_ids: list[str]) -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = {}
    for rid in run_ids:
        grouped.setdefault(keys.bucket(rid), []).append(rid)
    return grouped


async def sweep(engine: Engine) -> None:
    """Take the turn, audit, sweep what fell due, check liveness; until cancelled."""
    sweeper = Sweeper(engine, Liveness(engine.redis, engine.name))
    outage = OutageNotice("sweeper")
    loop = asyncio.get_running_loop()
    leading = False
    next_audit = next_liveness = 0.0
    try:
        while True:
            await asyncio.sleep(_SWEEP_S)
            try:
                turn = await sweeper.take_turn()
                if turn != 1 or not leading:
                    sweeper.forget()  # not ours, or ours anew: nothing seen before counts
                leading = turn != 0
                if leading:
                    now = loop.time()
                    if now >= next_audit:
                        next_audit = now + _AUDIT_S
                        await sweeper.audit()
                    await sweeper.sweep_due()
                    if now >= next_liveness or (sweeper.liveness and sweeper.liveness.suspects):
                        next_liveness = now + _LIVENESS_S
                        await sweeper.check_liveness()
            except asyncio.CancelledError:
                raise
            except OUTAGE_ERRORS as exc:
                sweeper.forget()
                leading = False
                outage.failed(exc)
            except Exception:
                logger.warning("sweep failed", exc_info=True)
            else:
                outage.ok()
    finally:
        if leading:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sweeper.leave_turn(), 0.5)  # the next sweeper need not wait
