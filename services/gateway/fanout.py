"""The fan-out hub: every viewer of a gateway process fed from one message source.

A viewer (`viewer.py`) is one open event stream holding one cursor per channel it follows; the
hub keeps, per channel, the cursors that follow it, and asks its `Source` (`source.py`) for the
channels that have any. Decisions worth knowing:

- Channels are refcounted by cursors: the first makes the source SUBSCRIBE, the last one leaving
  makes it UNSUBSCRIBE.
- Each incoming message is parsed once and framed once (`messages.py`). For each cursor of the
  channel the dispatch loop writes those same bytes straight to the viewer's transport when the
  viewer is quiet (see `viewer.py`), else hands the message to the viewer's bounded buffer. No
  task switch, no per-viewer encoding, no allocation per delivery on the fast path.
- A channel the source lost (Redis restart) is not ready until its SUBSCRIBE is confirmed again;
  then every cursor of it lags and catches up from the log, so nothing published in between is
  lost.
- Heartbeats come from one ticker for the whole process, not a timer per viewer.
- Viewer counts are this process's: each gateway knows only its own viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from shared.keys import Keys

from .messages import Message, event_message, summary_message
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
        self._lifecycle_name = keys.runs_channel.encode()
        self._channels: dict[bytes, Channel] = {}
        self._viewers: set[Viewer] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._source.connected

    # -- viewers ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def attach(self, viewer: Viewer) -> Iterator[Viewer]:
        """Follow the viewer's cursors until the block ends; then release everything."""
        for cur in viewer.cursors:
            name = cur.channel
            entry = self._channels.get(name)
            if entry is None:
                entry = self._channels[name] = Channel(lifecycle=name == self._lifecycle_name)
                # Still subscribed on the server (its UNSUBSCRIBE was not sent yet): live at once.
                entry.ready = self._source.is_live(name)
                self._source.want(name)
            entry.cursors.add(cur)
            cur.entry = entry
        self._viewers.add(viewer)
        if self._closing:
            viewer.end()
        else:
            viewer.kick()  # every cursor starts lagging: catch up first
        try:
            yield viewer
        finally:
            viewer.close()
            self._viewers.discard(viewer)
            for cur in viewer.cursors:
                entry = self._channels.get(cur.channel)
                if entry is None:
                    continue
                entry.cursors.discard(cur)
                if not entry.cursors:
                    del self._channels[cur.channel]
                    self._source.unwant(cur.channel)

    def viewers(self, run_id: str) -> int:
        """Viewers of one run connected to this gateway process."""
        entry = self._channels.get(self._keys.run_channel(run_id).encode())
        return len(entry.cursors) if entry else 0

    def count_viewers(self, lifecycle: bool = False) -> int:
        return sum(len(e.cursors) for e in self._channels.values() if e.lifecycle is lifecycle)

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
        # The hot loop: one pass over the channel's cursors per message.
        mid, frame, terminal = msg.id, msg.chunk, msg.terminal
        written = 0
        for cur in entry.cursors:
            if cur.state:  # lagging or done
                continue
            if mid is not None and mid <= cur.last:
                continue  # a catch-up already sent it
            viewer = cur.viewer
            assert viewer is not None
            transport = viewer.transport
            if viewer.task is None and transport is not None:
                try:
                    if transport.get_write_buffer_size() < viewer.high_water:
                        if cur.render is None:
                            transport.write(frame)
                            written += 1
                        elif data := msg.rendered_chunk(cur.render):  # skipped when empty
                            transport.write(data)
                            written += 1
                        viewer.wrote = True
                        if mid is not None:
                            cur.last = mid
                        if terminal and cur.ends_on_terminal:
                            cur.state = DONE
                            if viewer.ends_when_done:
                                viewer.kick()  # finish the response
                        continue
                except RuntimeError:
                    continue  # the connection is gone; its handler releases the viewer
            viewer.push(cur, msg)
        if written:
            self.stats.direct_writes += written
            self.stats.sse_messages += written
            self.stats.sse_bytes += written * len(msg.sse)

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
