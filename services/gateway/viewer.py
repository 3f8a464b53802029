"""One viewer: an open event-stream response holding one cursor per thing it follows.

A single-run stream is a viewer with one cursor; a stream of several runs (and the lifecycle
feed) is the same object with more. A run's cursor follows its run's channel; the lifecycle
feed's cursor follows every lifecycle channel (a cluster keyspace has one per bucket) and is
ready to catch up once all of them are subscribed, so one snapshot covers them all. The hub
(`fanout.py`) delivers to cursors; this module is what a viewer does with a delivery and
everything that cannot be done inline.

The fast path and the service task:

- While a viewer is *quiet* (no service task running, every cursor live) the hub writes each
  event's once-framed bytes (`Message.chunk`) straight to the viewer's transport from its dispatch
  loop: no task switch, no ASGI `send`, no per-viewer encoding (a cursor with its own framing, such
  as a multiplexed or a seed stream, gets bytes cached on the message per framing). Only when the
  transport's buffer is above its high-water mark or a cursor is catching up does a delivery go
  into the viewer's bounded buffer, and a service task is started
  to drain it through the ASGI `send` (which waits for the transport to drain, bounded by the send
  timeout). While the service task runs, every delivery goes through the buffer, so bytes never
  overtake each other; once it has nothing left to do it ends and the fast path resumes.
- Without a transport (a server other than `tidings gateway`'s uvicorn) every delivery takes the
  service path: correct, just slower.
- The buffer is bounded in events and in bytes. When it would overflow it is dropped and every
  live cursor becomes *lagging*: the service task replays the log after each cursor's last id,
  then drains the buffer dropping ids the replay already sent. Every cursor starts lagging, so a
  first connect, a slow viewer and a pub/sub reconnect are one code path.
- A viewer that accepts no bytes for the send timeout is aborted (the transport closed at once).
- Heartbeats: the hub ticks once per heartbeat interval; a viewer that wrote nothing since the
  last tick gets a comment line (written directly when quiet).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.types import Receive, Send

from tidings.streamid import StreamId

from .messages import Message, Render, chunk
from .metrics import Stats
from .source import REDIS_DOWN

if TYPE_CHECKING:
    import asyncio.transports

    from .fanout import Channel, Hub

__all__ = [
    "DONE",
    "HEARTBEAT",
    "HEARTBEAT_CHUNK",
    "LAGGING",
    "LIVE",
    "Cursor",
    "SlowViewer",
    "Stop",
    "Viewer",
    "ViewerLimits",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

HEARTBEAT = b": ping\n\n"
HEARTBEAT_CHUNK = chunk(HEARTBEAT)

# Cursor states. Plain ints: the dispatch loop tests `if cur.state:` once per delivery.
LIVE = 0
LAGGING = 1
DONE = 2


class SlowViewer(Exception):
    """The viewer accepted no bytes within the send timeout."""


class Stop(Exception):
    """The viewer is being ended (gateway shutting down) while it waited for Redis."""


@dataclass(frozen=True, slots=True)
class ViewerLimits:
    buffer_events: int
    buffer_bytes: int
    send_timeout: float
    heartbeat: float


class Cursor:
    """A viewer's position in what it follows (one channel, or several that are caught up
    together). Subclasses say how to catch up from Redis."""

    __slots__ = ("channels", "entries", "last", "render", "state", "viewer")

    #: A terminal event ends this cursor (run channels); lifecycle feeds never end.
    ends_on_terminal = True

    def __init__(self, channels: Sequence[str], last: StreamId, render: Render | None) -> None:
        assert channels, "a cursor follows at least one channel"
        self.channels = tuple(c.encode() for c in channels)
        self.last = last
        self.render = render
        self.state = LAGGING
        self.entries: list[Channel] = []  # set by the hub on attach
        self.viewer: Viewer | None = None

    @property
    def ready(self) -> bool:
        """Every channel's subscription is confirmed: a catch-up now misses nothing."""
        entries = self.entries
        return bool(entries) and all(e.ready for e in entries)

    async def catch_up(self, viewer: Viewer) -> None:
        """Write what the viewer missed after `last`; set `state = DONE` when nothing follows."""
        raise NotImplementedError


class Viewer:
    """See the module docstring. Only the hub and the cursors call into it."""

    __slots__ = (
        "_ended",
        "_heartbeat_due",
        "_last_write",
        "_preamble",
        "_send",
        "buffer",
        "buffered",
        "closing",
        "cursors",
        "dead",
        "ends_when_done",
        "high_water",
        "hub",
        "limits",
        "stats",
        "task",
        "transport",
        "wrote",
    )

    def __init__(
        self,
        hub: Hub,
        send: Send,
        transport: asyncio.transports.WriteTransport | None,
        cursors: list[Cursor],
        *,
        preamble: bytes = b"",
        ends_when_done: bool = True,
    ) -> None:
        self.hub = hub
        self.limits = hub.limits
        self.stats: Stats = hub.stats
        self._send = send
        self.transport = transport
        self.high_water = transport.get_write_buffer_limits()[1] if transport is not None else 0
        self.cursors = cursors
        self.ends_when_done = ends_when_done
        self.buffer: list[tuple[Cursor, Message]] = []
        self.buffered = 0
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.dead = False
        self.wrote = False
        self._preamble: bytes | None = preamble
        self._heartbeat_due = False
        self._last_write = time.monotonic()
        # Only without a transport: the response handler waits on it to learn of an abort.
        self._ended: asyncio.Future[None] | None = (
            None if transport is not None else asyncio.get_running_loop().create_future()
        )
        for cur in cursors:
            cur.viewer = self

    # -- called by the hub (synchronous, on the dispatch path) -----------------------------------

    def push(self, cur: Cursor, msg: Message) -> None:
        """A delivery that cannot be written inline: buffer it and make sure the service runs."""
        if self.closing:
            return
        buf = self.buffer
        size = len(msg.raw)
        if len(buf) >= self.limits.buffer_events or self.buffered + size > self.limits.buffer_bytes:
            self.buffer = []
            self.buffered = 0
            for c in self.cursors:
                if c.state == LIVE:
                    c.state = LAGGING
            self.stats.overflows += 1
        else:
            buf.append((cur, msg))
            self.buffered += size
            if len(buf) > self.stats.buffer_high:
                self.stats.buffer_high = len(buf)
        self.kick()

    async def serve(self) -> None:
        """Run the service here, in the caller's task, until it has nothing left to do (a
        connecting viewer's first catch-up: a connection storm then costs no task per viewer)."""
        if self.task is None and not self.dead:
            self.task = asyncio.current_task()
            await self._service()

    def kick(self) -> None:
        """Start the service task unless it is running (it re-checks everything before ending)."""
        if self.task is None and not self.dead:
            self.task = asyncio.get_running_loop().create_task(self._service())

    def tick(self) -> None:
        """The hub's heartbeat tick: a comment line if nothing was written since the last."""
        if self.wrote:
            self.wrote = False
            return
        if self.dead:
            return
        transport = self.transport
        if self.task is None and transport is not None and not self.closing:
            try:
                if transport.get_write_buffer_size() < self.high_water:
                    transport.write(HEARTBEAT_CHUNK)
                    return
            except RuntimeError:  # the connection is gone; the response handler ends us
                return
        self._heartbeat_due = True
        self.kick()

    def end(self) -> None:
        """Finish the response cleanly (gateway shutting down)."""
        self.closing = True
        for c in self.cursors:
            c.state = DONE
        self.kick()

    def close(self) -> None:
        """The response is over (client gone or finished): release everything at once."""
        self.dead = True
        self.closing = True
        for c in self.cursors:
            c.state = DONE
        task, self.task = self.task, None
        if task is not None:
            task.cancel()

    # -- used by cursors while catching up --------------------------------------------------------

    async def write(self, data: bytes, messages: int = 0) -> None:
        """Write through the ASGI `send`, bounded by the send timeout."""
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await self._send({"type": "http.response.body", "body": data, "more_body": True})
        except TimeoutError:
            raise SlowViewer(f"no bytes accepted for {self.limits.send_timeout}s") from None
        self.wrote = True
        self._last_write = time.monotonic()
        self.stats.sse_bytes += len(data)
        self.stats.sse_messages += messages

    async def retry_redis(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await fn(*args)`, retried with backoff while Redis is unreachable (heartbeats go on).

        Raises `Stop` when the viewer is being ended meanwhile."""
        delay = 0.05
        while True:
            try:
                async with self.hub.reads:
                    return await fn(*args)
            except REDIS_DOWN as exc:
                self.stats.redis_retries += 1
                log.debug("redis unreachable (%s); retrying in %.2fs", exc, delay)
            if self.closing:
                raise Stop
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            if time.monotonic() - self._last_write > self.limits.heartbeat:
                await self.write(HEARTBEAT)

    # -- the response handler ---------------------------------------------------------------------

    async def wait(self, receive: Receive) -> None:
        """Until the client disconnects or the response is over (finished or aborted)."""
        if self._ended is None:
            # uvicorn answers `http.disconnect` once the response is complete or the transport
            # is closed, so an abort or a finish by the service task ends this wait too.
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        watcher = asyncio.create_task(_until_disconnect(receive))
        try:
            await asyncio.wait({watcher, self._ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()

    # -- the service task -------------------------------------------------------------------------

    async def _service(self) -> None:
        try:
            await self._serve()
        except SlowViewer as exc:
            self.stats.slow_disconnects += 1
            log.info("disconnecting a viewer: %s", exc)
            self._abort()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event stream failed; closing it")
            self._abort()
        finally:
            if self.task is asyncio.current_task():
                self.task = None

    async def _serve(self) -> None:
        if self._preamble is not None:
            preamble, self._preamble = self._preamble, None
            await self.write(preamble)
        try:
            while not self.closing:
                lagging = [c for c in self.cursors if c.state == LAGGING and c.ready]
                if lagging:
                    for c in lagging:
                        c.state = LIVE  # buffering restarts now; the replay comes next
                    self.stats.catchups += len(lagging)
                    for c in lagging:
                        await c.catch_up(self)
                elif self.buffer:
                    await self._drain()
                elif self.ends_when_done and all(c.state == DONE for c in self.cursors):
                    break
                elif self._heartbeat_due:
                    self._heartbeat_due = False
                    await self.write(HEARTBEAT)
                else:
                    return  # quiet: the fast path takes over
        except Stop:
            pass
        await self._finish()

    async def _drain(self) -> None:
        items, self.buffer, self.buffered = self.buffer, [], 0
        parts: list[bytes] = []
        for cur, msg in items:
            if cur.state == DONE:
                continue
            mid = msg.id
            if mid is not None:
                if mid <= cur.last:
                    continue  # the replay already sent it
                cur.last = mid
            data = msg.sse if cur.render is None else msg.rendered(cur.render)
            if data:
                parts.append(data)
            if msg.terminal and cur.ends_on_terminal:
                cur.state = DONE
        if parts:
            await self.write(b"".join(parts), len(parts))

    async def _finish(self) -> None:
        self.dead = True
        for c in self.cursors:
            c.state = DONE
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            self.stats.slow_disconnects += 1
            self._abort()
            return
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    def _abort(self) -> None:
        """Close the connection without finishing the response."""
        self.dead = True
        for c in self.cursors:
            c.state = DONE
        if self.transport is not None:
            self.transport.abort()  # uvicorn sees the connection lost and ends the handler
        elif self._ended is not None and not self._ended.done():
            # Returning without finishing the response makes the server close the connection.
            self._ended.set_result(None)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
