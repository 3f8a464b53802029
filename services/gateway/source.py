"""Where the hub's messages come from: one Redis pub/sub connection per gateway process.

The hub talks to a `Source` only through this small interface (`want`, `unwant`, `is_live`,
`start`, `close`) and is told what happens through `SourceEvents`, so a source with one
connection per cluster node can stand in for this one without the hub changing.

Decisions worth knowing:

- The connection is our own (`pubsub_wire.py`, read in its protocol callback), not redis-py's
  `PubSub`: `PubSub` silently reconnects and resubscribes, which would hide the window in which
  messages were missed. Here a lost connection is reported (`on_lost`, every channel;
  `cluster_source.py`, one connection per cluster node, reports a node's channels alone with
  `on_lost_channels`), and after a reconnect each channel is reported ready again only once the
  server confirmed its SUBSCRIBE, so the hub can make its viewers catch up from the log.
- A single writer task reconciles "channels wanted" with "channels subscribed", so a channel
  released and wanted again at once causes no churn, and a SUBSCRIBE/UNSUBSCRIBE race can never
  mark a channel live before the server confirms it.
- A server that accepts TCP but never answers, or goes silent, is detected by a PING deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .metrics import Stats
from .pubsub_wire import PubSubWire, open_wire

__all__ = ["REDIS_DOWN", "PubSubSource", "Source", "SourceEvents"]

log = logging.getLogger(__name__)

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_CONNECT_TIMEOUT_S = 5.0


class SourceEvents(Protocol):
    """What a source reports to the hub. Called on the event loop, never concurrently."""

    def on_message(self, channel: bytes, data: bytes) -> None: ...

    def on_ready(self, channel: bytes) -> None:
        """`channel` is confirmed subscribed: from now on none of its messages is missed."""

    def on_lost(self) -> None:
        """Messages may have been missed on every channel; each gets `on_ready` again later."""

    def on_lost_channels(self, channels: Collection[bytes]) -> None:
        """Messages may have been missed on these channels only (one cluster node's connection
        dropped, or their slot moved); each still wanted gets `on_ready` again later."""


class Source(Protocol):
    connected: bool

    def want(self, channel: bytes) -> None: ...

    def unwant(self, channel: bytes) -> None: ...

    def is_live(self, channel: bytes) -> bool:
        """Subscribed and confirmed on the current connection (a fresh viewer can go live)."""

    def count_channels(self) -> int: ...

    def start(self, events: SourceEvents) -> None: ...

    async def close(self, timeout: float) -> None: ...


class PubSubSource:
    """One raw pub/sub connection, reconnected with backoff, channels reconciled by one writer."""

    def __init__(
        self,
        redis: Redis,
        stats: Stats,
        *,
        ping_interval: float = 5.0,
        max_backoff: float = 2.0,
    ) -> None:
        self._redis = redis
        self._stats = stats
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff
        self._wanted: set[bytes] = set()
        self._sent: set[bytes] = set()  # SUBSCRIBE sent on this connection, no UNSUBSCRIBE since
        self._pending: dict[bytes, int] = {}  # SUBSCRIBEs not yet confirmed
        self._changed: set[bytes] = set()
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._events: SourceEvents | None = None
        self._closing = False
        self.connected = False

    def want(self, channel: bytes) -> None:
        self._wanted.add(channel)
        self._changed.add(channel)
        self._dirty.set()

    def unwant(self, channel: bytes) -> None:
        self._wanted.discard(channel)
        self._changed.add(channel)
        self._dirty.set()

    def is_live(self, channel: bytes) -> bool:
        return self.connected and channel in self._sent and channel not in self._pending

    def count_channels(self) -> int:
        return len(self._sent)

    def start(self, events: SourceEvents) -> None:
        assert self._task is None, "source already started"
        self._events = events
        self._task = asyncio.create_task(self._run(), name="tidings-gateway-pubsub")

    async def close(self, timeout: float) -> None:
        self._closing = True
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
        pool = self._redis.connection_pool
        while not self._closing:
            wire: PubSubWire | None = None
            up = False
            try:
                wire = await open_wire(
                    pool.connection_class, pool.connection_kwargs, _CONNECT_TIMEOUT_S
                )
                up = True
                if ever_connected:
                    self._stats.pubsub_reconnects += 1
                    log.warning(
                        "pub/sub reconnected; resubscribing %d channel(s)", len(self._wanted)
                    )
                ever_connected = True
                delay = 0.05
                await self._session(wire)
            except REDIS_DOWN as exc:
                # Loud once per outage, quiet while retrying.
                level = logging.WARNING if up or not ever_connected else logging.DEBUG
                log.log(level, "pub/sub connection lost (%s); retrying in %.2fs", exc, delay)
            except Exception:
                # A bug must not silently end live delivery for the whole process: log, reconnect.
                log.exception("pub/sub session failed; reconnecting in %.2fs", delay)
            finally:
                self._lost()
                if wire is not None:
                    wire.abort()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    def _lost(self) -> None:
        was = self.connected
        self.connected = False
        self._sent.clear()
        self._pending.clear()
        if was and self._events is not None:
            self._events.on_lost()

    async def _session(self, wire: PubSubWire) -> None:
        self.connected = True
        self._changed = set(self._wanted)
        self._dirty.set()
        wire.on_reply = self._reply  # from now on, in the protocol's callback
        writer = asyncio.create_task(self._writer(wire), name="tidings-gateway-pubsub-writer")
        try:
            await wire.closed  # raises why the connection ended
        finally:
            writer.cancel()
            await asyncio.wait({writer})
            if not writer.cancelled() and writer.exception() is not None:
                log.warning("pub/sub writer stopped: %s", writer.exception())

    async def _writer(self, wire: PubSubWire) -> None:
        """Sends SUBSCRIBE/UNSUBSCRIBE as channels change, PING when idle."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    async with asyncio.timeout(self._ping_interval):
                        await self._dirty.wait()
                except TimeoutError:
                    if loop.time() - wire.last_rx > 3 * self._ping_interval:
                        raise RedisTimeoutError("pub/sub connection silent") from None
                    wire.send("PING")
                    continue
                self._dirty.clear()
                changed, self._changed = self._changed, set()
                add = [c for c in changed if c in self._wanted and c not in self._sent]
                drop = [c for c in changed if c not in self._wanted and c in self._sent]
                if add:
                    for name in add:
                        self._pending[name] = self._pending.get(name, 0) + 1
                    self._sent.update(add)
                    wire.send("SUBSCRIBE", *add)
                if drop:
                    self._sent.difference_update(drop)
                    wire.send("UNSUBSCRIBE", *drop)
        except REDIS_DOWN:
            # Closing the connection fails `wire.closed` too, which ends the session.
            wire.abort()
            raise

    def _reply(self, reply: object) -> None:
        """A reply read on the session's connection (`PubSubWire`), in order."""
        if type(reply) is not list or not reply:
            return
        kind = reply[0]
        if kind == b"message":
            events = self._events
            assert events is not None
            events.on_message(reply[1], reply[2])
        elif kind == b"subscribe":
            self._confirmed(reply[1])

    def _confirmed(self, name: bytes) -> None:
        left = self._pending.get(name, 0) - 1
        if left > 0:
            self._pending[name] = left
            return
        self._pending.pop(name, None)
        if name in self._sent and name in self._wanted and self._events is not None:
            self._events.on_ready(name)
