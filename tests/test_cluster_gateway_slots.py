"""The gateway on a real 3-primary Valkey Cluster, whatever `TIDINGS_TEST_CLUSTER` says: start
limits that stay exact for one client while its runs spread over buckets (and so over nodes),
viewer presence across buckets, and the lifecycle feed merging every bucket's channel.

The cluster is this module's own (three `valkey-server` processes), stopped when it ends; each
test has its own namespace."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.conftest import Processes, delete_namespace
from tests.engine_helpers import until
from tests.test_gateway_support import Gateway, RawStream, start_gateway
from tidings.keys import Keys
from tidings.redis import connect
from tidings.runs import RunStore
from tidings.services.gateway.limits import Admission, TooManyActiveRuns
from tidings.services.gateway.presence import Presence
from tidings.settings import Settings


@pytest.fixture
def cluster_keys(cluster_settings: Settings) -> Keys:
    return cluster_settings.keys()


@pytest.fixture
async def cluster_redis(cluster_settings: Settings) -> AsyncIterator[Redis]:
    assert cluster_settings.redis_url
    client = connect(cluster_settings.redis_url, cluster=True)
    await client.initialize()  # its slot map, which `nodes_of` reads
    try:
        yield client
    finally:
        await delete_namespace(client, cluster_settings.namespace)
        await client.aclose()


def spread_ids(keys: Keys, n: int) -> list[str]:
    """`n` new run ids, each in a bucket of its own, the buckets spread evenly (the primaries
    own even slot ranges, so n >= 3 ids land on all three)."""
    return [id_in(keys, (2 * i + 1) * keys.buckets // (2 * n)) for i in range(n)]


def id_in(keys: Keys, bucket: int) -> str:
    while keys.bucket(run_id := str(uuid.uuid4())) != bucket:
        pass
    return run_id


def nodes_of(redis: Redis, keys: Keys, run_ids: list[str]) -> set[str]:
    cluster: Any = redis
    return {cluster.get_node_from_key(keys.run(r)).name for r in run_ids}


# -- admission ---------------------------------------------------------------------------------


async def test_unfinished_runs_stay_exact_for_one_client_with_runs_in_many_buckets(
    cluster_settings: Settings, cluster_keys: Keys, cluster_redis: Redis
) -> None:
    settings = cluster_settings.model_copy(
        update={"active_runs_per_client": 4, "runs_per_minute": 1000}
    )
    # Two gateways' admissions, one client.
    gateways = [Admission(cluster_redis, cluster_keys, settings) for _ in range(2)]
    store = RunStore(cluster_redis, cluster_keys)
    ids = spread_ids(cluster_keys, 12)
    assert len(nodes_of(cluster_redis, cluster_keys, ids)) == 3

    async def reserve(i: int, run_id: str) -> str | None:
        try:
            await gateways[i % 2].reserve("token:abc", run_id)
        except TooManyActiveRuns:
            return None
        return run_id

    admitted = [r for r in await asyncio.gather(*map(reserve, range(12), ids)) if r]
    assert len(admitted) == 4
    for run_id in admitted:
        await store.create("demo", None, run_id=run_id)
    # A full set: nothing more while every run is unfinished.
    with pytest.raises(TooManyActiveRuns) as refused:
        await gateways[0].reserve("token:abc", str(uuid.uuid4()))
    assert refused.value.details["active"] == 4

    # Two runs end (in their own buckets): exactly two concurrent starts of ten get their slots.
    for run_id in admitted[:2]:
        await cluster_redis.hset(cluster_keys.run(run_id), "status", "completed")  # type: ignore[misc]
    more = spread_ids(cluster_keys, 10)
    again = [r for r in await asyncio.gather(*map(reserve, range(10), more)) if r]
    assert len(again) == 2
    members = await cluster_redis.zrange(cluster_keys.client_runs("token:abc"), 0, -1)
    assert sorted(m.decode() for m in members) == sorted(admitted[2:] + again)
    # Another client is counted apart.
    await gateways[1].reserve("token:other", more[0])


# -- presence ----------------------------------------------------------------------------------


async def test_viewers_of_runs_in_several_buckets_are_counted_and_the_client_limit_holds(
    cluster_settings: Settings, cluster_keys: Keys, cluster_redis: Redis
) -> None:
    settings = cluster_settings.model_copy(update={"viewers_per_client": 3})
    one, two = (Presence(cluster_redis, cluster_keys, settings, gw) for gw in ("gw1", "gw2"))
    a, b, c = spread_ids(cluster_keys, 3)
    assert len(nodes_of(cluster_redis, cluster_keys, [a, b, c])) == 3
    # Runs a seed stream owns: the lease pushes their orphan time back.
    await cluster_redis.zadd(cluster_keys.stream_runs, {a: 1, c: 1})
    first = await one.acquire("addr:1", [a, b])
    second = await two.acquire("addr:1", [b, c])
    assert [await one.count(r) for r in (a, b, c)] == [1, 2, 1]
    assert [await two.count(r) for r in (a, b, c)] == [1, 2, 1]
    orphaned = dict(await cluster_redis.zrange(cluster_keys.stream_runs, 0, -1, withscores=True))
    assert all(score > 1 for score in orphaned.values())
    assert set(orphaned) == {a.encode(), c.encode()}  # never entered by a viewer

    # One slot left for the client: of five concurrent streams on both gateways, one gets it.
    results = await asyncio.gather(
        *(p.acquire("addr:1", [c]) for p in (one, two, one, two, one)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert await one.count(c) == 2

    one.start()
    two.start()
    try:
        first.release()
        second.release()
        await until(lambda: _counts(one, [a, b, c], [0, 0, 1]), what="released leases gone")
    finally:
        await one.close()
        await two.close()
    assert [await one.count(r) for r in (a, b, c)] == [0, 0, 0]


async def _counts(presence: Presence, runs: list[str], expected: list[int]) -> bool:
    return [await presence.count(r) for r in runs] == expected


# -- the lifecycle feed through a gateway process ----------------------------------------------


@pytest.fixture
async def gateway(
    cluster_settings: Settings, cluster_redis: Redis, tmp_path: Path
) -> AsyncIterator[Gateway]:
    processes = Processes(tmp_path)

    def settings_env(**extra: object) -> dict[str, str]:
        env = {
            "REDIS_URL": cluster_settings.redis_url or "",
            "TIDINGS_NAMESPACE": cluster_settings.namespace,
            "TIDINGS_REDIS_CLUSTER": "true",
        }
        return env | {f"TIDINGS_{k.upper()}": str(v) for k, v in extra.items()}

    try:
        yield await start_gateway(processes, settings_env)
    finally:
        processes.stop_all()


async def first_snapshot(stream: RawStream) -> list[str]:
    """The run ids of the stream's snapshot, in its order."""
    async for msg in stream.messages():
        if msg.event == "snapshot":
            return [r["run_id"] for r in json.loads(msg.data)["runs"]]
    raise AssertionError("the stream ended before its snapshot")


async def feed_runs(stream: RawStream, want: set[str]) -> set[str]:
    """The ids of `run` events until every one of `want` came."""
    seen: set[str] = set()
    async for msg in stream.messages():
        if msg.event == "run":
            seen.add(json.loads(msg.data)["run_id"])
        if seen >= want:
            break
    return seen


async def test_the_runs_feed_merges_every_bucket_lifecycle_channel(
    gateway: Gateway, cluster_keys: Keys, cluster_redis: Redis
) -> None:
    store = RunStore(cluster_redis, cluster_keys)
    before = spread_ids(cluster_keys, 3)
    for run_id in before:
        await store.create("demo", None, run_id=run_id)
        await asyncio.sleep(0.002)  # creation times (ms) that differ: one order to expect
    streams = [
        await gateway.stream("/api/runs/events"),
        await gateway.stream("/api/streams?feed=runs"),
    ]
    snapshots = await asyncio.wait_for(asyncio.gather(*map(first_snapshot, streams)), 30)
    # The snapshot comes once every bucket's channel is subscribed: newest first, all buckets.
    assert snapshots == [before[::-1]] * 2
    assert (await gateway.metrics())["tidings_gateway_lifecycle_viewers"] == 2

    after = spread_ids(cluster_keys, 6)
    assert len(nodes_of(cluster_redis, cluster_keys, after)) == 3
    readers = [asyncio.create_task(feed_runs(s, set(after))) for s in streams]
    for run_id in after:
        await store.create("demo", None, run_id=run_id)
    for seen in await asyncio.wait_for(asyncio.gather(*readers), timeout=30):
        assert seen == set(after)
    for stream in streams:
        stream.close()
