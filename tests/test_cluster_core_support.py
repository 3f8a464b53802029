"""Listening to a channel in either keyspace, for the core's tests (no tests of its own).

A single Redis: a plain SUBSCRIBE through redis-py's pub/sub. A cluster: the channel is sharded,
so a raw connection to the node that owns its slot SSUBSCRIBEs (redis-py's asyncio cluster
client has no sharded pub/sub; PSUBSCRIBE/SUBSCRIBE would never see an SPUBLISHed message).
`Listener.next` reads the payload of the next message, None when none came in `timeout`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Connection, Redis, RedisCluster
from redis.asyncio.client import PubSub

__all__ = ["Listener", "listening"]


class Listener:
    """One subscribed channel: a pub/sub of a single Redis, or a raw sharded connection."""

    def __init__(self, pubsub: PubSub | None, conn: Connection | None) -> None:
        self._pubsub = pubsub
        self._conn = conn

    async def next(self, timeout: float = 2.0) -> bytes | None:
        if self._pubsub is not None:
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
            return None if msg is None else bytes(msg["data"])
        assert self._conn is not None
        reply = await self._conn.read_response(timeout=timeout)  # None when it timed out
        if reply is None:
            return None
        kind, _, data = reply
        assert kind == b"smessage", reply
        return bytes(data)


@asynccontextmanager
async def listening(redis: Redis, channel: str) -> AsyncIterator[Listener]:
    """Subscribed to `channel` (confirmed) until the block ends."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # the slot map, should the client not have read it yet
        node = redis.get_node_from_key(channel)
        conn = Connection(host=node.host, port=node.port)
        await conn.connect()
        try:
            await conn.send_command("SSUBSCRIBE", channel)
            reply = await conn.read_response(timeout=5)
            assert reply == [b"ssubscribe", channel.encode(), 1], reply
            yield Listener(None, conn)
        finally:
            await conn.disconnect()
        return
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(channel)
        confirmed = await pubsub.get_message(timeout=5)
        assert confirmed is not None and confirmed["type"] == "subscribe", confirmed
        yield Listener(pubsub, None)
    finally:
        await pubsub.aclose()
