"""The event bus: atomic publish into a run's log and channel, and replay from a cursor.

A publish is one EVALSHA of `publish.lua`, for a batch of events of one run: the fence check, the
gapless `seq`, the monotonic `progress`, the XADDs, the run-hash update and the PUBLISHes happen
together or not at all, so a viewer can never see an event that is not in the log, nor a log
entry that was never announced. `publish` is a batch of one; `publish_many` groups consecutive
commands of the same run and attempt into one script call each, all in one pipelined round trip;
`publish_once` adds a checkpoint (HSETNX) to the same script, so a step's result and its
`task_completed` are committed together and only once.

Bodies are built as plain dicts and encoded once; an `Event` model is only made for a caller that
asks for the result. A batch refused as DUPLICATE (the client library resent it after a dropped
connection, and the first send had landed) counts as published, with ids unknown.

Log entries are stored without their own `id` (the entry ID is the id); `splice_id` puts it back
when replaying, as bytes, without parsing the JSON.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from itertools import groupby
from typing import Any

from pydantic_core import to_json
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .errors import Fenced, NotFound, RunFinished
from .events import LIFECYCLE_STATUS, Event, EventType, now_iso
from .keys import Keys
from .streamid import StreamId, just_before, parse_cursor, xrange_after

__all__ = ["Bus", "LogInfo", "PublishCommand", "splice_id"]

_SCRIPT = resources.files(__package__).joinpath("publish.lua").read_text()

Outcome = bytes | None | Exception  # a script reply for one event, None = not written (checkpoint)


def splice_id(entry_id: bytes, stored: bytes) -> bytes:
    """`{"seq":…}` from the log + its entry ID → `{"id":"…","seq":…}`, the published form."""
    return b'{"id":"' + entry_id + b'",' + stored[1:]


@dataclass(frozen=True, slots=True)
class PublishCommand:
    """One prepared event: its fields, and its part of the script's arguments."""

    run_id: str
    attempt: int | None
    fields: dict[str, Any]  # the Event's fields but id, seq, progress
    args: list[Any]  # body, progress, status, message, task, n, n field/value pairs
    uid: str  # a call led by this command is refused as DUPLICATE if it was sent before

    def result(self, reply: bytes) -> Event:
        """The published event, from the script's "<id> <seq> <progress>" for it."""
        if not reply:  # DUPLICATE: published by an earlier send, ids unknown
            return Event.model_construct(**self.fields, id="", seq=0, progress=0.0)
        entry_id, seq, progress = reply.split()
        return Event.model_construct(
            **self.fields, id=entry_id.decode(), seq=int(seq), progress=float(progress)
        )


@dataclass(frozen=True, slots=True)
class LogInfo:
    """What a replay needs to know about a run's log before it starts."""

    length: int
    first_id: StreamId | None
    last_id: StreamId | None
    # Entries ever added; minus `length`, the number trimmed away (Tidings never XDELs).
    added: int
    # The run record's `status` and `last_event_id` from the same snapshot, when asked for.
    run_status: bytes | None = None
    run_last_event_id: bytes | None = None

    @property
    def trimmed(self) -> int:
        return self.added - self.length

    def has_gap_after(self, cursor: StreamId) -> bool:
        """Did trimming remove events the holder of `cursor` has not seen?

        Conservative: a cursor exactly at the last trimmed entry also counts (the stream does not
        remember that entry's ID); the holder then gets a harmless resync, never a silent gap.
        `just_before(first_id)`, where a resync leaves its holder, does not.
        """
        first = self.first_id
        return self.trimmed > 0 and first is not None and cursor < just_before(first)


class Bus:
    """Publishes and replays events. One per process; safe to share between tasks."""

    def __init__(self, redis: Redis, keys: Keys, *, maxlen: int = 10_000) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = maxlen
        self._script = redis.register_script(_SCRIPT)

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
        args: list[Any] = [
            to_json(event),
            "" if progress is None else repr(float(progress)),
            status.value if status else "",
            message if type is not EventType.TOKEN else "",
            task or "",
            len(fields or ()),
        ]
        for key, value in (fields or {}).items():
            args += [key, value]
        return PublishCommand(run_id, attempt, event, args, os.urandom(8).hex())

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
        [outcome] = await self.publish_raw([cmd])
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

    async def publish_raw(self, commands: Sequence[PublishCommand]) -> list[Outcome]:
        """`publish_many` without building result models (for callers that only need errors).

        Consecutive commands of one run and attempt go as one script call; the calls go as one
        pipeline. Each call is atomic; a call that fails (fenced, say) fails all its events.
        """
        if not commands:
            return []
        groups = [list(g) for _, g in groupby(commands, key=lambda c: (c.run_id, c.attempt))]
        if len(groups) == 1:
            replies: list[Any] = [await self._call(groups[0])]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for group in groups:
                    await self._call(group, client=pipe)
                replies = await pipe.execute(raise_on_error=False)
        outcomes: list[Outcome] = []
        for group, reply in zip(groups, replies, strict=True):
            outcomes += _outcomes(group, reply)
        return outcomes

    async def publish_once(
        self, cmd: PublishCommand, checkpoint_key: str, field: str, value: str
    ) -> Event | None:
        """Publish `cmd` only if `field` of the hash `checkpoint_key` is not yet set, and set it.

        One script: fence check, HSETNX, then the publish. Returns None when the field was
        already set (someone committed first: nothing published). Same errors as `publish`.
        """
        [outcome] = _outcomes(
            [cmd], await self._call([cmd], checkpoint=(checkpoint_key, field, value))
        )
        if isinstance(outcome, Exception):
            raise outcome
        return None if outcome is None else cmd.result(outcome)

    async def _call(
        self,
        group: list[PublishCommand],
        *,
        checkpoint: tuple[str, str, str] | None = None,
        client: Any = None,
    ) -> Any:
        """One script call for consecutive events of one run; returns the reply or the error."""
        first = group[0]
        run_id = first.run_id
        ckey, cfield, cvalue = checkpoint or (self.keys.steps(run_id), "", "")
        keys = [self.keys.run(run_id), self.keys.events(run_id), self.keys.active, ckey]
        argv: list[Any] = [
            "" if first.attempt is None else str(first.attempt),
            self.maxlen,
            self.keys.run_channel(run_id),
            self.keys.runs_channel,
            now_iso(),
            first.uid,
            run_id,
            cfield,
            cvalue,
        ]
        for cmd in group:
            argv += cmd.args
        try:
            return await self._script(keys=keys, args=argv, client=client)
        except ResponseError as exc:
            return exc

    async def read(
        self, run_id: str, after: StreamId = (0, 0), count: int = 500
    ) -> list[tuple[StreamId, bytes]]:
        """Up to `count` log entries strictly after `after`, as (id, published JSON bytes)."""
        start, end = xrange_after(after)
        raw = await self.redis.xrange(self.keys.events(run_id), min=start, max=end, count=count)
        return [(parse_cursor(eid), splice_id(eid, fields[b"e"])) for eid, fields in raw]

    async def read_page(
        self, run_id: str, after: StreamId = (0, 0), count: int = 500
    ) -> tuple[list[tuple[StreamId, bytes]], LogInfo]:
        """`read` and `log_info` from one snapshot (a MULTI): trimming cannot slip between the
        read and the gap check, so `info.has_gap_after(after)` is true exactly when the page
        does not follow on from `after`. The info also carries the run record's status and last
        event id from that snapshot, so a replay knows whether the run is over without another
        round trip."""
        key = self.keys.events(run_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            start, end = xrange_after(after)
            pipe.xrange(key, min=start, max=end, count=count)
            pipe.execute_command("XINFO", "STREAM", key)
            pipe.hmget(self.keys.run(run_id), ["status", "last_event_id"])
            raw, info, record = await pipe.execute(raise_on_error=False)
        for reply in (raw, record):
            if isinstance(reply, Exception):
                raise reply
        page = [(parse_cursor(eid), splice_id(eid, fields[b"e"])) for eid, fields in raw]
        # XINFO fails on a key that does not exist yet: nothing logged, nothing trimmed.
        log = LogInfo(0, None, None, 0) if isinstance(info, Exception) else _log_info(info)
        return page, replace(log, run_status=record[0], run_last_event_id=record[1])

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


def _outcomes(group: list[PublishCommand], reply: Any) -> list[Outcome]:
    """Per event of a script call: its "<id> <seq> <progress>", None, or its error."""
    run_id = group[0].run_id
    if isinstance(reply, ResponseError):
        if str(reply).startswith("DUPLICATE"):
            return [b""] * len(group)
        error = _domain_error(run_id, str(reply))
        return [error] * len(group)
    if not reply:  # the checkpoint was already set: nothing written
        return [None] * len(group)
    return [_domain_error(run_id, r.decode()) if r.startswith(b"FINISHED") else r for r in reply]


def _domain_error(run_id: str, reply: str) -> Exception:
    if reply.startswith("NOTFOUND"):
        return NotFound(f"no run {run_id!r}")
    if reply.startswith("FENCED"):
        return Fenced(f"run {run_id} is now on attempt {reply.split()[-1]}")
    if reply.startswith("FINISHED"):
        return RunFinished(f"run {run_id} has already {reply.split()[-1]}")
    return RuntimeError(reply)
