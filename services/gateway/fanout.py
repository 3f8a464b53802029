"""The fan-out hub: every viewer of a gateway process fed from one message source.

A viewer (`viewer.py`) is one open event stream holding one cursor per channel it follows; the
hub keeps, per channel, the cursors that follow it, and asks its `Source` (`source.py`) for the
channels that have any. Decisions worth knowing:

- Channels are refcounted by cursors: the first makes the source SUBSCRIBE, the last one leaving
  makes it UNSUBSCRIBE. The lifecycle feed is one cursor over every bucket's lifecycle channel
  (one channel on a single Redis; in a cluster each is SSUBSCRIBEd on its own node), so the
  feed merges the runs of all buckets.
- Each incoming message is parsed once and framed once (`messages.py`). For each cursor of the
  channel the dispatch loop writes those same bytes straight to the viewer's transport when the
  viewer is quiet (see `viewer.py`), else hands the message to the viewer's bounded buffer. No
  task switch, no per-viewer encoding, no allocation per delivery on the fast path.
- A channel the source lost (Redis restart; on a cluster, its node's connection or its slot's
  move: `on_lost_channels`) is not ready until its SUBSCRIBE is confirmed again;
  then every cursor of it lags and catches up from the log, so nothing published in between is
  lost.
- Heartbeats come from one ticker for the whole process, not a timer per viewer.
- Viewer counts are this process's: each gateway knows only its own viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Iterator

from tidings.keys import Keys

from .messages import Message, chunk, event_message, summary_message
from .metrics import Stats
from .source import Source
from .viewer import DONE, LAGGING, LIVE, Cursor, Viewer, ViewerLimits

__all__ = ["Channel", "Hub"]

log = logging.getLogger(__name__)


class Channel:
    """The cursors following one channel, and whether its subscription is confirmed."""

    __slots__ = ("cursors", "lifecycle", "ready")

    def __init__(self, lifecycle: bool) -> None:
        self.lifecycle = lifecycle
        self.ready = False
        self.cursors: set[Cursor] = set()


class Hub:
    """Owns the process's viewers and dispatches the source's messages to them."""

    def __init__(
        self,
        source: Source,
        keys: Keys,
        *,
        limits: ViewerLimits,
        stats: Stats,
        concurrent_reads: int = 32,
    ) -> None:
        self._source = source
        self._keys = keys
        self.limits = limits
        self.stats = stats
        # After a reconnect every viewer catches up at once; bounding the concurrent log reads
        # keeps that herd from opening a Redis connection per viewer.
        self.reads = asyncio.Semaphore(concurrent_reads)
        # The lifecycle channels: one per bucket; every feed follows them all.
        lifecycle = [keys.runs_channel_in(b).encode() for b in keys.bucket_ids]
        self._lifecycle = frozenset(lifecycle)
        self._lifecycle_first = lifecycle[0]
        self._channels: dict[bytes, Channel] = {}
        self._viewers: set[Viewer] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._pending: dict[Channel, list[Message]] = {}
        self._flush_scheduled = False
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._source.connected

    # -- viewers ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def attach(self, viewer: Viewer) -> Iterator[Viewer]:
        """Follow the viewer's cursors until the block ends; then release everything.

        Every cursor starts lagging: the caller runs the viewer's first catch-up (`serve`)."""
        for cur in viewer.cursors:
            for name in cur.channels:
                entry = self._channels.get(name)
                if entry is None:
                    entry = self._channels[name] = Channel(lifecycle=name in self._lifecycle)
                    # Still subscribed on the server (its UNSUBSCRIBE was not sent yet): live at
                    # once.
                    entry.ready = self._source.is_live(name)
                    self._source.want(name)
                entry.cursors.add(cur)
                cur.entries.append(entry)
        self._viewers.add(viewer)
        if self._closing:
            viewer.end()
        try:
            yield viewer
        finally:
            viewer.close()
            self._viewers.discard(viewer)
            for cur in viewer.cursors:
                for name in cur.channels:
                    entry = self._channels.get(name)
                    if entry is None:
                        continue
                    entry.cursors.discard(cur)
                    if not entry.cursors:
                        del self._channels[name]
                        self._source.unwant(name)

    def viewers(self, run_id: str) -> int:
        """Viewers of one run connected to this gateway process."""
        entry = self._channels.get(self._keys.run_channel(run_id).encode())
        return len(entry.cursors) if entry else 0

    def count_viewers(self, lifecycle: bool = False) -> int:
        """Cursors following runs, or (`lifecycle`) feeds: each follows every lifecycle
        channel, so the first one's count is theirs."""
        if lifecycle:
            entry = self._channels.get(self._lifecycle_first)
            return len(entry.cursors) if entry else 0
        return sum(len(e.cursors) for e in self._channels.values() if not e.lifecycle)

    def count_channels(self) -> int:
        return self._source.count_channels()

    def end_viewers(self) -> None:
        """Ask every viewer's stream to finish (shutdown); new ones end at once."""
        self._closing = True
        for viewer in list(self._viewers):
            viewer.end()

    # -- source events ---------------------------------------------------------------------------

    def on_message(self, channel: bytes, data: bytes) -> None:
        entry = self._channels.get(channel)
        if entry is None or not entry.cursors:
            return
        msg: Message | None
        if entry.lifecycle:
            self.stats.summaries_received += 1
            msg = summary_message(data)
        else:
            self.stats.events_received += 1
            msg = event_message(data)
        if msg is None:
            return
        # Written once the source has handed over everything it read in one go: a burst becomes
        # one write per viewer, a paced event is written a loop iteration later.
        pending = self._pending.get(entry)
        if pending is None:
            self._pending[entry] = [msg]
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        else:
            pending.append(msg)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for entry, msgs in pending.items():
            if len(msgs) == 1:
                msg = msgs[0]
                for cur in entry.cursors:
                    if not cur.state:  # live (not lagging, not done)
                        self._deliver(cur, msg)
            else:
                self._deliver_batch(entry, msgs)

    def _deliver(self, cur: Cursor, msg: Message) -> None:
        """One message to one live cursor: straight to the transport when the viewer is quiet."""
        mid = msg.id
        if mid is not None and mid <= cur.last:
            return  # a catch-up already sent it
        viewer = cur.viewer
        assert viewer is not None
        transport = viewer.transport
        if viewer.task is None and transport is not None:
            try:
                if transport.get_write_buffer_size() < viewer.high_water:
                    if cur.render is None:
                        transport.write(msg.chunk)
                        self._count(len(msg.sse), 1)
                    elif data := msg.rendered_chunk(cur.render):  # empty: skipped by this framing
                        transport.write(data)
                        self._count(len(msg.rendered(cur.render) or b""), 1)
                    viewer.wrote = True
                    if mid is not None:
                        cur.last = mid
                    if msg.terminal and cur.ends_on_terminal:
                        cur.state = DONE
                        if viewer.ends_when_done:
                            viewer.kick()  # finish the response
                    return
            except RuntimeError:
                return  # the connection is gone; its handler releases the viewer
        viewer.push(cur, msg)

    def _deliver_batch(self, entry: Channel, msgs: list[Message]) -> None:
        """Several messages of one channel read at once: one joined chunk for every quiet viewer
        that needs all of them, message by message for the others."""
        first, last = msgs[0].id, msgs[-1].id
        clean = not any(m.terminal for m in msgs[:-1])  # nothing of a run after its end
        joined = b"".join(m.sse for m in msgs) if clean else b""
        frame = chunk(joined)
        for cur in entry.cursors:
            if cur.state:
                continue
            viewer = cur.viewer
            assert viewer is not None
            transport = viewer.transport
            if (
                clean
                and cur.render is None
                and viewer.task is None
                and transport is not None
                and (first is None or first > cur.last)
            ):
                try:
                    if transport.get_write_buffer_size() < viewer.high_water:
                        transport.write(frame)
                        self._count(len(joined), len(msgs))
                        viewer.wrote = True
                        if last is not None:
                            cur.last = last
                        if msgs[-1].terminal and cur.ends_on_terminal:
                            cur.state = DONE
                            if viewer.ends_when_done:
                                viewer.kick()
                        continue
                except RuntimeError:
                    continue
            for msg in msgs:
                if cur.state:
                    break
                self._deliver(cur, msg)

    def _count(self, size: int, messages: int) -> None:
        stats = self.stats
        stats.socket_writes += 1
        stats.direct_writes += messages
        stats.sse_messages += messages
        stats.sse_bytes += size

    def on_ready(self, channel: bytes) -> None:
        """Confirmed subscribed: every cursor replays from its position before going live."""
        entry = self._channels.get(channel)
        if entry is None:
            return
        entry.ready = True
        for cur in entry.cursors:
            if cur.state == LIVE:
                cur.state = LAGGING
            if cur.state == LAGGING and cur.viewer is not None:
                cur.viewer.kick()

    def on_lost(self) -> None:
        for entry in self._channels.values():
            entry.ready = False

    def on_lost_channels(self, channels: Collection[bytes]) -> None:
        """What `on_lost` does, for these channels only: each waits for its `on_ready`, which
        makes its cursors catch up from the log; the other channels stay live."""
        for name in channels:
            entry = self._channels.get(name)
            if entry is not None:
                entry.ready = False

    # -- lifetime --------------------------------------------------------------------------------

    def start(self) -> None:
        assert self._ticker is None, "hub already started"
        self._source.start(self)
        self._ticker = asyncio.create_task(self._tick(), name="tidings-gateway-heartbeat")

    async def close(self, timeout: float = 5.0) -> None:
        self.end_viewers()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel("gateway shutting down")
            await asyncio.wait({ticker}, timeout=timeout)
        await self._source.close(timeout)

    async def _tick(self) -> None:
        # A viewer that wrote nothing during a whole period gets a comment: an idle stream sees
        # one every period, a busy one none.
        period = self.limits.heartbeat
        while True:
            await asyncio.sleep(period)
            for viewer in list(self._viewers):
                viewer.tick()
