"""The sweeper, driven directly against the test's Redis (no worker process needed)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from tidings.bus import Bus
from tidings.events import EventType, RunStatus
from tidings.keys import Keys
from tidings.runs import RunStore
from tidings.services.worker.context import Engine
from tidings.services.worker.sweeper import Sweeper
from tidings.settings import Settings


async def test_an_orphan_behind_a_thousand_healthy_runs_is_still_recovered(
    redis: Redis, keys: Keys, store: RunStore, bus: Bus, settings: Settings
) -> None:
    # 1 200 older runs, all held by a live lease: the sweeper must look past them.
    healthy = [(await store.create("t_steps", {"n": 1})).run_id for _ in range(1_200)]
    async with redis.pipeline(transaction=False) as pipe:
        for rid in healthy:
            pipe.hset(keys.run(rid), "status", "running")
            pipe.set(keys.lease(rid), "w-alive 1", px=60_000)
        await pipe.execute()
    orphan = (await store.create("t_steps", {"n": 1})).run_id
    await bus.publish(orphan, EventType.WORKFLOW_STARTED, attempt=1)  # running, no lease

    engine = Engine.build(settings, redis, name="sweeper-test")
    assert await Sweeper(engine, grace_s=0).sweep_pass() == 1

    record = await store.get(orphan)
    assert record.status is RunStatus.QUEUED and record.attempt == 2
    assert [e.type for e in await bus.events(orphan)][-1] is EventType.WORKER_LOST
    assert {(await store.get(rid)).attempt for rid in healthy[:5] + healthy[-5:]} == {1}


async def test_a_missing_lease_is_given_a_full_ttl_to_come_back_before_the_run_is_lost(
    redis: Redis, keys: Keys, store: RunStore, bus: Bus, settings: Settings
) -> None:
    # What a sweeper sees right after Redis restarted: leases that lapsed while Redis was away.
    renewed, abandoned = [(await store.create("t_steps", {"n": 1})).run_id for _ in range(2)]
    for rid in (renewed, abandoned):
        await bus.publish(rid, EventType.WORKFLOW_STARTED, attempt=1)  # running, no lease
    engine = Engine.build(settings, redis, name="sweeper-test")
    sweeper = Sweeper(engine, grace_s=0.5)
    assert await sweeper.sweep_pass() == 0  # first seen without a lease: not lost yet
    await redis.set(keys.lease(renewed), "w-back 1", px=60_000)  # its owner renews it
    await asyncio.sleep(0.3)
    assert await sweeper.sweep_pass() == 0
    await redis.delete(keys.lease(renewed))  # and loses it again: the clock starts over
    await asyncio.sleep(0.3)
    assert await sweeper.sweep_pass() == 1  # only the abandoned run, a full grace after
    assert (await store.get(abandoned)).attempt == 2
    assert (await store.get(renewed)).attempt == 1
    await asyncio.sleep(0.5)
    assert await sweeper.sweep_pass() == 1
    assert (await store.get(renewed)).attempt == 2


async def test_a_sweeper_leaves_alone_the_runs_its_own_worker_holds(
    redis: Redis, keys: Keys, store: RunStore, bus: Bus, settings: Settings
) -> None:
    from tidings.services.worker.run import RunHandle

    rid = (await store.create("t_steps", {"n": 1})).run_id
    await bus.publish(rid, EventType.WORKFLOW_STARTED, attempt=1)  # running, no lease
    engine = Engine.build(settings, redis, name="sweeper-test")
    engine.runs[rid] = RunHandle(engine, rid, 1)  # held here: our lease loop renews it
    assert await Sweeper(engine, grace_s=0).sweep_pass() == 0
    del engine.runs[rid]
    assert await Sweeper(engine, grace_s=0).sweep_pass() == 1


async def test_a_holder_missing_from_client_list_counts_only_once_our_own_connection_settled(
    redis_url: str,
) -> None:
    # Right after a restart of Redis every connection is new and live workers are still
    # reconnecting: an absent holder then proves nothing.
    from tidings.redis import connect
    from tidings.services.worker.liveness import Liveness, client_name

    named = connect(redis_url, client_name=client_name("sweeper-test"))
    try:
        liveness = Liveness(named, "sweeper-test", grace_s=0, settle_s=1.0)
        assert await liveness.gone({"ghost-worker"}) == set()  # our connection is brand new
        await asyncio.sleep(2.1)  # CLIENT LIST counts a connection's age in whole seconds
        assert await liveness.gone({"ghost-worker"}) == {"ghost-worker"}
    finally:
        await named.aclose()
