"""Workers on a Redis Cluster (a local 3-primary Valkey Cluster of this module's own): runs of
several buckets claimed and completed by two workers, a killed worker's run recovered by the
sweeper, and the doorbell delivering over sharded pub/sub (SSUBSCRIBE on each bucket's primary),
again after its connections were cut."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

import tests.workflows_for_tests  # noqa: F401
from tests.engine_helpers import (
    all_events,
    of_type,
    pid_of,
    shard_subscribers,
    until,
    wait_event,
    wait_terminal,
)
from tidings.bus import Bus
from tidings.control import Control
from tidings.embedded_cluster import EmbeddedCluster
from tidings.events import EventType, RunStatus
from tidings.keys import Keys
from tidings.redis import connect
from tidings.services.worker.liveness import client_name
from tidings.services.worker.sharded_doorbell import ShardedDoorbell
from tidings.settings import Settings
from tidings.slots import key_slot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster"), primaries=3, replicas=0) as cluster:
        yield cluster.url


@pytest.fixture
def settings(redis_url: str, namespace: str) -> Settings:
    return Settings(redis_url=redis_url, namespace=namespace, redis_cluster=True)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url, cluster=True)  # the cluster goes with the module: no cleanup
    try:
        yield client
    finally:
        await client.aclose()


def _ids_in_buckets(keys: Keys, n: int) -> list[str]:
    """`n` run ids, each in a bucket of its own, the buckets spread over all of them (so over
    every primary: a primary owns a contiguous range of slots, hence of buckets)."""
    wanted = {b * keys.buckets // n for b in range(n)}
    found: dict[int, str] = {}
    i = 0
    while len(found) < n:
        rid = f"run-{i}"
        if keys.bucket(rid) in wanted:
            found.setdefault(keys.bucket(rid), rid)
        i += 1
    return list(found.values())


async def _primaries_of(redis: Redis, keys: Keys, run_ids: list[str]) -> set[str]:
    assert isinstance(redis, RedisCluster)
    await redis.initialize()
    nodes = [redis.get_node_from_key(keys.run(rid)) for rid in run_ids]
    return {node.name for node in nodes if node is not None}


async def test_runs_of_many_buckets_are_claimed_and_completed_by_two_workers(
    control: Control, bus: Bus, redis: Redis, keys: Keys, workers: Any
) -> None:
    run_ids = _ids_in_buckets(keys, 8)
    assert len(await _primaries_of(redis, keys, run_ids)) == 3  # every primary holds some
    await workers(2)
    for rid in run_ids:
        await control.start("t_steps", {"n": 3, "sleep_s": 0.2}, run_id=rid)
    ran_on: set[str] = set()
    for rid in run_ids:
        end = await wait_terminal(bus, rid)
        assert end.type is EventType.WORKFLOW_COMPLETED, end.message
        [started] = of_type(await all_events(bus, rid), EventType.WORKFLOW_STARTED)
        assert started.data is not None
        ran_on.add(started.data["worker"])
        assert [r["i"] for r in (await control.get(rid)).result] == [0, 1, 2]
    assert len(ran_on) == 2  # a busy worker waits before it claims: the idle one comes first
    for bucket in keys.bucket_ids:  # every job is gone from its queue
        assert await redis.zcard(keys.queue_for("t_steps", "1", bucket)) == 0


async def test_a_killed_workers_run_is_recovered_on_the_other(
    control: Control, bus: Bus, keys: Keys, workers: Any
) -> None:
    procs = {proc.pid: proc for proc in await workers(2)}
    rec = await control.start("t_steps", {"n": 8, "sleep_s": 0.25})
    await wait_event(
        bus, rec.run_id, lambda e: e.type is EventType.TASK_COMPLETED and e.task == "s#2", "steps"
    )
    started = of_type(await all_events(bus, rec.run_id), EventType.WORKFLOW_STARTED)[0]
    assert started.data is not None
    victim = pid_of(started.data["worker"])
    os.kill(victim, signal.SIGKILL)
    procs[victim].wait()
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    events = await all_events(bus, rec.run_id)
    [lost] = of_type(events, EventType.WORKER_LOST)
    assert lost.data is not None and pid_of(lost.data["worker"]) == victim
    restarted = of_type(events, EventType.WORKFLOW_STARTED)[-1]
    assert restarted.data is not None and pid_of(restarted.data["worker"]) != victim
    record = await control.get(rec.run_id)
    assert record.status is RunStatus.COMPLETED and record.attempt == 2
    assert [r["i"] for r in record.result] == list(range(8))


async def test_a_run_is_offered_through_the_sharded_doorbell(
    control: Control, bus: Bus, keys: Keys, workers: Any
) -> None:
    # Polling once a minute: a run started after the worker listens starts at once only if the
    # doorbell of its bucket reached the worker.
    await workers(1, worker_poll_s=600)
    for rid in _ids_in_buckets(keys, 4):
        await control.start("t_steps", {"n": 1}, run_id=rid)
        end = await wait_terminal(bus, rid, timeout=20)
        assert end.type is EventType.WORKFLOW_COMPLETED, end.message


async def test_the_doorbell_subscribes_every_bucket_again_after_its_connections_are_cut(
    redis: Redis, keys: Keys, redis_url: str
) -> None:
    channels = [keys.wake_channel_in(b) for b in keys.bucket_ids]
    assert len({key_slot(c) for c in channels}) == len(channels)  # a slot each
    heard: list[bytes] = []
    readies: list[int] = []

    async def ready() -> None:
        readies.append(len(readies))

    name = client_name(f"doorbell-test-{keys.ns}")
    bell = ShardedDoorbell(redis_url, channels, name, heard.append, ready)

    async def run() -> None:
        while True:
            with contextlib.suppress(RedisError):  # the next session reads the map again
                await bell.session()
            await asyncio.sleep(0.05)

    task = asyncio.create_task(run())
    try:
        for round_ in (1, 2):
            await until(lambda n=round_: len(readies) >= n, what=f"subscribed ({round_})")
            assert len(bell.nodes) == 3  # one connection per primary
            for channel in channels:
                assert await shard_subscribers(redis, channel) == 1
            heard.clear()
            for i, channel in enumerate(channels):
                await redis.execute_command("SPUBLISH", channel, f"job wf:1 j{i}")
            expected = {f"job wf:1 j{i}".encode() for i in range(len(channels))}
            await until(lambda e=expected: set(heard) == e, what="every bucket's message")
            if round_ == 1:
                await _kill_clients(redis, name)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _kill_clients(redis: Redis, name: str) -> None:
    """Cut every connection named `name`, on every primary (what a network blip does)."""
    assert isinstance(redis, RedisCluster)
    for node in redis.get_primaries():
        for client in await redis.client_list(target_nodes=node):
            if client.get("name") == name:
                await redis.execute_command("CLIENT KILL", "ID", client["id"], target_nodes=node)
