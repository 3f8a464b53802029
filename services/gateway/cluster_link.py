"""One cluster node's sharded pub/sub connection, for `ClusterSource` (`cluster_source.py`).

A `NodeLink` holds the channels routed to one primary and keeps a raw redis-py `Connection` to it
while it has any: SSUBSCRIBE/SUNSUBSCRIBE reconciled by one writer (as `PubSubSource` does for
SUBSCRIBE), a PING deadline, bounded reconnect backoff. What concerns the whole cluster (where a
channel goes when this node stops owning it) is left to its `LinkOwner`.

Decisions worth knowing:

- One SSUBSCRIBE per channel: channels of different slots in one command would be refused
  (CROSSSLOT), and one command per channel makes each reply, error included, belong to one
  channel. A FIFO of what was sent pairs replies with commands, so a MOVED answers a known
  channel, and a `sunsubscribe` that is not the reply to our SUNSUBSCRIBE is the server's own
  (its slot went elsewhere).
- `on_ready` only after the node confirmed; when the connection ends, the channels that were
  subscribed on it are reported lost (`on_lost_channels`), those alone.
- With nothing wanted for a whole ping interval the writer ends the session and the link ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .metrics import Stats
from .source import REDIS_DOWN, SourceEvents

__all__ = ["LinkOwner", "NodeLink"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5.0
_FIRST_DELAY_S = 0.05


class LinkOwner(Protocol):
    def link_changed(self, link: NodeLink, *, failed: bool) -> None:
        """The link connected, or lost its connection (`failed`: the node may be gone)."""

    def link_ended(self, link: NodeLink) -> None:
        """The link stops: nothing is wanted from its node any more."""

    def channel_gone(self, link: NodeLink, channel: bytes, moved: tuple[int, str] | None) -> None:
        """The node dropped or refused a wanted channel; `moved`: (slot, owner) from a MOVED."""


class NodeLink:
    """The channels routed to one node and the state of the connection to it."""

    def __init__(
        self,
        address: str,
        connect: Callable[[], Connection],
        events: SourceEvents,
        owner: LinkOwner,
        stats: Stats,
        *,
        ping_interval: float,
        max_backoff: float,
    ) -> None:
        self.address = address
        self._connect = connect
        self._events = events
        self._owner = owner
        self._stats = stats
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff
        self.wanted: set[bytes] = set()  # routed here
        self.sent: set[bytes] = set()  # SSUBSCRIBE sent on this connection, no SUNSUBSCRIBE since
        self.pending: dict[bytes, int] = {}  # SSUBSCRIBEs not yet confirmed
        self._inflight: deque[tuple[bytes, bytes | None]] = deque()  # commands awaiting replies
        self._changed: set[bytes] = set()
        self._dirty = asyncio.Event()
        self.connected = False
        self.down = False  # the last connection attempt or session failed
        self._last_rx = 0.0
        self.task = asyncio.create_task(self._run(), name=f"tidings-gateway-spubsub-{address}")

    def touch(self, channel: bytes) -> None:
        """`channel` joined or left `wanted` (or must be subscribed again)."""
        self._changed.add(channel)
        self._dirty.set()

    def forget(self, channel: bytes) -> None:
        """The node no longer has `channel` subscribed (it dropped or refused it)."""
        self.sent.discard(channel)
        self.pending.pop(channel, None)

    def is_live(self, channel: bytes) -> bool:
        return self.connected and channel in self.sent and channel not in self.pending

    async def _run(self) -> None:
        delay = _FIRST_DELAY_S
        ever_connected = False
        try:
            while True:
                conn = self._connect()
                up = failed = False
                try:
                    async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                        await conn.connect()  # type: ignore[no-untyped-call]
                    up = True
                    if ever_connected:
                        self._stats.pubsub_reconnects += 1
                    ever_connected = True
                    self.down = False
                    delay = _FIRST_DELAY_S
                    await self._session(conn)
                except REDIS_DOWN as exc:
                    failed = True
                    level = logging.WARNING if up or not ever_connected else logging.DEBUG
                    log.log(level, "sharded pub/sub at %s lost (%s)", self.address, exc)
                except Exception:
                    failed = True
                    log.exception("sharded pub/sub session at %s failed", self.address)
                finally:
                    self._lost()
                    await conn.disconnect(nowait=True)
                if failed:
                    self.down = True
                    self._owner.link_changed(self, failed=True)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._max_backoff)
                if not self.wanted:
                    break
        finally:
            self._owner.link_ended(self)

    def _lost(self) -> None:
        lost = [c for c in self.sent if c in self.wanted]
        self.connected = False
        self.sent.clear()
        self.pending.clear()
        self._inflight.clear()
        if lost:
            self._events.on_lost_channels(lost)

    async def _session(self, conn: Connection) -> None:
        self.connected = True
        self._last_rx = asyncio.get_running_loop().time()
        self._changed = set(self.wanted)
        self._dirty.set()
        self._owner.link_changed(self, failed=False)
        reader = asyncio.create_task(self._reader(conn), name="tidings-spubsub-reader")
        writer = asyncio.create_task(self._writer(conn), name="tidings-spubsub-writer")
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            writer.cancel()
            await asyncio.wait({reader, writer})
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc

    async def _writer(self, conn: Connection) -> None:
        """Sends SSUBSCRIBE/SUNSUBSCRIBE as channels change, PING when idle; returns (ending the
        session) once the node has been left with nothing for a whole ping interval."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(self._ping_interval):
                    await self._dirty.wait()
            except TimeoutError:
                if not self.wanted and not self.sent:
                    return
                if loop.time() - self._last_rx > 3 * self._ping_interval:
                    raise RedisTimeoutError(f"{self.address} silent") from None
                self._inflight.append((b"ping", None))
                await conn.send_command("PING", check_health=False)
                continue
            self._dirty.clear()
            changed, self._changed = self._changed, set()
            commands: list[tuple[bytes, bytes]] = []
            for name in changed:
                if name in self.wanted and name not in self.sent:
                    self.pending[name] = self.pending.get(name, 0) + 1
                    self.sent.add(name)
                    self._inflight.append((b"ssubscribe", name))
                    commands.append((b"SSUBSCRIBE", name))
                elif name not in self.wanted and name in self.sent:
                    self.sent.discard(name)
                    self._inflight.append((b"sunsubscribe", name))
                    commands.append((b"SUNSUBSCRIBE", name))
            if commands:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def _reader(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        on_message = self._events.on_message
        inflight = self._inflight
        while True:
            try:
                resp = await conn.read_response()
            except ResponseError as exc:
                self._last_rx = loop.time()
                self._refused(exc)
                continue
            self._last_rx = loop.time()
            if isinstance(resp, list) and resp:
                kind = resp[0]
                if kind == b"smessage":
                    on_message(resp[1], resp[2])
                    continue
                if kind == b"sunsubscribe" and (
                    not inflight or inflight[0] != (b"sunsubscribe", resp[1])
                ):
                    self._dropped(resp[1])
                    continue
            if inflight:
                sent, name = inflight.popleft()
                if sent == b"ssubscribe" and name is not None:
                    self._confirmed(name)

    def _confirmed(self, name: bytes) -> None:
        left = self.pending.get(name, 0) - 1
        if left > 0:
            self.pending[name] = left
            return
        self.pending.pop(name, None)
        if name in self.sent and name in self.wanted:
            self._events.on_ready(name)

    def _dropped(self, name: bytes) -> None:
        """The node unsubscribed us by itself: the channel's slot is served elsewhere now."""
        if name not in self.sent or name not in self.wanted:
            self.sent.discard(name)
            return
        log.info("%s dropped %r (its slot moved); finding the new owner", self.address, name)
        self._owner.channel_gone(self, name, None)

    def _refused(self, exc: ResponseError) -> None:
        sent, name = self._inflight.popleft() if self._inflight else (b"", None)
        if sent != b"ssubscribe" or name is None:
            log.warning("%s refused %s: %s", self.address, sent.decode() or "a command", exc)
            return
        if name not in self.wanted:
            self.forget(name)
            return
        words = str(exc).split()
        if len(words) == 3 and words[0] == "MOVED" and words[1].isdigit():
            where = words[2]
            if where.startswith(":"):  # the node's own host
                where = self.address.rpartition(":")[0] + where
            self._owner.channel_gone(self, name, (int(words[1]), where))
            return
        log.warning("%s refused SSUBSCRIBE %r: %s", self.address, name, exc)
        self._owner.channel_gone(self, name, None)
