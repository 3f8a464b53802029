"""Run records: the `<ns>:run:{ID}` hash, the `<ns>:runs` history index, lifecycle summaries."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, WatchError

from . import codec
from .errors import Conflict, NotFound, StorageFull
from .events import RunStatus, RunSummary, now_iso, now_ms
from .keys import SCHEMA_VERSION, Keys, check_run_id
from .schema import check_schema

__all__ = ["RunRecord", "RunStore", "ensure_schema"]


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

    async def create(
        self,
        workflow: str,
        input: Any,
        *,
        run_id: str | None = None,
        also: Callable[[Any, str], object] | None = None,
        **extra: str,
    ) -> RunRecord:
        """Write a queued run record, index it, announce it. One MULTI: all or nothing.

        Redis at its memory cap refuses the whole MULTI (`StorageFull`): nothing is written.

        `also(pipe, run_id)` (sync or async) may queue more commands into the same MULTI (the
        run's first job).
        """
        run_id = check_run_id(run_id or str(uuid.uuid4()))
        key = self.keys.run(run_id)
        created = now_iso()
        mapping = {
            "workflow": workflow,
            "input": codec.dumps_str(input),
            "status": RunStatus.QUEUED.value,
            "progress": "0",
            "seq": "0",
            "attempt": "1",
            "created_at": created,
            **extra,
        }
        record = RunRecord.from_hash(run_id, {k.encode(): v.encode() for k, v in mapping.items()})
        score = now_ms()
        taken = Conflict(f"run {run_id} already exists")
        async with self.redis.pipeline(transaction=True) as pipe:
            # WATCH: a concurrent create of the same id makes this MULTI fail, not overwrite.
            await pipe.watch(key)
            if await pipe.exists(key):
                raise taken
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(key, mapping=mapping)
            pipe.zadd(self.keys.runs, {run_id: score})
            pipe.zadd(self.keys.active, {run_id: score})
            pipe.publish(self.keys.runs_channel, record.summary().model_dump_json())
            if also is not None:
                queued = also(pipe, run_id)
                if inspect.isawaitable(queued):
                    await queued
            try:
                await pipe.execute()
            except WatchError:
                raise taken from None
            except OutOfMemoryError:
                raise StorageFull("storage is full: Redis refused to record a new run") from None
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


async def ensure_schema(redis: Redis, keys: Keys) -> None:
    """Stamp an empty keyspace with this code's schema version; refuse one of another version
    (`tidings.schema.check_schema`: `SchemaMismatch`, a ValueError saying what to do).

    Both services call it at start-up, so a deployment never mixes layouts in one namespace.
    """
    await redis.set(keys.schema, SCHEMA_VERSION, nx=True)
    found = await redis.get(keys.schema)
    if found is not None:
        check_schema(keys, int(found))  # older: `tidings migrate`; newer: newer code
