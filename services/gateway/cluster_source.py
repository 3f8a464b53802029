"""Where the hub's messages come from on a Redis/Valkey Cluster: sharded pub/sub (SSUBSCRIBE),
one raw connection per primary that owns at least one wanted channel.

Same guarantees as `PubSubSource`, per channel: `on_ready` only once the owning node confirmed the
SSUBSCRIBE, and `on_lost_channels` for exactly the channels whose messages may have been missed.

Decisions worth knowing:

- redis-py's asyncio client has no sharded pub/sub (no `ssubscribe`, no `pubsub()` on the async
  `RedisCluster`), so each node gets a `NodeLink` (`cluster_link.py`): a plain `Connection`
  speaking SSUBSCRIBE/SUNSUBSCRIBE, its own writer (no churn when a channel is released and
  wanted again at once), PING deadline and bounded reconnect backoff. A node left with nothing
  wanted closes its connection after one ping interval of idleness. This module does routing.
- A channel is routed by its key slot (`tidings.slots.key_slot`, hash tags included) to the primary
  that owns the slot in CLUSTER NODES (parsed by `tidings.cluster_view`), read from a node we are
  connected to, else a startup node, else any node seen before. A primary flagged failed (or not
  yet known) owns nothing: its channels wait where they are until the map names a new owner; a
  map that names none never disturbs a working subscription.
- Ownership changes reach us three ways: a dropped connection (primary died: its channels are
  lost, the map is read again until a replica is promoted), a MOVED reply to SSUBSCRIBE (we asked
  a node that no longer owns the slot: the reply names the owner), and a `sunsubscribe` the
  server sends by itself when its slot goes elsewhere (failover or CLUSTER SETSLOT). The channel
  is reported lost, subscribed at the owner, and reported ready once that node confirms; the hub
  makes its viewers catch up from the log.
- `connected` (readiness, metrics): a slot map was read and the last read worked, every wanted
  channel has an owner, and no node owning a wanted channel is failing to connect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from redis.asyncio.connection import Connection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tidings.cluster_view import NodeEntry, ask_nodes
from tidings.slots import SLOTS, key_slot

from .cluster_link import NodeLink
from .metrics import Stats
from .source import REDIS_DOWN, SourceEvents

__all__ = ["ClusterSource"]

log = logging.getLogger(__name__)

_MAP_TIMEOUT_S = 2.0
_MAP_GAP_S = 0.05  # at most one slot-map read per gap, however many channels moved


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class ClusterSource:
    """Sharded pub/sub over the cluster's primaries; a `Source` for the hub."""

    def __init__(
        self,
        startup: Sequence[tuple[str, int]],
        stats: Stats,
        *,
        connection_kwargs: Mapping[str, Any] | None = None,
        ping_interval: float = 5.0,
        max_backoff: float = 2.0,
    ) -> None:
        if not startup:
            raise ValueError("a cluster source needs at least one startup node")
        self._startup = [f"{host}:{port}" for host, port in startup]
        kwargs = dict(connection_kwargs or {})
        self._conn_class: type[Connection] = kwargs.pop("connection_class", Connection)
        self._kwargs = kwargs
        self._stats = stats
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff
        self._owners: list[str | None] = [None] * SLOTS
        self._known: list[str] = []  # every node the last map named
        self._map_ok = False
        self._map_down = False
        self._wanted: set[bytes] = set()
        self._route: dict[bytes, str] = {}  # channel -> address; invariant: in that node's wanted
        self._unrouted: set[bytes] = set()  # wanted, no owner known yet
        self._nodes: dict[str, NodeLink] = {}
        self._refresh = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None
        self._events: SourceEvents | None = None
        self._closing = False
        self.connected = False

    @classmethod
    def from_url(
        cls, url: str, stats: Stats, *, ping_interval: float = 5.0, max_backoff: float = 2.0
    ) -> ClusterSource:
        """From `REDIS_URL` naming one node of the cluster (credentials and TLS apply to all)."""
        kwargs: dict[str, Any] = dict(parse_url(url))
        host = str(kwargs.pop("host", "127.0.0.1"))
        port = int(kwargs.pop("port", 6379))
        kwargs.pop("db", None)  # a cluster has database 0 only
        kwargs.pop("path", None)
        return cls(
            [(host, port)],
            stats,
            connection_kwargs=kwargs,
            ping_interval=ping_interval,
            max_backoff=max_backoff,
        )

    # -- Source ----------------------------------------------------------------------------------

    def want(self, channel: bytes) -> None:
        if channel in self._wanted:
            return
        self._wanted.add(channel)
        self._place(channel)

    def unwant(self, channel: bytes) -> None:
        self._wanted.discard(channel)
        self._unrouted.discard(channel)
        self._detach(channel, subscribed=True)
        self._update()

    def is_live(self, channel: bytes) -> bool:
        """Subscribed and confirmed on a connection now. Asked about a channel just unwanted
        whose SUNSUBSCRIBE is not sent yet (the hub's last viewer left, a new one came), the
        answer is its node's: still subscribed there, so live; routing alone (which forgets the
        channel on unwant) would say no, and the want that follows sends nothing the hub could
        wait on."""
        address = self._route.get(channel) or self._owners[key_slot(channel)] or ""
        node = self._nodes.get(address)
        return node is not None and node.is_live(channel)

    def count_channels(self) -> int:
        return sum(len(node.sent) for node in self._nodes.values())

    def connections(self) -> list[str]:
        """Addresses of the nodes this source is connected to now."""
        return sorted(a for a, node in self._nodes.items() if node.connected)

    def start(self, events: SourceEvents) -> None:
        assert self._refresher is None, "source already started"
        self._events = events
        self._refresh.set()
        self._refresher = asyncio.create_task(self._refreshing(), name="tidings-gateway-slots")

    async def close(self, timeout: float) -> None:
        self._closing = True
        tasks = {node.task for node in self._nodes.values()}
        if self._refresher is not None:
            tasks.add(self._refresher)
        self._refresher = None
        if not tasks:
            return
        for task in tasks:
            task.cancel("gateway shutting down")
        done, left = await asyncio.wait(tasks, timeout=timeout)
        if left:
            log.warning("%d sharded pub/sub task(s) did not stop within %.1fs", len(left), timeout)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("sharded pub/sub task failed", exc_info=task.exception())

    # -- routing ---------------------------------------------------------------------------------

    def _place(self, channel: bytes) -> None:
        """Route a wanted, unrouted channel to its slot's owner (or wait for a map naming one)."""
        owner = self._owners[key_slot(channel)]
        if owner is None or self._events is None or self._closing:
            self._unrouted.add(channel)
            self._refresh.set()
        else:
            self._unrouted.discard(channel)
            self._route[channel] = owner
            node = self._nodes.get(owner)
            if node is None:
                node = self._nodes[owner] = NodeLink(
                    owner,
                    partial(self._connection, owner),
                    self._events,
                    self,
                    self._stats,
                    ping_interval=self._ping_interval,
                    max_backoff=self._max_backoff,
                )
            node.wanted.add(channel)
            node.touch(channel)
        self._update()

    def _detach(self, channel: bytes, *, subscribed: bool) -> bool:
        """Take a channel off its node; True if it may have been ready there. `subscribed`: the
        node still has it (its writer sends SUNSUBSCRIBE), else the server already dropped it."""
        node = self._nodes.get(self._route.pop(channel, ""))
        if node is None:
            return False
        node.wanted.discard(channel)
        was = channel in node.sent
        if not subscribed:
            node.forget(channel)
        node.touch(channel)
        return was

    def _move(self, channels: list[bytes], *, subscribed: bool) -> None:
        """Channels whose owner changed: lost where they were, placed at the owner now known."""
        lost = [c for c in channels if self._detach(c, subscribed=subscribed)]
        if lost and self._events is not None:
            self._events.on_lost_channels(lost)
        for channel in channels:
            if channel in self._wanted:
                self._place(channel)

    def _apply_map(self) -> None:
        moved = [
            channel
            for channel, address in self._route.items()
            if (owner := self._owners[key_slot(channel)]) is not None and owner != address
        ]
        if moved:
            log.info("%d channel(s) changed owner; resubscribing at the new owners", len(moved))
            self._move(moved, subscribed=True)
        for channel in list(self._unrouted):
            self._place(channel)
        self._update()

    def _update(self) -> None:
        self.connected = (
            self._map_ok
            and not self._map_down
            and not self._unrouted
            and not any(node.down and node.wanted for node in self._nodes.values())
        )

    # -- the slot map ----------------------------------------------------------------------------

    async def _refreshing(self) -> None:
        delay = _MAP_GAP_S
        while True:
            await self._refresh.wait()
            self._refresh.clear()
            try:
                owners, known = await self._read_map()
            except Exception as exc:
                # Never ends: without the map no channel would move again.
                self._map_down = True
                down = isinstance(exc, REDIS_DOWN)
                log.warning("cluster slot map unreadable (%s)", exc, exc_info=not down)
            else:
                self._owners, self._known = owners, known
                self._map_ok, self._map_down = True, False
                self._apply_map()
            if self._map_down or self._unrouted:
                self._refresh.set()  # try again, backing off, until every channel has an owner
                delay = min(delay * 2, self._max_backoff)
            else:
                delay = _MAP_GAP_S
            self._update()
            await asyncio.sleep(delay)

    async def _read_map(self) -> tuple[list[str | None], list[str]]:
        candidates = [a for a, node in self._nodes.items() if node.connected]
        candidates += self._startup + self._known
        problems = []
        for address in dict.fromkeys(candidates):
            try:
                nodes = await self._cluster_nodes(address)
            except (*REDIS_DOWN, ResponseError) as exc:
                problems.append(f"{address}: {exc}")
                continue
            host = _split(address)[0]
            owners: list[str | None] = [None] * SLOTS
            known = []
            for entry in nodes.values():
                where = entry.address if not entry.address.startswith(":") else host + entry.address
                if entry.settled:
                    known.append(where)
                if entry.is_primary and entry.settled:
                    for low, high in entry.slots:
                        owners[low : high + 1] = [where] * (high - low + 1)
            return owners, known
        raise RedisConnectionError("no cluster node answered CLUSTER NODES: " + "; ".join(problems))

    async def _cluster_nodes(self, address: str) -> dict[str, NodeEntry]:
        try:
            async with asyncio.timeout(_MAP_TIMEOUT_S):
                return await ask_nodes(self._connection(address))
        except TimeoutError:
            raise RedisTimeoutError(f"{address} did not answer CLUSTER NODES") from None

    def _connection(self, address: str) -> Connection:
        host, port = _split(address)
        return self._conn_class(host=host, port=port, **self._kwargs)

    # -- what the node links report ---------------------------------------------------------------

    def link_changed(self, link: NodeLink, *, failed: bool) -> None:
        if failed:
            self._refresh.set()  # the node may be gone for good: read the map again
        self._update()

    def link_ended(self, link: NodeLink) -> None:
        if self._nodes.get(link.address) is link and not link.wanted:
            del self._nodes[link.address]
        self._update()

    def channel_gone(self, link: NodeLink, channel: bytes, moved: tuple[int, str] | None) -> None:
        if moved is not None:
            # The reply names the owner: take it for the slot at once, and read the rest anew.
            slot, owner = moved
            self._owners[slot] = owner
            self._refresh.set()
            self._move([channel], subscribed=False)
            return
        # Off its node (reported lost), waiting for the next map to place it.
        if self._detach(channel, subscribed=False) and self._events is not None:
            self._events.on_lost_channels([channel])
        self._unrouted.add(channel)
        self._refresh.set()
        self._update()
