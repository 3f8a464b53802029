"""Schema 1 -> 2: per-workflow-version queues, versions on run records, lease deadlines.

Schema 2 (see `tidings.keys`) changes three things a schema-1 keyspace holds data for:

1. `versions`: every run record gains `version` = "1" (HSETNX: a record that has one keeps it;
   a record that expired meanwhile is not recreated).
2. `queues`: the one arq queue `<ns>:queue` becomes a queue per workflow and version,
   `<ns>:queue:<workflow>:<version>`. Each queued job goes to the queue of its run's workflow at
   the run's version ("1" after step 1), with its score (when it is due) unchanged: run jobs and
   task jobs alike. A job's run is named by its payload (`arq:job:<id>`); a job whose payload
   expired, or whose run is gone, is dropped with its arq keys, as a worker or `tidings prune`
   would. Each page moves in one MULTI (added to its new queues with ZADD NX, so a job already
   there keeps its score; removed from the old one). arq's health-check string of the old queue
   goes too.
3. `leases`: `<ns>:lease_deadlines` gets every unfinished run that holds a lease, running or
   paused (`<ns>:active`, by status), scored by when its lease expires on the Redis clock: now
   plus the lease's PTTL, or now when the lease is gone already (its worker vanished; the run is
   due for recovery). ZADD NX: a deadline entered by an earlier attempt stays.

Catalog keys (schema 2) are rebuilt by workers as they start: nothing to migrate.

A single Redis's only: schema 1 never ran on a cluster, and a cluster keyspace is written at
schema 2 from the start (`tidings.migrate` refuses before any step runs; each step asserts it).
"""

from __future__ import annotations

from collections import Counter

from .events import RunStatus
from .schema import Context, Migration, job_keys, run_of_job

__all__ = ["MIGRATION"]

_PAGE = 500
_VERSION = "1"
# A run with one of these statuses holds a lease (or did, until its worker vanished).
_HELD = frozenset({RunStatus.RUNNING.value.encode(), RunStatus.PAUSED.value.encode()})

# KEYS[1] run record. ARGV: version. Sets it on a record that exists and has none.
_SET_VERSION = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HSETNX', KEYS[1], 'version', ARGV[1])
end
return 0
"""


def _single_redis(ctx: Context) -> None:
    if ctx.keys.clustered:
        raise AssertionError("schema 1 -> 2 migrates a single Redis's keyspace, not a cluster's")


async def versions(ctx: Context) -> tuple[int, str]:
    _single_redis(ctx)
    redis, keys = ctx.redis, ctx.keys
    script = redis.register_script(_SET_VERSION)
    head, tail = keys.run_affixes()
    records: list[str] = []
    async for raw in redis.scan_iter(match=f"{head}*{tail}", count=1000, _type="hash"):
        key = raw.decode()
        rid = keys.run_id_from_key(key)
        if rid is not None and keys.run(rid) == key:
            records.append(key)
    count = 0
    for at in range(0, len(records), _PAGE):
        ctx.alive()
        page = records[at : at + _PAGE]
        async with redis.pipeline(transaction=False) as pipe:
            for key in page:
                if ctx.dry_run:
                    pipe.hexists(key, "version")
                else:
                    await script(keys=[key], args=[_VERSION], client=pipe)
            replies = await pipe.execute()
        count += sum(1 for r in replies if (not r if ctx.dry_run else r))
    detail = f'{count} of {len(records)} run records given version "{_VERSION}"' if count else ""
    return count, detail


async def queues(ctx: Context) -> tuple[int, str]:
    _single_redis(ctx)
    redis, keys = ctx.redis, ctx.keys
    old = keys.schema1_queue
    moved: Counter[str] = Counter()
    dropped = 0
    offset = 0
    while True:
        ctx.alive()
        # Writing, each page leaves the queue, so the next page is again the first.
        page: list[tuple[bytes, float]] = await redis.zrange(
            old, offset, offset + _PAGE - 1, withscores=True
        )
        if not page:
            break
        if ctx.dry_run:
            offset += len(page)
        jobs = [member.decode() for member, _ in page]
        payloads: list[bytes | None] = await redis.mget([job_keys(j)[0] for j in jobs])
        runs = [run_of_job(j, p) for j, p in zip(jobs, payloads, strict=True)]
        async with redis.pipeline(transaction=False) as pipe:
            for rid in runs:
                pipe.hmget(keys.run(rid or "-"), ["workflow", "version"])
            records: list[list[bytes | None]] = await pipe.execute()
        targets: dict[str, dict[str, float]] = {}
        gone: list[str] = []
        for (job, score), payload, rid, (workflow, version) in zip(
            page, payloads, runs, records, strict=True
        ):
            try:
                if payload is None or rid is None or workflow is None:
                    raise LookupError  # its run or its payload is gone
                queue = keys.queue_for(workflow.decode(), (version or _VERSION.encode()).decode())
            except (LookupError, ValueError):  # ValueError: a name no queue can have
                gone.append(job.decode())
                continue
            targets.setdefault(queue, {})[job.decode()] = score
            moved[f"{workflow.decode()}:{(version or _VERSION.encode()).decode()}"] += 1
        dropped += len(gone)
        if ctx.dry_run:
            continue
        async with redis.pipeline(transaction=True) as pipe:
            for queue, members in targets.items():
                pipe.zadd(queue, members, nx=True)  # first in: a resumed move keeps the score
            pipe.zrem(old, *(member for member, _ in page))
            if gone:
                pipe.unlink(*(key for job in gone for key in job_keys(job)))
            await pipe.execute()
    health = await redis.exists(keys.schema1_queue_health)
    if health and not ctx.dry_run:
        await redis.unlink(keys.schema1_queue_health)
    parts = [f"{n} to {keys.ns}:queue:{wv}" for wv, n in sorted(moved.items())]
    if dropped:
        parts.append(f"{dropped} of runs gone dropped")
    count = sum(moved.values()) + dropped
    detail = f"{count} queued jobs moved: {', '.join(parts)}" if count else ""
    return count, detail


async def leases(ctx: Context) -> tuple[int, str]:
    _single_redis(ctx)
    redis, keys = ctx.redis, ctx.keys
    active = [member.decode() async for member, _ in redis.zscan_iter(keys.active, count=_PAGE)]
    count = 0
    for at in range(0, len(active), _PAGE):
        ctx.alive()
        page = active[at : at + _PAGE]
        async with redis.pipeline(transaction=False) as pipe:
            for rid in page:
                pipe.hget(keys.run(rid), "status")
                pipe.pttl(keys.lease(rid))
            replies = await pipe.execute()
        seconds, micros = await redis.time()  # deadlines are on the Redis clock
        at_ms = seconds * 1000 + micros // 1000
        deadlines = {
            rid: at_ms + max(ttl, 0)
            for rid, status, ttl in zip(page, replies[::2], replies[1::2], strict=True)
            if status in _HELD
        }
        count += len(deadlines)
        if deadlines and not ctx.dry_run:
            await redis.zadd(keys.lease_deadlines, deadlines, nx=True)
    detail = f"{count} runs entered in {keys.lease_deadlines}" if count else ""
    return count, detail


MIGRATION = Migration(
    2,
    "queues per workflow and version, versions on run records, lease deadlines",
    (("versions", versions), ("queues", queues), ("leases", leases)),
)
