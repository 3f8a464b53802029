"""Cursors: how a viewer catches up on one channel from Redis.

- `RunCursor`: a position in one run's event log. Catching up replays the log after it in pages;
  a position older than the trimmed log gets an explicit `resync` event (run record + state
  snapshot) and continues from the oldest entry left; the cursor is done after the run's terminal
  event, or when the log has nothing more and the run has ended.
- A position the log no longer holds although nothing was trimmed past it means the log went back
  in time (a replica promoted before it had the last writes: replication is asynchronous; a
  server restarted from an older snapshot): the viewer has seen events that are gone, and the
  events written since reuse their seqs. It gets a `resync` too, and the whole log after it, never
  a silent divergence. The check costs one XRANGE of one entry in the first page's script, and
  is made for positions this gateway delivered to the viewer (a channel lost to a failover is
  caught up so); a client's own cursor (`Last-Event-ID`, `?after=`) stays a position, whatever
  id it names, as it always was.
- `LifecycleCursor`: the run-list feed. Summaries have no log: a fresh snapshot is the catch-up.
"""

from __future__ import annotations

import itertools
import logging
from functools import partial

from pydantic import ValidationError

from tidings import codec, sse
from tidings.bus import LogInfo
from tidings.events import TERMINAL_STATUSES, TERMINAL_TYPES
from tidings.runs import RunRecord
from tidings.streamid import StreamId, just_before, parse_cursor

from .context import Gateway
from .messages import Render, describe, frame
from .viewer import DONE, Cursor, Viewer

__all__ = ["SNAPSHOT_SIZE", "LifecycleCursor", "RunCursor", "format_id"]

log = logging.getLogger(__name__)

SNAPSHOT_SIZE = 50
_TERMINAL = frozenset(t.value.encode() for t in TERMINAL_TYPES)
_TERMINAL_STATUS = frozenset(s.value.encode() for s in TERMINAL_STATUSES)


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


class RunCursor(Cursor):
    """A position in one run's event log; done after the run's terminal event."""

    __slots__ = ("ctx", "given", "resynced_at", "run_id")

    def __init__(self, ctx: Gateway, run_id: str, last: StreamId, render: Render | None) -> None:
        super().__init__((ctx.keys.run_channel(run_id),), last, render)
        self.ctx = ctx
        self.run_id = run_id
        self.given = last  # where the client asked to start (a position, not a delivery)
        self.resynced_at: StreamId | None = None  # where the last resync left the cursor

    async def catch_up(self, viewer: Viewer) -> None:
        """Replay the log after the cursor; DONE when the run's stream is over."""
        ctx, run_id = self.ctx, self.run_id
        page_size, page_bytes = ctx.settings.replay_page, ctx.settings.page_max_bytes
        read = ctx.bus.read_page
        stats = viewer.stats
        # Only a position this gateway delivered is known to have been in the log: a client's
        # own cursor may name any id, and means "what comes after it".
        check = self.last not in (self.given, self.resynced_at)
        while True:
            # Each page comes with the log's shape from the same snapshot: a trim that overtakes
            # the cursor, before or between pages, is always seen and answered with a resync.
            page, info = await viewer.retry_redis(
                partial(read, seen=check), run_id, self.last, page_size, page_bytes
            )
            if info.has_gap_after(self.last):
                await self._resync(viewer, info, "trimmed")
                check = False
                continue
            if check and info.rolled_back_past(self.last):
                await self._resync(viewer, info, "rolled_back")
                check = False
                continue
            check = False
            parts, done = [], False
            for sid, raw in page:
                eid, etype = describe(raw)
                self.last = sid
                data = frame(eid, etype, raw) if self.render is None else self.render(raw)
                if data:
                    parts.append(data)
                if etype in _TERMINAL:
                    done = True
                    break
            stats.replayed_events += len(parts)
            if parts:
                await viewer.write(b"".join(parts), len(parts))
            if done:
                self.state = DONE
                return
            # A page cut short by its byte budget is not the end of the log: its last entry is.
            if not page or info.last_id is None or self.last >= info.last_id:
                break
        # The log has nothing after the cursor. A run that already ended says nothing more
        # (e.g. a viewer resuming from the terminal event's id): this cursor is done. The run's
        # status comes from the same snapshot as the last page.
        status, last_id = info.run_status, info.run_last_event_id
        if status is None or (
            status in _TERMINAL_STATUS and (not last_id or parse_cursor(last_id) <= self.last)
        ):
            self.state = DONE

    async def _resync(self, viewer: Viewer, info: LogInfo, reason: str) -> None:
        """The record and state now, and the log from its oldest entry (or its start: a log
        that went back to nothing) after it. `after_seq`: the seq the replay continues after,
        which a client whose position is past it (`rolled_back`) must go back to."""
        store = self.ctx.store
        record = await viewer.retry_redis(store.get, self.run_id)
        state = await viewer.retry_redis(store.state, self.run_id)
        first = format_id(info.first_id) if info.first_id is not None else "0-0"
        body = codec.dumps(
            {
                "run": record.model_dump(mode="json"),
                "state": state,
                "from": first,
                "reason": reason,
                "after_seq": max(info.first_seq - 1, 0),
            }
        )
        await viewer.write(sse.encode(body, event="resync"), 1)
        viewer.stats.resyncs += 1
        self.last = just_before(info.first_id) if info.first_id is not None else (0, 0)
        self.resynced_at = self.last


class LifecycleCursor(Cursor):
    """The run-list feed: every bucket's lifecycle channel (one on a single Redis). Summaries
    have no log to replay: a fresh snapshot is the catch-up, taken after buffering restarted on
    every channel, so whatever follows it is at least as new."""

    __slots__ = ("ctx",)
    ends_on_terminal = False

    def __init__(self, ctx: Gateway) -> None:
        keys = ctx.keys
        super().__init__([keys.runs_channel_in(b) for b in keys.bucket_ids], (0, 0), None)
        self.ctx = ctx

    async def catch_up(self, viewer: Viewer) -> None:
        await viewer.write(await viewer.retry_redis(_snapshot, self.ctx), 1)


async def _newest(ctx: Gateway) -> list[bytes]:
    """The ids of the newest `SNAPSHOT_SIZE` runs of every bucket together, newest first."""
    keys = ctx.keys
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for b in keys.bucket_ids:
            pipe.zrevrange(keys.runs_in(b), 0, SNAPSHOT_SIZE - 1, withscores=True)
        per_bucket: list[list[tuple[bytes, float]]] = await pipe.execute()
    # A stable sort: one bucket (a single Redis) keeps the order ZREVRANGE gave.
    merged = sorted(itertools.chain.from_iterable(per_bucket), key=lambda e: -e[1])
    return [rid for rid, _ in merged[:SNAPSHOT_SIZE]]


async def _snapshot(ctx: Gateway) -> bytes:
    ids = await _newest(ctx)
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for rid in ids:
            pipe.hgetall(ctx.keys.run(rid.decode()))
        hashes: list[dict[bytes, bytes]] = await pipe.execute()
    runs = []
    for rid, raw in zip(ids, hashes, strict=True):
        if not raw:
            continue
        try:
            record = RunRecord.from_hash(rid.decode(), raw)
        except (ValidationError, ValueError):
            log.warning("skipping unreadable run record %r in the snapshot", rid)
            continue
        runs.append(record.summary().model_dump(mode="json"))
    return sse.encode(codec.dumps({"runs": runs}), event="snapshot")
