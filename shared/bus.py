"""The event bus: atomic publish into a run's log and channel, and replay from a cursor.

A publish is one EVALSHA (see `publish.lua`): the fence check, the gapless `seq`, the monotonic
`progress`, the XADD, the run-hash update and both PUBLISHes happen together or not at all, so a
viewer can never see an event that is not in the log, nor a log entry that was never announced.

`publish_many` pipelines a batch (one round trip, order kept, errors per event); `publish_once`
adds a checkpoint to the same script (fence, HSETNX, publish), so a step's result and its
`task_completed` are committed together and only once.

Log entries are stored without their own `id` (the entry ID is the id); `splice_id` puts it back
when replaying, as bytes, without parsing the JSON.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .errors import Fenced, NotFound, RunFinished
from .events import LIFECYCLE_STATUS, Event, EventType
from .keys import Keys
from .streamid import StreamId, parse_cursor

__all__ = ["Bus", "LogInfo", "PublishCommand", "splice_id"]

_SCRIPT = resources.files(__package__).joinpath("publish.lua").read_text()
# Fields the script writes itself; the body sent to it must not carry them.
_SCRIPT_FIELDS = {"id", "seq", "progress"}
# The same publish, guarded by a checkpoint: KEYS[4] is a hash, the last two ARGV its field and
# value. Fence and finish are checked before the HSETNX so a zombie commits nothing.
_ONCE_SCRIPT = (
    """
local cp_value = table.remove(ARGV)
local cp_field = table.remove(ARGV)
local function publish()
"""
    + _SCRIPT
    + """
end
local h = redis.call('HMGET', KEYS[1], 'attempt', 'status', 'last_uid')
if not h[2] then
  return redis.error_reply('NOTFOUND')
end
if h[3] == ARGV[11] then
  return publish()
end
if ARGV[1] ~= '' and h[1] ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. tostring(h[1]))
end
if h[2] == 'completed' or h[2] == 'failed' or h[2] == 'cancelled' then
  return redis.error_reply('FINISHED ' .. h[2])
end
if redis.call('HSETNX', KEYS[4], cp_field, cp_value) == 0 then
  return false
end
return publish()
"""
)


def splice_id(entry_id: bytes, stored: bytes) -> bytes:
    """`{"seq":…}` from the log + its entry ID → `{"id":"…","seq":…}`, the published form."""
    return b'{"id":"' + entry_id + b'",' + stored[1:]


@dataclass(frozen=True, slots=True)
class PublishCommand:
    """One prepared publish: the event (without id/seq/progress yet) and the script's input."""

    event: Event
    keys: list[str]
    argv: list[Any]

    def result(self, reply: Any) -> Event:
        entry_id, seq, prog = reply
        return self.event.model_copy(
            update={"id": entry_id.decode(), "seq": int(seq), "progress": float(prog)}
        )


@dataclass(frozen=True, slots=True)
class LogInfo:
    """What a replay needs to know about a run's log before it starts."""

    length: int
    first_id: StreamId | None
    last_id: StreamId | None
    # Entries ever added; minus `length`, the number trimmed away (Tidings never XDELs).
    added: int

    @property
    def trimmed(self) -> int:
        return self.added - self.length

    def has_gap_after(self, cursor: StreamId) -> bool:
        """Did trimming remove events the holder of `cursor` has not seen?

        Conservative: a cursor exactly at the last trimmed entry also counts (the stream does not
        remember that entry's ID); the holder then gets a harmless resync, never a silent gap.
        """
        return self.trimmed > 0 and self.first_id is not None and cursor < self.first_id


class Bus:
    """Publishes and replays events. One per process; safe to share between tasks."""

    def __init__(self, redis: Redis, keys: Keys, *, maxlen: int = 10_000) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self._script = redis.register_script(_SCRIPT)
        self._once = redis.register_script(_ONCE_SCRIPT)

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
        """The script call for one event, unsent: `publish` sends one, `publish_many` a batch."""
        event = Event(
            run_id=run_id,
            type=type,
            task_id=task_id,
            task=task,
            message=message,
            data=data,
            attempt=attempt or 0,
        )
        body = event.model_dump_json(exclude=_SCRIPT_FIELDS)
        status = LIFECYCLE_STATUS.get(type)
        argv: list[Any] = [
            "" if attempt is None else str(attempt),
            body,
            "" if progress is None else repr(float(progress)),
            self.maxlen,
            self.keys.run_channel(run_id),
            self.keys.runs_channel,
            status.value if status else "",
            event.ts,
            message if type is not EventType.TOKEN else "",
            task or "",
            os.urandom(8).hex(),
            run_id,
        ]
        for key, value in (fields or {}).items():
            argv += [key, value]
        keys = [self.keys.run(run_id), self.keys.events(run_id), self.keys.active]
        return PublishCommand(event, keys, argv)

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
    ) -> Event:
        """Append an event to the run's log and announce it; returns it with id, seq, progress.

        `attempt` fences the call: if the run has moved on to another attempt, `Fenced` is raised
        and nothing is written. `fields` are extra run-hash fields set in the same step (result,
        error). Raises `NotFound` for an unknown run and `RunFinished` once the run has ended.
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
        try:
            reply = await self._script(keys=cmd.keys, args=cmd.argv)
        except ResponseError as exc:
            raise _domain_error(run_id, str(exc)) from None
        return cmd.result(reply)

    async def publish_many(self, commands: Sequence[PublishCommand]) -> list[Event | Exception]:
        """Send a batch in one pipelined round trip, in order; per command its event or error.

        Not a transaction: each event is still atomic on its own, and order is kept.
        """
        if not commands:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for cmd in commands:
                await self._script(keys=cmd.keys, args=cmd.argv, client=pipe)
            replies = await pipe.execute(raise_on_error=False)
        out: list[Event | Exception] = []
        for cmd, reply in zip(commands, replies, strict=True):
            if isinstance(reply, ResponseError):
                out.append(_domain_error(cmd.event.run_id, str(reply)))
            else:
                out.append(cmd.result(reply))
        return out

    async def publish_once(
        self, cmd: PublishCommand, checkpoint_key: str, field: str, value: str
    ) -> Event | None:
        """Publish `cmd` only if `field` of the hash `checkpoint_key` is not yet set, and set it.

        One script: fence check, HSETNX, then the publish. Returns None when the field was
        already set (someone committed first: nothing published). Same errors as `publish`.
        """
        try:
            reply = await self._once(
                keys=[*cmd.keys, checkpoint_key], args=[*cmd.argv, field, value]
            )
        except ResponseError as exc:
            raise _domain_error(cmd.event.run_id, str(exc)) from None
        return None if reply is None else cmd.result(reply)

    async def read(
        self, run_id: str, after: StreamId = (0, 0), count: int = 500
    ) -> list[tuple[StreamId, bytes]]:
        """Up to `count` log entries strictly after `after`, as (id, published JSON bytes)."""
        raw = await self.redis.xrange(
            self.keys.events(run_id), min=f"({after[0]}-{after[1]}", max="+", count=count
        )
        return [(parse_cursor(eid), splice_id(eid, fields[b"e"])) for eid, fields in raw]

    async def events(self, run_id: str, after: StreamId = (0, 0), limit: int = 500) -> list[Event]:
        """A page of the log as models (the JSON history API and the engine's own reads)."""
        return [Event.model_validate_json(raw) for _, raw in await self.read(run_id, after, limit)]

    async def log_info(self, run_id: str) -> LogInfo:
        key = self.keys.events(run_id)
        try:
            info = await self.redis.execute_command("XINFO", "STREAM", key)  # type: ignore[no-untyped-call]
        except ResponseError:  # no such key: nothing logged yet
            return LogInfo(0, None, None, 0)
        return _log_info(info)


def _log_info(info: Any) -> LogInfo:
    # redis-py may or may not have turned the reply into a dict; normalise to str keys.
    if not isinstance(info, dict):
        info = dict(zip(info[::2], info[1::2], strict=True))
    norm = {(k.decode() if isinstance(k, bytes) else k): v for k, v in info.items()}

    def entry_id(entry: Any) -> StreamId | None:
        if not entry:
            return None
        eid = entry[0] if isinstance(entry, list | tuple) else entry
        return parse_cursor(eid)

    length = int(norm.get("length", 0))
    return LogInfo(
        length=length,
        first_id=entry_id(norm.get("first-entry")),
        last_id=entry_id(norm.get("last-entry")),
        added=int(norm.get("entries-added", length)),
    )


def _domain_error(run_id: str, reply: str) -> Exception:
    if reply.startswith("NOTFOUND"):
        return NotFound(f"no run {run_id!r}")
    if reply.startswith("FENCED"):
        return Fenced(f"run {run_id} is now on attempt {reply.split()[-1]}")
    if reply.startswith("FINISHED"):
        return RunFinished(f"run {run_id} has already {reply.split()[-1]}")
    return RuntimeError(reply)
