"""Retention by hand: `tidings prune` removes finished runs now, and whatever was left behind.

Redis expires a finished run by itself: the publish script gives every key of the run the
retention TTL together with its terminal event (`TIDINGS_RETENTION`, `tidings.bus`). Prune is for
the rest:

- finished runs older than a given age (shorter than the retention, or any age when runs are
  kept forever), with every key they own and their history entries;
- index entries (`<ns>:runs`, `<ns>:expiring`, `<ns>:active`) whose run record is gone;
- orphans: per-run keys whose record is gone, and queued arq jobs of runs that are gone;
- a finished run's key without a TTL while its record has one (written after the run ended by
  something that neither the publish script nor `Bus.append` covers) gets the record's TTL.

An unfinished run is never touched, nor are its keys. Everything is found by walking, in pages:
the indexes with ZSCAN, the namespace's per-run keys with SCAN, the queue with ZSCAN; a run is
judged by its record as read in the same page. A run's record is written in the same MULTI as its
index entries and before any other key of it, so "no record" never means "being created".
Deletes are UNLINKs; bytes are each removed key's MEMORY USAGE just before (Redis's estimate).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from arq.constants import in_progress_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from .events import TERMINAL_STATUSES, now_ms
from .jobs import job_key
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
    keys: int = 0  # keys removed in all
    bytes: int = 0  # their MEMORY USAGE

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
    for index in (keys.runs, keys.expiring, keys.active):
        await pruner.walk_index(index)
    await pruner.walk_run_keys()
    await pruner.walk_queue()
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
                pipe.hmget(self.keys.run(rid), ["status", "finished_at"])
            records = await pipe.execute()
        stale: list[str] = []
        old: list[str] = []
        for rid, (status, finished_at) in zip(ids, records, strict=True):
            if status is None:
                stale.append(rid)
            elif status in _FINISHED and self._is_old(finished_at):
                old.append(rid)
        self.report.stale_entries += len(stale)
        self.report.runs += old
        self.pruned.update(old)
        self.gone.update(stale, old)
        await self._remove([key for rid in old for key in self.keys.run_keys(rid)])
        if not self.report.dry_run and (stale or old):
            async with self.redis.pipeline(transaction=False) as pipe:
                for index in (self.keys.runs, self.keys.expiring, self.keys.active):
                    pipe.zrem(index, *stale, *old)
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
                    by_run.setdefault(parts[1], []).append((queue, job_id))
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
