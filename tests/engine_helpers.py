"""Helpers for the engine's tests: start real workers, wait for what a run publishes."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis, RedisCluster

from tidings.bus import Bus
from tidings.events import Event, EventType
from tidings.jobs import workers_listening
from tidings.keys import Keys

TEST_WORKFLOWS = {"TIDINGS_TEST_WORKFLOWS": "tests.workflows_for_tests"}
FAST_LEASES = {"lease_ttl_ms": 1000, "lease_refresh_ms": 200}
WAIT_S = 30.0


async def start_workers(
    processes: Any,
    settings_env: Callable[..., dict[str, str]],
    redis: Redis,
    keys: Keys,
    n: int,
    **settings: object,
) -> list[subprocess.Popen[bytes]]:
    """`n` worker processes, returned once all of them listen on the doorbell."""
    env = {**settings_env(**settings), **TEST_WORKFLOWS}
    procs = [
        processes.python("tidings.services.worker", env=env, name=f"worker{i}") for i in range(n)
    ]
    await until(lambda: listening(redis, keys, n), what=f"{n} workers listening", procs=procs)
    return procs


async def listening(redis: Redis, keys: Keys, n: int) -> bool:
    """At least `n` workers are ready (each subscribes to the doorbell once it serves)."""
    return await listening_count(redis, keys) >= n


async def listening_count(redis: Redis, keys: Keys) -> int:
    """How many workers listen on the doorbell: on a single Redis its channel's subscribers; in
    a cluster the fewest subscribers of any bucket's wake channel (sharded, on its primary)."""
    if not keys.clustered:
        return await workers_listening(redis, keys)
    counts = [await shard_subscribers(redis, keys.wake_channel_in(b)) for b in keys.bucket_ids]
    return min(counts)


async def shard_subscribers(redis: Redis, channel: str) -> int:
    """How many connections SSUBSCRIBEd `channel` (asked of the primary owning its slot)."""
    assert isinstance(redis, RedisCluster)
    await redis.initialize()  # the slot map, once
    node = redis.get_node_from_key(channel)
    reply = await redis.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node)
    if isinstance(reply, dict):
        reply = next(iter(reply.values()))
    flat = [x for pair in reply for x in pair] if reply and isinstance(reply[0], tuple) else reply
    return int(flat[1])


async def until(
    check: Callable[[], Any],
    *,
    what: str,
    timeout: float = WAIT_S,
    procs: list[subprocess.Popen[bytes]] | None = None,
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        for proc in procs or []:
            assert proc.poll() is None, f"a worker exited ({proc.returncode}) waiting for {what}"
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def all_events(bus: Bus, run_id: str) -> list[Event]:
    return await bus.events(run_id, limit=10_000)


async def wait_event(
    bus: Bus, run_id: str, pred: Callable[[Event], bool], what: str, timeout: float = WAIT_S
) -> Event:
    async def check() -> Event | None:
        return next((e for e in await all_events(bus, run_id) if pred(e)), None)

    result: Event = await until(check, what=what, timeout=timeout)
    return result


async def wait_terminal(bus: Bus, run_id: str, timeout: float = WAIT_S) -> Event:
    return await wait_event(bus, run_id, lambda e: e.terminal, "a terminal event", timeout)


def of_type(events: list[Event], type: EventType) -> list[Event]:
    return [e for e in events if e.type is type]


def pid_of(worker_name: str) -> int:
    return int(worker_name.rsplit(":", 1)[1])
