"""The fan-out hub: one Redis pub/sub connection per gateway process, shared by every viewer.

Decisions worth knowing:

- Channels are refcounted: the first viewer of a run makes the hub SUBSCRIBE, the last one leaving
  makes it UNSUBSCRIBE. A single writer task reconciles "channels wanted" with "channels
  subscribed", so a viewer that leaves and a viewer that arrives at once cause no churn, and a
  SUBSCRIBE/UNSUBSCRIBE race can never mark a channel live before the server confirms it.
- Each incoming event is parsed once and encoded to SSE bytes once (`messages.py`); the same
  `Message` object goes into every viewer's buffer.
- A viewer's buffer is bounded. When it would overflow it is dropped and the viewer is marked
  *lagging*; its sender then replays from the log from its own cursor. Every subscription starts
  lagging, so a first connect, a slow viewer and a pub/sub reconnect are the same code path:
  catch up from the log, then go live, dropping buffered ids the replay already sent.
- The pub/sub connection is a plain redis-py `Connection`, not `PubSub`: `PubSub` silently
  reconnects and resubscribes, which would hide the window in which events were missed. Here a
  lost connection marks every channel not ready; once the new SUBSCRIBE is confirmed every viewer
  of it is marked lagging, so nothing published during the outage is lost.
- Viewer counts are this process's: each gateway knows only its own viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.keys import Keys

from .messages import Message, event_message, summary_message
from .metrics import Stats

__all__ = ["REDIS_DOWN", "Hub", "Subscription"]

log = logging.getLogger(__name__)

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
# A server that accepts TCP but never answers (frozen, half-partitioned) must not hang the hub.
_CONNECT_TIMEOUT_S = 5.0


class _Channel:
    __slots__ = ("lifecycle", "ready", "subs")

    def __init__(self, lifecycle: bool) -> None:
        self.lifecycle = lifecycle
        self.ready = False
        self.subs: set[Subscription] = set()

    def mark_ready(self) -> None:
        """Confirmed subscribed: every viewer replays from its cursor before going live."""
        self.ready = True
        for sub in self.subs:
            sub.lag()


class Subscription:
    """One viewer's bounded buffer of live messages."""

    __slots__ = ("_channel", "_items", "_stats", "_wake", "closed", "lagging", "limit", "reads")

    def __init__(
        self, channel: _Channel, limit: int, stats: Stats, reads: asyncio.Semaphore
    ) -> None:
        self._channel = channel
        self._stats = stats
        # Held around each log read of a catch-up; shared by all viewers of the process.
        self.reads = reads
        self._items: list[Message] = []
        self._wake = asyncio.Event()
        self.limit = limit
        # Every viewer starts by catching up from the log; see the module docstring.
        self.lagging = True
        self.closed = False

    @property
    def ready(self) -> bool:
        """Is the channel confirmed subscribed (so buffering now loses nothing)?"""
        return self._channel.ready

    def push(self, msg: Message) -> None:
        if self.lagging:
            return
        items = self._items
        if len(items) >= self.limit:
            self._items = []
            self.lagging = True
            self._stats.overflows += 1
        else:
            items.append(msg)
            if len(items) > self._stats.buffer_high:
                self._stats.buffer_high = len(items)
        self._wake.set()

    def lag(self) -> None:
        self._items = []
        self.lagging = True
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def restart(self) -> None:
        """Start buffering again; the caller replays the log next."""
        self._items = []
        self.lagging = False

    def take(self) -> list[Message]:
        items, self._items = self._items, []
        return items

    def _actionable(self) -> bool:
        return bool(self._items) or self.closed or (self.lagging and self._channel.ready)

    async def wait(self, timeout: float) -> bool:
        """Wait until there is something to do; False when `timeout` passed first."""
        if self._actionable():
            return True
        self._wake.clear()
        try:
            async with asyncio.timeout(timeout):
                while not self._actionable():
                    self._wake.clear()
                    await self._wake.wait()
        except TimeoutError:
            return False
        return True


class Hub:
    """Owns the process's pub/sub connection and the viewers' subscriptions."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        buffer: int,
        stats: Stats,
        ping_interval: float = 5.0,
        max_backoff: float = 2.0,
        concurrent_reads: int = 32,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._limit = buffer
        self.stats = stats
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff
        # After a reconnect every viewer catches up at once; bounding the concurrent log reads
        # keeps that herd from opening a Redis connection per viewer.
        self._reads = asyncio.Semaphore(concurrent_reads)
        self._lifecycle_name = keys.runs_channel.encode()
        self._channels: dict[bytes, _Channel] = {}
        self._sent: set[bytes] = set()  # SUBSCRIBE sent on this connection, no UNSUBSCRIBE since
        self._pending: dict[bytes, int] = {}  # SUBSCRIBEs not yet confirmed
        self._changed: set[bytes] = set()
        self._dirty = asyncio.Event()
        self._last_rx = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False

    # -- viewers ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(self, channel: str) -> Iterator[Subscription]:
        """A bounded subscription to `channel` for one viewer, released on exit."""
        name = channel.encode()
        entry = self._channels.get(name)
        if entry is None:
            entry = self._channels[name] = _Channel(lifecycle=name == self._lifecycle_name)
            # Still subscribed on the server (its UNSUBSCRIBE was not sent yet): live at once.
            entry.ready = self.connected and name in self._sent and name not in self._pending
            self._changed.add(name)
            self._dirty.set()
        sub = Subscription(entry, self._limit, self.stats, self._reads)
        if self._closing:
            sub.closed = True
        entry.subs.add(sub)
        try:
            yield sub
        finally:
            entry.subs.discard(sub)
            if not entry.subs and self._channels.get(name) is entry:
                del self._channels[name]
                self._changed.add(name)
                self._dirty.set()

    def viewers(self, run_id: str) -> int:
        """Viewers of one run connected to this gateway process."""
        entry = self._channels.get(self._keys.run_channel(run_id).encode())
        return len(entry.subs) if entry else 0

    def count_viewers(self, lifecycle: bool = False) -> int:
        return sum(len(e.subs) for e in self._channels.values() if e.lifecycle is lifecycle)

    def count_channels(self) -> int:
        return len(self._sent)

    def end_viewers(self) -> None:
        """Ask every viewer's stream to finish (shutdown); new ones end at once."""
        self._closing = True
        for entry in self._channels.values():
            for sub in entry.subs:
                sub.close()

    # -- lifetime --------------------------------------------------------------------------------

    def start(self) -> None:
        assert self._task is None, "hub already started"
        self._task = asyncio.create_task(self._run(), name="tidings-gateway-pubsub")

    async def close(self, timeout: float = 5.0) -> None:
        self.end_viewers()
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel("gateway shutting down")
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            log.warning("pub/sub reader did not stop within %.1fs", timeout)
        elif not task.cancelled() and task.exception() is not None:
            log.error("pub/sub reader failed", exc_info=task.exception())

    async def _run(self) -> None:
        delay = 0.05
        ever_connected = False
        while not self._closing:
            conn = self._redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
            up = False
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    await conn.connect()
                up = True
                if ever_connected:
                    self.stats.pubsub_reconnects += 1
                    log.warning(
                        "pub/sub reconnected; resubscribing %d channel(s)", len(self._channels)
                    )
                ever_connected = True
                delay = 0.05
                await self._session(conn)
            except REDIS_DOWN as exc:
                # Loud once per outage, quiet while retrying.
                level = logging.WARNING if up or not ever_connected else logging.DEBUG
                log.log(level, "pub/sub connection lost (%s); retrying in %.2fs", exc, delay)
            except Exception:
                # A bug must not silently end live delivery for the whole process: log, reconnect.
                log.exception("pub/sub session failed; reconnecting in %.2fs", delay)
            finally:
                self._lost()
                await conn.disconnect(nowait=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    def _lost(self) -> None:
        self.connected = False
        self._sent.clear()
        self._pending.clear()
        for entry in self._channels.values():
            entry.ready = False

    async def _session(self, conn: AbstractConnection) -> None:
        self.connected = True
        self._last_rx = asyncio.get_running_loop().time()
        self._changed = set(self._channels)
        self._dirty.set()
        writer = asyncio.create_task(self._writer(conn), name="tidings-gateway-pubsub-writer")
        try:
            await self._reader(conn)
        finally:
            writer.cancel()
            await asyncio.wait({writer})
            if not writer.cancelled() and writer.exception() is not None:
                log.warning("pub/sub writer stopped: %s", writer.exception())

    async def _writer(self, conn: AbstractConnection) -> None:
        """Sends SUBSCRIBE/UNSUBSCRIBE as channels change, PING when idle."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    async with asyncio.timeout(self._ping_interval):
                        await self._dirty.wait()
                except TimeoutError:
                    if loop.time() - self._last_rx > 3 * self._ping_interval:
                        raise RedisTimeoutError("pub/sub connection silent") from None
                    await conn.send_command("PING", check_health=False)
                    continue
                self._dirty.clear()
                changed, self._changed = self._changed, set()
                add = [c for c in changed if c in self._channels and c not in self._sent]
                drop = [c for c in changed if c not in self._channels and c in self._sent]
                if add:
                    for name in add:
                        self._pending[name] = self._pending.get(name, 0) + 1
                    self._sent.update(add)
                    await conn.send_command("SUBSCRIBE", *add, check_health=False)
                if drop:
                    self._sent.difference_update(drop)
                    await conn.send_command("UNSUBSCRIBE", *drop, check_health=False)
        except REDIS_DOWN:
            # Closing the connection makes the reader fail too, which ends the session.
            await conn.disconnect(nowait=True)
            raise

    async def _reader(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        channels = self._channels
        stats = self.stats
        while True:
            resp = await conn.read_response()
            self._last_rx = loop.time()
            if not isinstance(resp, list) or not resp:
                continue
            kind = resp[0]
            if kind == b"message":
                entry = channels.get(resp[1])
                if entry is None or not entry.subs:
                    continue
                data: bytes = resp[2]
                if entry.lifecycle:
                    stats.summaries_received += 1
                    msg: Message | None = summary_message(data)
                else:
                    stats.events_received += 1
                    msg = event_message(data)
                if msg is not None:
                    for sub in entry.subs:
                        sub.push(msg)
            elif kind == b"subscribe":
                self._confirmed(resp[1])

    def _confirmed(self, name: bytes) -> None:
        left = self._pending.get(name, 0) - 1
        if left > 0:
            self._pending[name] = left
            return
        self._pending.pop(name, None)
        entry = self._channels.get(name)
        if entry is not None and name in self._sent:
            entry.mark_ready()
