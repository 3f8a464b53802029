"""The event bus: atomic publish into a run's log and channel, and replay from a cursor.

A publish is one EVALSHA (see `publish.lua`): the fence check, the gapless `seq`, the monotonic
`progress`, the XADD, the run-hash update and both PUBLISHes happen together or not at all, so a
viewer can never see an event that is not in the log, nor a log entry that was never announced.

Log entries are stored without their own `id` (the entry ID is the id); `splice_id` puts it back
when replaying, as bytes, without parsing the JSON.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .errors import Fenced, NotFound, RunFinished
from .events import LIFECYCLE_STATUS, Event, EventType
from .keys import Keys
from .streamid import StreamId, parse_cursor

__all__ = ["Bus", "LogInfo", "splice_id"]

_SCRIPT = resources.files(__package__).joinpath("publish.lua").read_text()
# Fields the script writes itself; the body sent to it must not carry them.
_SCRIPT_FIELDS = {"id", "seq", "progress"}


def splice_id(entry_id: bytes, stored: bytes) -> bytes:
    """`{"seq":…}` from the log + its entry ID → `{"id":"…","seq":…}`, the published form."""
    return b'{"id":"' + entry_id + b'",' + stored[1:]


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
        try:
            entry_id, seq, prog = await self._script(keys=keys, args=argv)
        except ResponseError as exc:
            raise _domain_error(run_id, str(exc)) from None
        return event.model_copy(
            update={"id": entry_id.decode(), "seq": int(seq), "progress": float(prog)}
        )

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
