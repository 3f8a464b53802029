"""Waiting for pub/sub messages with a deadline, timestamped on arrival, and for workers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from tidings.jobs import workers_listening
from tidings.keys import Keys

from .harness import BenchError

__all__ = ["next_matching", "wait_workers"]


async def next_matching(
    pubsub: PubSub, match: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> tuple[float, dict[str, Any]]:
    """(monotonic arrival time, message JSON) of the next message `match` accepts."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, 1.0))
        if msg is None or msg["type"] not in ("message", "pmessage"):
            continue
        arrived = time.monotonic()
        try:
            body = json.loads(msg["data"])
        except ValueError:
            continue
        if isinstance(body, dict) and match(body):
            return arrived, body
    raise BenchError(f"no {what} within {timeout:.0f}s")


async def wait_workers(redis: Redis, keys: Keys, n: int, timeout: float = 30.0) -> None:
    """Until `n` workers listen on the doorbell channel (each subscribes once it is ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await workers_listening(redis, keys) >= n:
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"{n} workers did not come up within {timeout:.0f} s")
