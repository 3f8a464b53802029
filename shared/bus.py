"""The event bus: atomic publish into a run's log and channel, and replay from a cursor.

A publish is one EVALSHA of `publish.lua`, for a batch of events of one run: the fence check, the
gapless `seq`, the monotonic `progress`, the XADDs, the run-hash update and the PUBLISHes happen
together or not at all, so a viewer can never see an event that is not in the log, nor a log
entry that was never announced. `publish` is a batch of one; `publish_many` groups consecutive
commands of the same run and attempt into one script call each, all in one pipelined round trip;
`publish_once` adds a checkpoint (HSETNX) to the same script, so a step's result and its
`task_completed` are committed together and only once.

Every key and channel a call touches is in the run's slot (`tidings.keys`): the run's own, and
its bucket's indexes (`active_of`, `expiring_of`, `runs_of`) and lifecycle channel
(`runs_channel_of`); the script publishes with the keyspace's command (`publish_command`:
SPUBLISH in a cluster). A cluster client pipelines no scripts (redis-py refuses), so there a
batch of several runs goes as one script call at a time per run, in order, the runs side by
side; each call is still one run's.

Bodies are built as plain dicts and encoded once; an `Event` model is only made for a caller that
asks for the result. A batch refused as DUPLICATE (the client library resent it after a dropped
connection, and the first send had landed) counts as published, with ids unknown.

Reading the log back (pages, their shape, the gap and rollback checks) is `tidings.log`'s
`LogReader`, which the bus is.

Retention: a call whose batch may end the run also passes the run's other keys, and the script
gives them all the retention TTL with the terminal event (`retention_ms`, 0 = keep forever).
Redis at its memory cap refuses a call whole (the script's first write fails, nothing is
written): that is `StorageFull`, sent again for up to `storage_wait_s` first (0: at once; the
workers wait, the gateway answers 503). `publish(allow_oom=True)` writes past the cap: only for
the event that tells a run's viewers it failed because storage is full.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from importlib import resources
from itertools import groupby
from typing import Any

from pydantic_core import to_json
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, ResponseError

from .events import LIFECYCLE_STATUS, TERMINAL_STATUSES, Event, EventType, now_iso
from .keys import Keys
from .log import LogInfo, LogReader, splice_id
from .publishing import Outcome, PublishCommand, outcomes_of, publish_command
from .settings import Settings

__all__ = ["Bus", "LogInfo", "PublishCommand", "splice_id"]

_SCRIPT = resources.files(__package__).joinpath("publish.lua").read_text()
# The same script, allowed to run when Redis is at its memory cap.
_SCRIPT_PAST_CAP = "#!lua flags=allow-oom\n" + _SCRIPT
_ENDING = frozenset(status.value for status in TERMINAL_STATUSES)
# KEYS: run hash, one of its lists. ARGV: value, then optionally the publish command, a channel
# of the run's slot and a message (the doorbell). 0 when the run is gone (nothing written).
_APPEND = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if ARGV[2] then redis.call(ARGV[2], ARGV[3], ARGV[4]) end
return 1
"""
# Due history entries a terminal publish drops (bounded work per call; it keeps up as runs end).
_TRIM_PER_CALL = 100

logger = logging.getLogger(__name__)


class Bus(LogReader):
    """Publishes and replays events (the replay side is `LogReader`'s). One per process; safe
    to share between tasks."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        maxlen: int = 10_000,
        max_event_bytes: int = 262_144,
        retention_ms: int = 0,
        storage_wait_s: float = 0.0,
    ) -> None:
        super().__init__(redis, keys)
        self.maxlen = maxlen
        self.retention_ms = retention_ms
        self.storage_wait_s = storage_wait_s
        self._script = redis.register_script(_SCRIPT)
        self._script_past_cap = redis.register_script(_SCRIPT_PAST_CAP)
        self._append = redis.register_script(_APPEND)
        self.max_event_bytes = max_event_bytes
        self._publish = publish_command(keys)

    @classmethod
    def from_settings(
        cls, redis: Redis, keys: Keys, settings: Settings, *, wait_for_storage: bool = False
    ) -> Bus:
        """A bus with the log length, event size and retention of `settings`. With
        `wait_for_storage` (workers) a write refused by a full Redis is sent again for up to
        `storage_full_wait_s`; without (the gateway, which answers 503) it fails at once."""
        return cls(
            redis,
            keys,
            maxlen=settings.events_maxlen,
            max_event_bytes=settings.max_event_bytes,
            retention_ms=settings.retention * 1000,
            storage_wait_s=settings.storage_full_wait_s if wait_for_storage else 0.0,
        )

    def command(
        self,
        run_id: str,
        type: EventType,
        message: str = "",
        *,
        task_id: str | None = None,
        task: str | None = None,
        progress: float | None = None,
        data: dict[str, Any] | None = None,
        attempt: int | None = None,
        fields: dict[str, str] | None = None,
    ) -> PublishCommand:
        """One event, prepared and unsent: `publish` sends one, `publish_many` a batch."""
        event = {
            "run_id": run_id,
            "type": EventType(type),
            "task_id": task_id,
            "task": task,
            "message": message,
            "data": data,
            "ts": now_iso(),
            "attempt": attempt or 0,
        }
        status = LIFECYCLE_STATUS.get(type)
        encoded = to_json(event)
        if len(encoded) > self.max_event_bytes:
            encoded = self._shrink(event, len(encoded))
        args: list[Any] = [
            encoded,
            "" if progress is None else repr(float(progress)),
            status.value if status else "",
            message if type is not EventType.TOKEN else "",
            task or "",
            len(fields or ()),
        ]
        for key, value in (fields or {}).items():
            args += [key, value]
        return PublishCommand(run_id, attempt, event, args, os.urandom(8).hex())

    def _shrink(self, event: dict[str, Any], size: int) -> bytes:
        """An event over `max_event_bytes`, its `data` replaced by a marker saying so (and its
        message cut short): the log stays bounded; the run's result and error, written as
        run-hash fields, are kept whole."""
        data = event.get("data")
        keys = sorted(data)[:50] if isinstance(data, dict) else []
        marker = {"truncated": True, "bytes": size, "limit": self.max_event_bytes, "keys": keys}
        event = {**event, "data": marker, "message": str(event.get("message", ""))[:2_000]}
        return to_json(event)

    async def publish(
        self,
        run_id: str,
        type: EventType,
        message: str = "",
        *,
        task_id: str | None = None,
        task: str | None = None,
        progress: float | None = None,
        data: dict[str, Any] | None = None,
        attempt: int | None = None,
        fields: dict[str, str] | None = None,
        allow_oom: bool = False,
    ) -> Event:
        """Append an event to the run's log and announce it; returns it with id, seq, progress.

        `attempt` fences the call: if the run has moved on to another attempt, `Fenced` is raised
        and nothing is written. `fields` are extra run-hash fields set in the same step (result,
        error). Raises `NotFound` for an unknown run, `RunFinished` once the run has ended and
        `StorageFull` when Redis is at its memory cap (unless `allow_oom`).
        """
        cmd = self.command(
            run_id,
            type,
            message,
            task_id=task_id,
            task=task,
            progress=progress,
            data=data,
            attempt=attempt,
            fields=fields,
        )
        [outcome] = await self.publish_raw([cmd], allow_oom=allow_oom)
        if isinstance(outcome, Exception):
            raise outcome
        assert outcome is not None
        return cmd.result(outcome)

    async def publish_many(self, commands: Sequence[PublishCommand]) -> list[Event | Exception]:
        """Send a batch in one pipelined round trip, in order; per command its event or error."""
        outcomes = await self.publish_raw(commands)
        return [
            o if isinstance(o, Exception) else cmd.result(o or b"")
            for cmd, o in zip(commands, outcomes, strict=True)
        ]

    async def publish_raw(
        self, commands: Sequence[PublishCommand], *, allow_oom: bool = False
    ) -> list[Outcome]:
        """`publish_many` without building result models (for callers that only need errors).

        Consecutive commands of one run and attempt go as one script call; the calls go as one
        pipeline. Each call is atomic; a call that fails (fenced, say) fails all its events.
        Only a single call is sent again while Redis is out of memory: of several, a later one
        of the same run may have landed, and resending the first would reorder the log.
        """
        if not commands:
            return []
        groups = [list(g) for _, g in groupby(commands, key=lambda c: (c.run_id, c.attempt))]
        if len(groups) == 1:
            replies: list[Any] = [await self._call_waiting(groups[0], allow_oom=allow_oom)]
        elif self.keys.clustered:
            replies = await self._call_by_run(groups)
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for group in groups:
                    await self._call(group, client=pipe)
                replies = await pipe.execute(raise_on_error=False)
        outcomes: list[Outcome] = []
        for group, reply in zip(groups, replies, strict=True):
            outcomes += outcomes_of(group, reply)
        return outcomes

    async def _call_by_run(self, groups: list[list[PublishCommand]]) -> list[Any]:
        """The replies of `groups` (a cluster's batch of several runs): each run's calls in
        order, one after the other, the runs side by side (their calls go to their own nodes)."""
        by_run: dict[str, list[int]] = {}
        for at, group in enumerate(groups):
            by_run.setdefault(group[0].run_id, []).append(at)
        replies: list[Any] = [None] * len(groups)

        async def run_calls(ats: list[int]) -> None:
            for at in ats:
                replies[at] = await self._call(groups[at])

        await asyncio.gather(*(run_calls(ats) for ats in by_run.values()))
        return replies

    async def publish_once(
        self, cmd: PublishCommand, checkpoint_key: str, field: str, value: str
    ) -> Event | None:
        """Publish `cmd` only if `field` of the hash `checkpoint_key` is not yet set, and set it.

        One script: fence check, HSETNX, then the publish. Returns None when the field was
        already set (someone committed first: nothing published). Same errors as `publish`.
        """
        [outcome] = outcomes_of(
            [cmd], await self._call_waiting([cmd], checkpoint=(checkpoint_key, field, value))
        )
        if isinstance(outcome, Exception):
            raise outcome
        return None if outcome is None else cmd.result(outcome)

    async def _call_waiting(self, group: list[PublishCommand], **kwargs: Any) -> Any:
        """`_call`, sent again while Redis refuses it as out of memory, for `storage_wait_s`.

        A refused call wrote nothing, so sending it again (same batch uid) is safe."""
        reply = await self._call(group, **kwargs)
        if not isinstance(reply, OutOfMemoryError) or self.storage_wait_s <= 0:
            return reply
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.storage_wait_s
        logger.warning(
            "run %s: Redis is out of memory; retrying for up to %.1f s",
            group[0].run_id,
            self.storage_wait_s,
        )
        delay = 0.05
        while isinstance(reply, OutOfMemoryError) and (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)
            reply = await self._call(group, **kwargs)
        return reply

    async def _call(
        self,
        group: list[PublishCommand],
        *,
        checkpoint: tuple[str, str, str] | None = None,
        client: Any = None,
        allow_oom: bool = False,
    ) -> Any:
        """One script call for consecutive events of one run; returns the reply or the error."""
        first = group[0]
        run_id = first.run_id
        ckey, cfield, cvalue = checkpoint or (self.keys.steps(run_id), "", "")
        keys = [
            self.keys.run(run_id),
            self.keys.events(run_id),
            self.keys.active_of(run_id),
            ckey,
            self.keys.expiring_of(run_id),
            self.keys.runs_of(run_id),
        ]
        if self.retention_ms and any(cmd.args[2] in _ENDING for cmd in group):
            keys += [k for k in self.keys.run_keys(run_id) if k not in keys]
        argv: list[Any] = [
            "" if first.attempt is None else str(first.attempt),
            self.maxlen,
            self.keys.run_channel(run_id),
            self.keys.runs_channel_of(run_id),
            now_iso(),
            first.uid,
            run_id,
            cfield,
            cvalue,
            self.retention_ms,
            _TRIM_PER_CALL,
            self._publish,
        ]
        for cmd in group:
            argv += cmd.args
        script = self._script_past_cap if allow_oom else self._script
        try:
            return await script(keys=keys, args=argv, client=client)
        except ResponseError as exc:
            return exc

    def append(
        self,
        run_id: str,
        key: str,
        value: str,
        *,
        client: Any = None,
        doorbell: str | None = None,
    ) -> Any:
        """RPUSH `value` to `key`, one of the run's lists, unless the run is gone; a list that
        the push creates after the run ended takes the run's remaining TTL, so a late write
        (a signal, a task's doorbell) cannot outlive the run. With `doorbell`, the same script
        then publishes it on the wake channel of the run's bucket (`wake_channel_of`, in the
        run's slot). Awaitable (1 written, 0 the run is gone); queued into `client` (a pipeline
        of a single Redis: a cluster client pipelines no scripts) when given."""
        args = [value]
        if doorbell is not None:
            args += [self._publish, self.keys.wake_channel_of(run_id), doorbell]
        return self._append(keys=[self.keys.run(run_id), key], args=args, client=client)
