"""A run's event log as a replay reads it: pages of it (`LogReader`, which `tidings.bus.Bus` is),
its shape (`LogInfo`) and its entries' published form.

Entries are stored without their own `id` (the entry ID is the id); `splice_id` puts it back when
replaying, as bytes, without parsing the JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .events import Event
from .keys import Keys
from .streamid import StreamId, just_before, parse_cursor, xrange_after

__all__ = ["LogInfo", "LogReader", "entry_field", "info_of", "splice_id"]

_READ_PAGE = resources.files(__package__).joinpath("read_page.lua").read_text()

_SEQ = re.compile(rb'\{"seq":(\d+)')


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
    # The run record's `status` and `last_event_id` from the same snapshot, when asked for.
    run_status: bytes | None = None
    run_last_event_id: bytes | None = None
    # Whether the log holds the entry a reader asked about (`Bus.read_page(seen=True)`).
    cursor_found: bool | None = None
    # The seq of the oldest entry kept (0: an empty log, or one written before seqs).
    first_seq: int = 0

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

    def rolled_back_past(self, cursor: StreamId) -> bool:
        """Is the event at `cursor`, which its reader saw delivered, gone from a log that was not
        trimmed past it? Tidings never deletes entries, so only a log that went back in time
        loses one: a replica promoted before it had the last writes (asynchronous replication),
        or a server restarted from an older snapshot. The reader's view then holds events the
        log no longer has, and only a resync makes it true again."""
        if self.cursor_found is not False or cursor <= (0, 0) or self.run_status is None:
            return False
        return not self.has_gap_after(cursor)


def entry_field(fields: Any, name: bytes) -> bytes:
    """A field of a stream entry as a script returns it (a flat list, not a dict)."""
    if isinstance(fields, dict):
        value: bytes = fields[name]
        return value
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            found: bytes = fields[i + 1]
            return found
    raise KeyError(name)


def info_of(info: Any) -> LogInfo:
    # redis-py may or may not have turned the reply into a dict; normalise to str keys.
    if not isinstance(info, dict):
        info = dict(zip(info[::2], info[1::2], strict=True))
    norm = {(k.decode() if isinstance(k, bytes) else k): v for k, v in info.items()}

    def entry_id(entry: Any) -> StreamId | None:
        if not entry:
            return None
        eid = entry[0] if isinstance(entry, list | tuple) else entry
        return parse_cursor(eid)

    def entry_seq(entry: Any) -> int:
        """The seq at the head of a stored entry (`{"seq":N,…`), without parsing the JSON."""
        if not isinstance(entry, list | tuple) or len(entry) < 2:
            return 0
        try:
            stored = entry_field(entry[1], b"e")
        except KeyError:
            return 0
        head = _SEQ.match(stored)
        return int(head.group(1)) if head else 0

    length = int(norm.get("length", 0))
    return LogInfo(
        length=length,
        first_seq=entry_seq(norm.get("first-entry")),
        first_id=entry_id(norm.get("first-entry")),
        last_id=entry_id(norm.get("last-entry")),
        added=int(norm.get("entries-added", length)),
    )


class LogReader:
    """Reads runs' logs: entries after a cursor, pages with the log's shape, models."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._read_page = redis.register_script(_READ_PAGE)

    async def read(
        self, run_id: str, after: StreamId = (0, 0), count: int = 500
    ) -> list[tuple[StreamId, bytes]]:
        """Up to `count` log entries strictly after `after`, as (id, published JSON bytes)."""
        start, end = xrange_after(after)
        raw = await self.redis.xrange(self.keys.events(run_id), min=start, max=end, count=count)
        return [(parse_cursor(eid), splice_id(eid, fields[b"e"])) for eid, fields in raw]

    async def read_page(
        self,
        run_id: str,
        after: StreamId = (0, 0),
        count: int = 500,
        max_bytes: int = 1 << 20,
        *,
        seen: bool = False,
    ) -> tuple[list[tuple[StreamId, bytes]], LogInfo]:
        """`read` and `log_info` from one snapshot (a MULTI): trimming cannot slip between the
        read and the gap check, so `info.has_gap_after(after)` is true exactly when the page
        does not follow on from `after`. The info also carries the run record's status and last
        event id from that snapshot, so a replay knows whether the run is over without another
        round trip.

        The page holds at most `count` entries and stops before the entry that would take it
        past `max_bytes` of payload (it always holds the first): a log of large events is read
        in more, smaller pages, so a replay's memory is bounded whatever the events' size.

        `seen`: `after` is an event the reader had delivered; the info then says whether the log
        still holds it (`LogInfo.rolled_back_past`)."""
        start, end = xrange_after(after)
        keys = [self.keys.events(run_id), self.keys.run(run_id)]
        look_for = f"{after[0]}-{after[1]}" if seen and after > (0, 0) else ""
        args: list[str | int] = [start, end, count, max_bytes, look_for]
        raw, info, record, found = await self._read_page(keys=keys, args=args)
        page = [
            (parse_cursor(eid), splice_id(eid, entry_field(fields, b"e"))) for eid, fields in raw
        ]
        # No stream yet: nothing logged, nothing trimmed.
        log = info_of(info) if info else LogInfo(0, None, None, 0)
        return page, replace(
            log,
            run_status=record[0],
            run_last_event_id=record[1],
            cursor_found=None if found is None else bool(found),
        )

    async def events(self, run_id: str, after: StreamId = (0, 0), limit: int = 500) -> list[Event]:
        """A page of the log as models (the JSON history API and the engine's own reads)."""
        return [Event.model_validate_json(raw) for _, raw in await self.read(run_id, after, limit)]

    async def log_info(self, run_id: str) -> LogInfo:
        key = self.keys.events(run_id)
        try:
            info = await self.redis.execute_command("XINFO", "STREAM", key)  # type: ignore[no-untyped-call]
        except ResponseError:  # no such key: nothing logged yet
            return LogInfo(0, None, None, 0)
        return info_of(info)
