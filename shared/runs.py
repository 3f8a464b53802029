"""Run records: the `<ns>:run:{ID}` hash, the `<ns>:runs` history index, lifecycle summaries.

Creating a run is one script over the run's slot: the record (refused when the id is taken),
its entries in its bucket's history and active indexes (`runs_of`, `active_of`), the lifecycle
summary on its bucket's channel (`runs_channel_of`, SPUBLISH in a cluster) and, when asked, its
first job on its bucket's queue with the doorbell (`tidings.jobs.ENQUEUE_FUNCTION`: the job key
carries the bucket's tag). All of it or nothing: Redis at its memory cap refuses the script's
first write (the record), and a run is never left queued without a job.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from . import codec
from .errors import Conflict, NotFound, StorageFull
from .events import RunStatus, RunSummary, now_iso, now_ms
from .jobs import ENQUEUE_FUNCTION, RUN_JOB, enqueue_call, run_job_id
from .keys import SCHEMA_VERSION, Keys, check_run_id
from .publishing import publish_command
from .schema import check_schema

__all__ = ["RunRecord", "RunStore", "ensure_schema"]

# KEYS[1] run hash, KEYS[2] history zset, KEYS[3] active zset (the run's bucket's), then the
# first job's KEYS (job key, queue) when there is one. ARGV[1] publish command, ARGV[2] lifecycle
# channel, ARGV[3] summary JSON, ARGV[4] score (ms), ARGV[5] run id, ARGV[6] n, n field/value
# pairs, then the first job's ARGV (`enqueue_call`). 0 when the id is taken (nothing written).
_CREATE = (
    ENQUEUE_FUNCTION
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], unpack(ARGV, 7, 6 + 2 * n))
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
redis.call(ARGV[1], ARGV[2], ARGV[3])
if #KEYS > 3 then enqueue(4, 7 + 2 * n) end
return 1
"""
)


class RunRecord(BaseModel):
    """The run hash, typed. Missing optional fields are empty strings in Redis, None here."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    workflow: str
    # The workflow's version the run was started for (`@workflow(version=…)`); only a worker
    # serving that version executes it. Records written before versions existed are "1".
    version: str = "1"
    input: Any = None
    status: RunStatus
    progress: float = 0.0
    message: str = ""
    task: str = ""
    seq: int = 0
    attempt: int = 1
    worker: str = ""
    created_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    updated_at: str = ""
    last_event_id: str = ""
    result: Any = None
    error: str = ""
    owner: str = ""  # the client that started it through a gateway (`token:<fingerprint>`, …)

    @classmethod
    def from_hash(cls, run_id: str, raw: dict[bytes, bytes]) -> RunRecord:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        for name in ("input", "result"):
            if fields.get(name):
                fields[name] = codec.loads(fields[name])
        return cls.model_validate({**fields, "run_id": run_id})

    def summary(self) -> RunSummary:
        return RunSummary.model_validate(self.model_dump())


class RunStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._create = redis.register_script(_CREATE)

    async def create(
        self,
        workflow: str,
        input: Any,
        *,
        run_id: str | None = None,
        job_queue: tuple[str, str] | None = None,
        **extra: str,
    ) -> RunRecord:
        """Write a queued run record, index it, announce it, and with `job_queue` (a workflow
        and version) enqueue its first job on that version's queue in the run's bucket. One
        script over the run's slot (module docstring): all or nothing. `Conflict` when the id
        is taken; `StorageFull` when Redis at its memory cap refuses it (nothing written).
        """
        run_id = check_run_id(run_id or str(uuid.uuid4()))
        record, mapping = _new_record(run_id, workflow, input, extra)
        keys = [self.keys.run(run_id), self.keys.runs_of(run_id), self.keys.active_of(run_id)]
        argv: list[Any] = [
            publish_command(self.keys),
            self.keys.runs_channel_of(run_id),
            record.summary().model_dump_json(),
            now_ms(),
            run_id,
            len(mapping),
        ]
        for field, value in mapping.items():
            argv += [field, value]
        if job_queue is not None:
            queue = self.keys.queue_for(*job_queue, self.keys.bucket(run_id))
            job_id = run_job_id(run_id, 1, self.keys.run_tag(run_id))
            job_keys, job_argv = enqueue_call(self.keys, RUN_JOB, job_id, run_id, 1, queue=queue)
            keys += job_keys
            argv += job_argv
        try:
            created = await self._create(keys=keys, args=argv)
        except OutOfMemoryError:
            raise StorageFull("storage is full: Redis refused to record a new run") from None
        if not created:
            raise Conflict(f"run {run_id} already exists")
        return record

    async def get(self, run_id: str) -> RunRecord:
        raw: dict[bytes, bytes] = await self.redis.hgetall(  # type: ignore[misc]
            self.keys.run(check_run_id(run_id))
        )
        if not raw:
            raise NotFound(f"no run {run_id!r}")
        return RunRecord.from_hash(run_id, raw)

    async def exists(self, run_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.run(check_run_id(run_id))))

    async def state(self, run_id: str) -> Any:
        """The run's queryable state snapshot (None before the workflow sets any)."""
        raw = await self.redis.get(self.keys.state(check_run_id(run_id)))
        return codec.loads(raw) if raw else None


def _new_record(
    run_id: str, workflow: str, input: Any, extra: dict[str, str]
) -> tuple[RunRecord, dict[str, str]]:
    """A queued run's record, and its hash fields."""
    mapping = {
        "workflow": workflow,
        "input": codec.dumps_str(input),
        "status": RunStatus.QUEUED.value,
        "progress": "0",
        "seq": "0",
        "attempt": "1",
        "created_at": now_iso(),
        **extra,
    }
    record = RunRecord.from_hash(run_id, {k.encode(): v.encode() for k, v in mapping.items()})
    return record, mapping


async def ensure_schema(redis: Redis, keys: Keys) -> None:
    """Stamp an empty keyspace with this code's schema version; refuse one of another version
    (`tidings.schema.check_schema`: `SchemaMismatch`, a ValueError saying what to do).

    Both services call it at start-up, so a deployment never mixes layouts in one namespace.
    """
    await redis.set(keys.schema, SCHEMA_VERSION, nx=True)
    found = await redis.get(keys.schema)
    if found is not None:
        check_schema(keys, int(found))  # older: `tidings migrate`; newer: newer code
