"""The control surface both services use: start runs, signal them, list and read them.

Decisions:
- `start` learns the workflow from a `WorkflowSource` (`tidings.catalog`): by default the catalog
  in Redis, which validates the input against the version's JSON schema and stores it as given
  (the worker's pydantic model applies defaults and what a schema cannot say when the run
  starts); given a `RegistryWorkflows`, the pydantic model validates and its JSON dump is stored.
  The run is routed to the workflow's current version (`version` on its record), and the record
  and the first job are written by ONE script over the run's slot (`RunStore.create(job_queue=
  …)`): a run is never left queued without a job. A version no live worker serves is still
  queued: it waits for one.
- Every write for one run is in the run's slot: the signal is appended and the doorbell of the
  run's bucket rung (`wake_channel_of`) by one script (`Bus.append(doorbell=…)`), and the
  record and signal list a pause or resume is judged by are read by one script too.
- `signal` accepts exactly `stop | pause | resume | cancel | message`; any other name is
  `InvalidInput` (422) because the name is part of the request, not a resource that may exist.
  Transitions: stop, cancel and message any unfinished run; pause an unfinished run not asked
  to pause, resume one that is; anything else is `Conflict` (409). Whether a run is "asked to
  pause" is decided by what was asked, not only by its status: the status becomes `paused` (and
  `running` again) only at the workflow's next step boundary, and is `queued` while the run is
  handed to another worker, so the last pause/resume in the signal list wins, and the status only
  speaks when neither was ever sent (`tidings.signals`, the worker's own fold). A pause then a
  quick resume are thus both accepted and the run ends up running, never paused for good.
- The `signal_received` event is published first (its script refuses a finished run
  atomically), then the signal is appended to the run's signal list and the workers' doorbell
  rings so the run's worker reacts at once. The check, the publish and the append for one run
  are serialised by a per-run lock in this process, so concurrent requests through one gateway
  are judged one after the other and enter the list in the order of their events. (Across
  gateway processes two racing requests may both pass the check; the worst outcome is a
  repeated pause or resume, which the fold makes harmless.)
- Cancelling a run that no worker has started yet ends it here (`workflow_cancelled`, fenced by
  the attempt we saw): a cancelled run must not wait for a free worker to notice.
- `list_runs` pages newest first; the cursor is `<created ms>:<run id>`, exclusive. The order
  is (created ms, run id), both descending, over every bucket's history index (`runs_in`):
  each round reads a slice of every bucket in one non-transactional pipeline and keeps the
  merged entries down to the highest last entry of a full slice (beyond it a bucket may hold
  newer runs not read yet). A single Redis has one bucket: the old single index, read as before.
  An index entry whose record is gone (expired) is skipped and removed from the indexes.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from redis.asyncio import Redis

from . import codec
from .bus import Bus
from .catalog import Catalog, Prepared, WorkflowSource
from .errors import (
    BadCursor,
    Conflict,
    Fenced,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RunFinished,
)
from .events import Event, EventType, RunStatus
from .jobs import job_key, queue_of, run_job_id, signal_doorbell
from .keys import Keys, check_run_id
from .runs import RunRecord, RunStore
from .settings import Settings
from .signals import fold_signals

__all__ = ["SIGNAL_NAMES", "Control"]

_UNFINISHED = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.PAUSED})
_ALLOWED: dict[str, frozenset[RunStatus]] = {
    "stop": _UNFINISHED,
    "cancel": _UNFINISHED,
    "message": _UNFINISHED,
    # Unfinished, and then judged by what was asked (`_check`).
    "pause": _UNFINISHED,
    "resume": _UNFINISHED,
}
_PAUSE_RESUME = frozenset({"pause", "resume"})
SIGNAL_NAMES = tuple(_ALLOWED)
_PAGE_SCAN = 200
# KEYS: run hash, its signal list. The record (flat HGETALL) and the list at one moment.
_RECORD_AND_SIGNALS = """
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
"""


class Control:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        bus: Bus,
        settings: Settings,
        workflows: WorkflowSource | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.bus = bus
        self.settings = settings
        self.workflows: WorkflowSource = workflows or Catalog(redis, keys)
        self.store = RunStore(redis, keys)
        self._record_and_signals = redis.register_script(_RECORD_AND_SIGNALS)
        # One lock per run being signalled; a run's entry goes when no request holds it.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def start(
        self,
        workflow: str,
        input: dict[str, Any] | None,
        *,
        run_id: str | None = None,
        owner: str | None = None,
    ) -> RunRecord:
        """Validate, record and enqueue a run. NotFound, InvalidInput, Conflict (id taken).

        `owner`: the client that started it (the gateway's client id, never a credential)."""
        self._check_size("input", input)
        prepared = await self.prepare(workflow, input)
        return await self.store.create(
            workflow,
            prepared.input,
            run_id=run_id,
            job_queue=(workflow, prepared.version),
            version=prepared.version,
            **({"owner": owner} if owner else {}),
        )

    async def prepare(self, workflow: str, input: dict[str, Any] | None) -> Prepared:
        """The version a run of `workflow` would get and its input as stored; NotFound or
        InvalidInput as `start` would raise them. Writes nothing."""
        return await self.workflows.prepare(workflow, input)

    async def signal(self, run_id: str, name: str, payload: dict[str, Any] | None = None) -> Event:
        """Deliver a control signal; returns its `signal_received` event."""
        allowed = _ALLOWED.get(name)
        if allowed is None:
            raise InvalidInput(
                f"unknown signal {name!r}",
                errors=[{"loc": ["name"], "msg": f"expected one of {', '.join(SIGNAL_NAMES)}"}],
            )
        check_run_id(run_id)
        self._check_size("signal payload", payload)
        lock = self._locks.get(run_id)
        if lock is None:
            lock = self._locks[run_id] = asyncio.Lock()
        async with lock:
            record = await self._check(run_id, name, allowed)
            body = payload or {}
            event = await self.bus.publish(
                run_id,
                EventType.SIGNAL_RECEIVED,
                f"{name} requested",
                data={"signal": name, "payload": body},
            )
            entry = {"name": name, "payload": body, "id": event.id, "ts": event.ts}
            # Through `Bus.append`: should the run end meanwhile, a signal list it creates
            # expires with the run.
            await self.bus.append(
                run_id,
                self.keys.signals(run_id),
                codec.dumps_str(entry),
                doorbell=signal_doorbell(run_id),
            )
        if name == "cancel" and record.status is RunStatus.QUEUED:
            await self._cancel_queued(record)
        return event

    def _check_size(self, what: str, value: Any) -> None:
        """PayloadTooLarge (413) when `value` as compact JSON is over TIDINGS_MAX_INPUT_BYTES:
        inputs and signal payloads are kept in the log and in Redis for the run's lifetime."""
        if value is None:
            return
        size = len(codec.dumps(value))
        limit = self.settings.max_input_bytes
        if size > limit:
            raise PayloadTooLarge(
                f"the {what} is {size} bytes of JSON; at most {limit} (TIDINGS_MAX_INPUT_BYTES)"
            )

    async def _check(self, run_id: str, name: str, allowed: frozenset[RunStatus]) -> RunRecord:
        """The run's record if `name` may be sent to it now; NotFound or Conflict otherwise."""
        if name not in _PAUSE_RESUME:
            record = await self.store.get(run_id)
            if record.status not in allowed:
                raise Conflict(f"cannot {name} run {run_id}: it is {record.status.value}")
            return record
        # The record and the signal list read by one script: one consistent moment.
        flat, raw_signals = await self._record_and_signals(
            keys=[self.keys.run(run_id), self.keys.signals(run_id)]
        )
        if not flat:
            raise NotFound(f"no run {run_id!r}")
        record = RunRecord.from_hash(run_id, dict(zip(flat[::2], flat[1::2], strict=True)))
        if record.status not in allowed:
            raise Conflict(f"cannot {name} run {run_id}: it is {record.status.value}")
        asked = fold_signals(raw_signals).paused
        paused = record.status is RunStatus.PAUSED if asked is None else asked
        if paused is (name == "pause"):
            if asked is None or asked is (record.status is RunStatus.PAUSED):
                why = f"it is {record.status.value}"
            else:
                why = f"it is {record.status.value} and already asked to {name}"
            raise Conflict(f"cannot {name} run {run_id}: {why}")
        return record

    async def _cancel_queued(self, record: RunRecord) -> None:
        try:
            await self.bus.publish(
                record.run_id,
                EventType.WORKFLOW_CANCELLED,
                "cancelled before it started",
                attempt=record.attempt,
            )
        except (Fenced, RunFinished):
            return  # a worker took it meanwhile; it reads the cancel from the signal list
        job_id = run_job_id(record.run_id, record.attempt, self.keys.run_tag(record.run_id))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(queue_of(self.keys, record), job_id)
            pipe.delete(job_key(job_id))
            await pipe.execute()

    async def get(self, run_id: str) -> RunRecord:
        return await self.store.get(run_id)

    async def state(self, run_id: str) -> Any:
        if not await self.store.exists(run_id):
            await self.store.get(run_id)  # raises NotFound with the usual message
        return await self.store.state(run_id)

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> tuple[list[RunRecord], str | None]:
        """Runs newest first, optionally filtered; returns (page, cursor of the next page)."""
        if status is not None and status not in RunStatus.__members__.values():
            raise InvalidInput(
                f"unknown status {status!r}",
                errors=[
                    {"loc": ["status"], "msg": f"expected one of {[s.value for s in RunStatus]}"}
                ],
            )
        limit = max(1, min(limit, 500))
        max_score, after_id = _parse_before(before)
        found: list[tuple[RunRecord, float]] = []
        gone: list[str] = []
        while len(found) < limit:
            ids, exhausted = await self._history_slice(max_score, after_id)
            if not ids:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for rid, _ in ids:
                    pipe.hgetall(self.keys.run(rid))
                hashes = await pipe.execute()
            for (rid, score), raw_hash in zip(ids, hashes, strict=True):
                if not raw_hash:
                    gone.append(rid)  # expired (retention) or deleted: never listed
                    continue
                rec = RunRecord.from_hash(rid, raw_hash)
                if (workflow is None or rec.workflow == workflow) and (
                    status is None or rec.status.value == status
                ):
                    found.append((rec, score))
                if len(found) >= limit:
                    break
            last_id, last_score = ids[-1]
            if len(found) >= limit:
                last_rec, last_score = found[-1]
                last_id = last_rec.run_id
            max_score, after_id = last_score, last_id
            if exhausted and len(found) < limit:
                break
        if gone:
            await self._forget(gone)
        page = [rec for rec, _ in found]
        cursor = None
        if len(found) >= limit:
            rec, score = found[-1]
            cursor = f"{int(score)}:{rec.run_id}"
        return page, cursor

    async def _history_slice(
        self, max_score: float | str, after_id: str | None
    ) -> tuple[list[tuple[str, float]], bool]:
        """The next history entries after the cursor (`max_score`, `after_id`), newest first
        over every bucket (module docstring), and whether they are the last ones."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket in self.keys.bucket_ids:
                pipe.zrevrangebyscore(
                    self.keys.runs_in(bucket),
                    max_score,
                    "-inf",
                    start=0,
                    num=_PAGE_SCAN,
                    withscores=True,
                )
            slices: list[list[tuple[bytes, float]]] = await pipe.execute()
        merged: list[tuple[str, float]] = []
        horizon: tuple[float, str] | None = None  # the highest last entry of a full slice
        for raw in slices:
            if len(raw) >= _PAGE_SCAN:
                last = (raw[-1][1], raw[-1][0].decode())
                horizon = last if horizon is None else max(horizon, last)
            merged += [
                (member.decode(), score)
                for member, score in raw
                if not (score == max_score and after_id is not None and member.decode() >= after_id)
            ]
        merged.sort(key=lambda entry: (entry[1], entry[0]), reverse=True)
        if horizon is not None:
            merged = [entry for entry in merged if (entry[1], entry[0]) >= horizon]
        return merged, horizon is None

    async def _forget(self, run_ids: list[str]) -> None:
        """Drop from the indexes runs whose record is gone (their keys expired before the
        index was trimmed): a listing repairs what it meets. A record is written by the same
        script as its index entries, so an entry without one is never a run being created."""
        by_bucket: dict[int, list[str]] = {}
        for rid in run_ids:
            by_bucket.setdefault(self.keys.bucket(rid), []).append(rid)
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket, ids in by_bucket.items():
                pipe.zrem(self.keys.runs_in(bucket), *ids)
                pipe.zrem(self.keys.expiring_in(bucket), *ids)
            await pipe.execute()


def _parse_before(before: str | None) -> tuple[float | str, str | None]:
    if not before:
        return "+inf", None
    score, sep, run_id = before.partition(":")
    if not sep or not (score.isascii() and score.isdigit()) or len(score) > 20:
        raise BadCursor(f"not a run list cursor: {before[:64]!r}")
    try:
        return float(score), check_run_id(run_id)
    except NotFound:
        raise BadCursor(f"not a run list cursor: {before[:64]!r}") from None
