"""The doorbell on a Redis Cluster: every bucket's wake channel, SSUBSCRIBEd where its slot lives.

In a cluster the doorbell is sharded pub/sub: a run's enqueue script SPUBLISHes on the wake
channel of the run's bucket (`Keys.wake_channel_in`), and only the primary owning that channel's
slot delivers it, to its own SSUBSCRIBErs (a plain SUBSCRIBE never sees it). So the worker holds
one raw connection per primary owning some wake channel and subscribes each channel there.

Decisions worth knowing:
- redis-py's asyncio cluster client has no sharded pub/sub, so the connections are plain
  `redis.asyncio.Connection`s speaking SSUBSCRIBE, named like the worker's other connections
  (`liveness` counts them too). One SSUBSCRIBE per channel: the buckets' channels are in
  different slots, and one command with several would be refused (CROSSSLOT).
- The slot map comes from CLUSTER NODES (parsed by `tidings.cluster_view`), asked of the nodes
  the last map named, then of the node `REDIS_URL` names.
- One session covers every channel: it is ready (the worker registers and the dispatcher polls)
  once every node confirmed every channel. Anything that may have moved a channel ends the whole
  session, which reads the map again and subscribes everything anew: a connection lost or silent
  past its PING deadline (a primary died: its replica is promoted meanwhile), a MOVED answering
  an SSUBSCRIBE (a stale map), a `sunsubscribe` the server sends by itself (its slot went
  elsewhere: failover, resharding). Cheap: a few dozen channels. The doorbell is best-effort:
  the dispatcher's poll finds whatever was offered while a session was being rebuilt, and each
  new session wakes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import Connection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tidings.cluster_view import ask_nodes
from tidings.slots import key_slot

__all__ = ["ShardedDoorbell"]

logger = logging.getLogger(__name__)

_TIMEOUT_S = 2.0  # connecting, reading the map, each confirmation
_PING_S = 2.0  # a silent connection is pinged this often and given up after three periods


class _Moved(Exception):
    """A channel is not (or no longer) served where it was subscribed: read the map again."""


class ShardedDoorbell:
    """One worker's sharded subscriptions to `channels`. `on_message(data)` for each message;
    `on_ready()` each time every channel is subscribed again (after a start or a change)."""

    def __init__(
        self,
        url: str,
        channels: list[str],
        client_name: str,
        on_message: Callable[[bytes], None],
        on_ready: Callable[[], Any],
    ) -> None:
        kwargs: dict[str, Any] = dict(parse_url(url))
        host, port = str(kwargs.pop("host", "127.0.0.1")), int(kwargs.pop("port", 6379))
        kwargs.pop("db", None)  # a cluster has database 0 only
        kwargs.pop("path", None)
        self._conn_class: type[Connection] = kwargs.pop("connection_class", Connection)
        self._kwargs = {**kwargs, "client_name": client_name}
        self._startup = f"{host}:{port}"
        self._known: list[str] = []
        self.channels = [c.encode() for c in channels]
        self._on_message = on_message
        self._on_ready = on_ready
        self.nodes: dict[str, list[bytes]] = {}  # the live session's node → its channels

    def _connection(self, address: str) -> Connection:
        host, _, port = address.rpartition(":")
        return self._conn_class(host=host, port=int(port), **self._kwargs)

    async def session(self) -> None:
        """Read the map, subscribe every channel, deliver until something moves; then returns
        (or raises on a connection error), and the caller starts the next one."""
        route = await self._route()
        conns: dict[str, Connection] = {}
        try:
            for address, channels in route.items():
                conn = conns[address] = self._connection(address)
                async with asyncio.timeout(_TIMEOUT_S):
                    await conn.connect()  # type: ignore[no-untyped-call]
                    for channel in channels:
                        await conn.send_command("SSUBSCRIBE", channel, check_health=False)
                    await self._confirmed(conn, set(channels))
            self.nodes = route
            await self._on_ready()
            await self._deliver(conns)
        except _Moved as exc:
            logger.info("doorbell: %s; reading the slot map again", exc)
        finally:
            self.nodes = {}
            for conn in conns.values():
                await conn.disconnect(nowait=True)

    async def _route(self) -> dict[str, list[bytes]]:
        """Each primary's channels, from the first node that answers CLUSTER NODES."""
        failures: list[str] = []
        for address in dict.fromkeys([*self._known, self._startup]):
            try:
                async with asyncio.timeout(_TIMEOUT_S):
                    nodes = await ask_nodes(self._connection(address))
            except (OSError, RedisError, TimeoutError) as exc:
                failures.append(f"{address}: {exc}")
                continue
            self._known = [n.address for n in nodes.values() if n.settled]
            owners = {
                (low, high): n.address
                for n in nodes.values()
                if n.is_primary and n.settled
                for low, high in n.slots
            }
            route: dict[str, list[bytes]] = {}
            for channel in self.channels:
                slot = key_slot(channel)
                owner = next((a for (lo, hi), a in owners.items() if lo <= slot <= hi), None)
                if owner is None:  # its primary failed, no replica promoted yet
                    raise RedisConnectionError(f"no primary serves slot {slot} (yet)")
                route.setdefault(owner, []).append(channel)
            return route
        raise RedisConnectionError("no cluster node answered CLUSTER NODES: " + "; ".join(failures))

    async def _confirmed(self, conn: Connection, pending: set[bytes]) -> None:
        while pending:
            reply = await self._read(conn)
            if isinstance(reply, list) and reply[:1] == [b"ssubscribe"]:
                pending.discard(reply[1])

    async def _read(self, conn: Connection) -> Any:
        """One reply; messages are delivered on the way, and what means "moved" raises."""
        while True:
            try:
                reply = await conn.read_response()
            except ResponseError as exc:  # MOVED (a stale map), or the node refused
                raise _Moved(f"SSUBSCRIBE refused: {exc}") from None
            if isinstance(reply, list) and reply[:1] == [b"smessage"]:
                self._on_message(reply[2])
                continue
            if isinstance(reply, list) and reply[:1] == [b"sunsubscribe"]:
                raise _Moved(f"the server unsubscribed {reply[1]!r} (its slot moved)")
            return reply

    async def _deliver(self, conns: dict[str, Connection]) -> None:
        """Read every connection until one ends the session; PING the silent ones."""
        loop = asyncio.get_running_loop()
        heard = dict.fromkeys(conns, loop.time())

        async def read(address: str, conn: Connection) -> None:
            while True:
                await self._read(conn)  # confirmations and pongs: the connection is alive
                heard[address] = loop.time()

        async def ping() -> None:
            while True:
                await asyncio.sleep(_PING_S)
                for address, conn in conns.items():
                    if loop.time() - heard[address] > 3 * _PING_S:
                        raise RedisTimeoutError(f"doorbell connection to {address} went silent")
                    await conn.send_command("PING", check_health=False)

        tasks = [asyncio.create_task(read(a, c), name=f"doorbell:{a}") for a, c in conns.items()]
        tasks.append(asyncio.create_task(ping(), name="doorbell-ping"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
