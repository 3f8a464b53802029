"""Retention by hand: `tidings prune` removes finished runs now, and whatever was left behind.

Redis expires a finished run by itself: the publish script gives every key of the run the
retention TTL together with its terminal event (`TIDINGS_RETENTION`, `tidings.bus`). Prune is for
the rest:

- finished runs older than a given age (shorter than the retention, or any age when runs are
  kept forever), with every key they own and their history entries;
- index entries (`<ns>:runs`, `<ns>:expiring`, `<ns>:active`) whose run record is gone;
- orphans: per-run keys whose record is gone, and queued arq jobs of runs that are gone;
- a finished run's key without a TTL while its record has one (written after the run ended by
  something that neither the publish script nor `Bus.append` covers) gets the record's TTL;
- catalog definitions (`<ns>:catalog`, `tidings.catalog`) of old versions: a `<name>:<version>`
  goes when no live worker serves it, it is not the newest first-published version of its
  workflow that has a definition (the version the catalog calls current when none is served),
  its queue is empty and no unfinished run (as read while walking the indexes) records it. The
  catalog then names the same current version as before. `<ns>:catalog:versions` keeps every
  entry: one per version is small, and a restarted old worker must not become current again by
  looking newly published.

Catalog races. The served and empty-queue tests and the HDEL are one script, so a worker that
publishes the version at that moment (HSET and its serving entry in one MULTI) either comes
first and keeps it, or comes after and writes it back; a worker whose entries lapsed writes it
back at its next renewal (HSETNX, every 5 s). A new run never gets a pruned version (it is not
current), and a run of it in progress does not need the definition: workers run their own code
and read no definition, and the gateway reads it only to list workflows and to validate and
route a new run (by the current version); status, signals, cancel and history never look it up.

An unfinished run is never touched, nor are its keys. Everything is found by walking, in pages:
the indexes of every bucket with ZSCAN, the namespace's per-run keys with SCAN (a cluster client
scans every primary), the queues with ZSCAN; a run is judged by its record as read in the same
page. A run's record is written by the same script as its index entries and before any other key
of it, so "no record" never means "being created". Deletes are UNLINKs (a cluster client splits
them by slot); bytes are each removed key's MEMORY USAGE just before (Redis's estimate).

Cluster. Every write here is single-slot or a plain command: a run's index entries are removed
from its own bucket's indexes. The catalog's script covers the catalog's slot only: a version's
queues (one per bucket) are read empty first, then the script re-checks serving and drops the
definition. A run enqueued at that version in between was unfinished when the indexes were
walked (a version is never current when pruned, so no new run gets it), and a run in progress
needs no definition (above); on a single Redis the queue is still checked inside the script.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from arq.constants import in_progress_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from .events import TERMINAL_STATUSES, now_ms
from .jobs import DEFAULT_VERSION, job_key
from .keys import Keys

__all__ = ["PruneReport", "prune"]

_PAGE = 500
_FINISHED = frozenset(status.value.encode() for status in TERMINAL_STATUSES)


@dataclass(slots=True)
class PruneReport:
    """What a prune removed (or, with `dry_run`, would remove)."""

    dry_run: bool
    # Finished before this moment (ISO 8601) counts as old; None: no run was old enough to go.
    cutoff: str | None
    runs: list[str] = field(default_factory=list)  # finished runs removed
    stale_entries: int = 0  # runs named in an index whose record was gone
    orphan_keys: int = 0  # per-run keys whose record was gone
    jobs: int = 0  # queued jobs of runs that are gone
    ttl_fixed: int = 0  # keys of finished runs given their record's TTL
    # Catalog definitions (`<name>:<version>`) of old versions nothing serves, queues or runs.
    definitions: list[str] = field(default_factory=list)
    keys: int = 0  # keys removed in all
    bytes: int = 0  # their MEMORY USAGE, plus the removed definitions' lengths

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def prune(
    redis: Redis, keys: Keys, *, older_than_s: int | None, dry_run: bool = False
) -> PruneReport:
    """Remove finished runs that finished more than `older_than_s` ago (None: none by age)
    and everything left behind; see the module's docstring."""
    cutoff_ms = None if older_than_s is None else now_ms() - older_than_s * 1000
    report = PruneReport(dry_run, None if cutoff_ms is None else _iso(cutoff_ms))
    pruner = _Pruner(redis, keys, cutoff_ms, report)
    for bucket in keys.bucket_ids:
        for index in (keys.runs_in(bucket), keys.expiring_in(bucket), keys.active_in(bucket)):
            await pruner.walk_index(index)
    await pruner.walk_run_keys()
    await pruner.walk_queue()
    await pruner.prune_catalog()
    return report


class _Pruner:
    def __init__(self, redis: Redis, keys: Keys, cutoff_ms: int | None, report: PruneReport):
        self.redis = redis
        self.keys = keys
        self.cutoff_ms = cutoff_ms
        self.report = report
        self.seen: set[str] = set()  # run ids judged already (they sit in several indexes)
        self.pruned: set[str] = set()  # finished runs this pass removes
        self.gone: set[str] = set()  # runs without a record now, pruned ones included
        self.unfinished: set[str] = set()  # `<workflow>:<version>` of every unfinished run seen

    # -- the indexes ---------------------------------------------------------------------------

    async def walk_index(self, index: str) -> None:
        page: list[str] = []
        async for member, _ in self.redis.zscan_iter(index, count=_PAGE):
            rid = member.decode()
            if rid not in self.seen:
                self.seen.add(rid)
                page.append(rid)
            if len(page) >= _PAGE:
                await self._judge(page)
                page = []
        if page:
            await self._judge(page)

    async def _judge(self, ids: list[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                pipe.hmget(self.keys.run(rid), ["status", "finished_at", "workflow", "version"])
            records = await pipe.execute()
        stale: list[str] = []
        old: list[str] = []
        for rid, (status, finished_at, workflow, version) in zip(ids, records, strict=True):
            if status is None:
                stale.append(rid)
            elif status not in _FINISHED:
                self.unfinished.add(_version_of(workflow, version))
            elif self._is_old(finished_at):
                old.append(rid)
        self.report.stale_entries += len(stale)
        self.report.runs += old
        self.pruned.update(old)
        self.gone.update(stale, old)
        await self._remove([key for rid in old for key in self.keys.run_keys(rid)])
        if not self.report.dry_run and (stale or old):
            by_bucket: dict[int, list[str]] = {}
            for rid in (*stale, *old):
                by_bucket.setdefault(self.keys.bucket(rid), []).append(rid)
            async with self.redis.pipeline(transaction=False) as pipe:
                for b, ids in by_bucket.items():
                    for index in (
                        self.keys.runs_in(b),
                        self.keys.expiring_in(b),
                        self.keys.active_in(b),
                    ):
                        pipe.zrem(index, *ids)
                await pipe.execute()

    def _is_old(self, finished_at: bytes | None) -> bool:
        if self.cutoff_ms is None:
            return False
        try:
            finished = datetime.fromisoformat((finished_at or b"").decode())
        except ValueError:
            return True  # a finished run that does not say when: as old as can be
        return finished.timestamp() * 1000 <= self.cutoff_ms

    # -- per-run keys ---------------------------------------------------------------------------

    async def walk_run_keys(self) -> None:
        by_run: dict[str, list[str]] = {}
        async for raw in self.redis.scan_iter(match=self.keys.run_key_pattern(), count=1000):
            key = raw.decode()
            rid = self.keys.run_id_from_key(key)
            if rid is not None:
                by_run.setdefault(rid, []).append(key)
            if len(by_run) >= _PAGE:
                await self._check_keys(by_run)
                by_run = {}
        if by_run:
            await self._check_keys(by_run)

    async def _check_keys(self, by_run: dict[str, list[str]]) -> None:
        runs = list(by_run)
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in runs:
                pipe.pexpiretime(self.keys.run(rid))  # -2 no record, -1 none, else when (ms)
                for key in by_run[rid]:
                    pipe.pttl(key)
            replies = iter(await pipe.execute())
        record_expiry: dict[str, int] = {}
        key_ttls: dict[str, list[int]] = {}
        for rid in runs:
            record_expiry[rid] = next(replies)
            key_ttls[rid] = [next(replies) for _ in by_run[rid]]
        # A run with a record but no index entry is judged like the indexed ones.
        unseen = [rid for rid in runs if record_expiry[rid] != -2 and rid not in self.seen]
        self.seen.update(unseen)
        if unseen:
            await self._judge(unseen)
        orphans: list[str] = []
        to_fix: list[tuple[str, int]] = []
        for rid in runs:
            if rid in self.pruned:  # removed (or, dry, would be) by this pass already
                continue
            record_at, ttls = record_expiry[rid], zip(by_run[rid], key_ttls[rid], strict=True)
            if record_at == -2:
                self.gone.add(rid)
                orphans += [key for key, ttl in ttls if ttl != -2]
            elif record_at > 0:  # the same moment as the record, not the same length
                to_fix += [(key, record_at) for key, ttl in ttls if ttl == -1]
        self.report.orphan_keys += await self._remove(orphans)
        self.report.ttl_fixed += len(to_fix)
        if to_fix and not self.report.dry_run:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, when in to_fix:
                    pipe.pexpireat(key, when)
                await pipe.execute()

    # -- the queue -----------------------------------------------------------------------------

    async def walk_queue(self) -> None:
        by_run: dict[str, list[tuple[str, str]]] = {}  # run id -> (queue, job id)
        queues = [
            key.decode()
            async for key in self.redis.scan_iter(match=self.keys.queue_pattern(), _type="zset")
        ]
        for queue in queues:
            async for member, _ in self.redis.zscan_iter(queue, count=_PAGE):
                job_id = member.decode()
                parts = job_id.split(":")
                if len(parts) >= 3:  # run:{ID}:{attempt} or task:{ID}:{TID}:{attempt}.{try}
                    rid = parts[1].rpartition("}")[2]  # after the bucket's tag, if any
                    by_run.setdefault(rid, []).append((queue, job_id))
        runs = [rid for rid in by_run if rid not in self.gone]
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in runs:
                pipe.exists(self.keys.run(rid))
            present = await pipe.execute()
        self.gone.update(rid for rid, there in zip(runs, present, strict=True) if not there)
        jobs = [job for rid, ids in by_run.items() if rid in self.gone for job in ids]
        self.report.jobs += len(jobs)
        await self._remove(_job_keys([job_id for _, job_id in jobs]))
        if jobs and not self.report.dry_run:
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue, job_id in jobs:
                    pipe.zrem(queue, job_id)
                await pipe.execute()

    # -- the catalog ---------------------------------------------------------------------------

    async def prune_catalog(self) -> None:
        now, fields, published, serving = await self.redis.register_script(_READ_CATALOG)(
            keys=[self.keys.catalog, self.keys.catalog_versions, self.keys.catalog_serving]
        )
        first = {
            m.decode(): int(float(s)) for m, s in zip(published[::2], published[1::2], strict=True)
        }
        live = {
            member.decode().partition(" ")[0]
            for member, ends in zip(serving[::2], serving[1::2], strict=True)
            if float(ends) >= now
        }
        by_name: dict[str, list[tuple[str, str]]] = {}  # name -> (field, version)
        for raw in fields:
            key = raw.decode()
            name, _, version = key.rpartition(":")
            if name:
                by_name.setdefault(name, []).append((key, version))
        candidates: list[tuple[str, str]] = []  # (field, its queue)
        for name, versions in by_name.items():
            newest = max(versions, key=lambda fv: (first.get(fv[0], 0), fv[1]))[0]
            for key, version in versions:
                if key == newest or key in live or key in self.unfinished:
                    continue
                try:
                    candidates.append((key, self.keys.queue_for(name, version)))
                except ValueError:
                    continue  # not written by this code (it names no queue): left alone
        for start in range(0, len(candidates), _PAGE):
            await self._drop_definitions(candidates[start : start + _PAGE], now)

    async def _drop_definitions(self, batch: list[tuple[str, str]], now: int) -> None:
        """Drop the definitions of `batch` (field, its version's queue as `queue_for` names it)
        whose queues are empty and that nothing serves (module docstring, "Catalog races" and
        "Cluster")."""
        queues = [self._queues(key, queue) for key, queue in batch]
        async with self.redis.pipeline(transaction=False) as pipe:
            for (key, _), of_key in zip(batch, queues, strict=True):
                for queue in of_key:
                    pipe.zcard(queue)
                pipe.hstrlen(self.keys.catalog, key)
            replies = iter(await pipe.execute())
        empty: list[tuple[str, str, int]] = []  # field, its queue, its length
        for (key, queue), of_key in zip(batch, queues, strict=True):
            queued = sum([next(replies) for _ in of_key])
            size = int(next(replies))
            if not queued:
                empty.append((key, queue, size))
        if self.report.dry_run or not empty:
            gone = [(key, size) for key, _, size in empty]
        else:
            # A single Redis checks the queue again inside the script.
            queue_keys = [] if self.keys.clustered else [queue for _, queue, _ in empty]
            reply = await self.redis.register_script(_DROP_DEFINITIONS)(
                keys=[self.keys.catalog, self.keys.catalog_serving, *queue_keys],
                args=[now, *(key for key, _, _ in empty)],
            )
            gone = [(reply[i].decode(), int(reply[i + 1])) for i in range(0, len(reply), 2)]
        self.report.definitions += [key for key, _ in gone]
        self.report.bytes += sum(size for _, size in gone)

    def _queues(self, key: str, queue: str) -> list[str]:
        """Every queue of the version `key` names: `queue` itself on a single Redis, one per
        bucket in a cluster."""
        if not self.keys.clustered:
            return [queue]
        name, _, version = key.rpartition(":")
        return self.keys.queues_for(name, version)

    # -- removing ------------------------------------------------------------------------------

    async def _remove(self, candidates: list[str]) -> int:
        """UNLINK those of `candidates` that exist (not in a dry run); returns how many exist,
        and counts them and their bytes in the report."""
        if not candidates:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in candidates:
                pipe.memory_usage(key)
            sizes = await pipe.execute()
        present = [(key, size) for key, size in zip(candidates, sizes, strict=True) if size]
        self.report.keys += len(present)
        self.report.bytes += sum(size for _, size in present)
        if present and not self.report.dry_run:
            await self.redis.unlink(*(key for key, _ in present))
        return len(present)


# KEYS: the catalog, its versions and serving zsets (one slot). Returns now (ms, Redis's clock),
# the catalog's fields, and the two zsets with their scores (flat), from one moment.
_READ_CATALOG = """
local t = redis.call('TIME')
return {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), redis.call('HKEYS', KEYS[1]),
        redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'),
        redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')}
"""
# KEYS[1] the catalog, KEYS[2] its serving zset, KEYS[3..] the candidates' queues (a single
# Redis's; none in a cluster, where they were read empty just before). ARGV[1] now (ms, Redis's
# clock), ARGV[2..] the candidates (`<name>:<version>`) in their queues' order.
# Returns field, length, field, length... of the definitions removed.
_DROP_DEFINITIONS = """
local live = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], '+inf')) do
  live[string.match(member, '^[^ ]*')] = true
end
local gone = {}
for i = 2, #ARGV do
  local key = ARGV[i]
  if not live[key] and (not KEYS[i + 1] or redis.call('ZCARD', KEYS[i + 1]) == 0) then
    local size = redis.call('HSTRLEN', KEYS[1], key)
    if redis.call('HDEL', KEYS[1], key) == 1 then
      table.insert(gone, key)
      table.insert(gone, size)
    end
  end
end
return gone
"""


def _version_of(workflow: bytes | None, version: bytes | None) -> str:
    """`<workflow>:<version>` from a run record's raw fields (no version: `DEFAULT_VERSION`)."""
    return f"{(workflow or b'').decode()}:{(version or b'').decode() or DEFAULT_VERSION}"


def _job_keys(job_ids: Iterable[str]) -> list[str]:
    return [
        key
        for job_id in job_ids
        for key in (job_key(job_id), in_progress_key_prefix + job_id, retry_key_prefix + job_id)
    ]


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )
