"""The sweeper, driven directly against the test's Redis (no worker process needed)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from tidings.bus import Bus
from tidings.events import EventType, RunStatus
from tidings.keys import Keys
from tidings.runs import RunStore
from tidings.services.worker.context import Engine
from tidings.services.worker.leases import Leases
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
    owner = Leases(redis, keys, "w-back", ttl_ms=60_000)
    assert await owner.refresh_run(None, renewed, 1) == b"ok"  # its owner renews it
    await asyncio.sleep(0.3)
    assert await sweeper.sweep_pass() == 0
    # And loses it again (its lease gone, its deadline due): the clock starts over.
    await redis.delete(keys.lease(renewed))
    await redis.zadd(keys.lease_deadlines_of(renewed), {renewed: 1})
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
    redis_url: str, settings: Settings
) -> None:
    # Right after a restart of Redis every connection is new and live workers are still
    # reconnecting: an absent holder then proves nothing.
    from tidings.redis import connect
    from tidings.services.worker.liveness import Liveness, client_name

    cluster = settings.redis_cluster
    named = connect(redis_url, cluster=cluster, client_name=client_name("sweeper-test"))
    try:
        await named.ping()  # a cluster client connects to its nodes as it uses them
        liveness = Liveness(named, "sweeper-test", grace_s=0, settle_s=1.0)
        assert await liveness.gone({"ghost-worker"}) == set()  # our connection is brand new
        await asyncio.sleep(2.1)  # CLIENT LIST counts a connection's age in whole seconds
        assert await liveness.gone({"ghost-worker"}) == {"ghost-worker"}
    finally:
        await named.aclose()


async def test_a_sweep_reads_only_the_leases_that_fell_due(
    redis: Redis, keys: Keys, store: RunStore, bus: Bus, settings: Settings
) -> None:
    # Runs held the way workers hold them: each renewal moves the run's deadline along.
    holder = Leases(redis, keys, "w-alive", ttl_ms=60_000)
    held = [(await store.create("t_steps", {"n": 1})).run_id for _ in range(50)]
    for rid in held:
        await bus.publish(rid, EventType.WORKFLOW_STARTED, attempt=1)
        assert await holder.refresh_run(None, rid, 1) == b"ok"
    engine = Engine.build(settings, redis, name="sweeper-test")
    sweeper = Sweeper(engine, grace_s=0)
    await sweeper.audit()  # every active run has its deadline: nothing to add
    deadlines = [await redis.zcard(keys.lease_deadlines_in(b)) for b in keys.bucket_ids]
    assert sum(deadlines) == len(held)
    assert await sweeper.sweep_due() == 0
    assert sweeper._last_due == 0  # not one lease read
    await redis.delete(keys.lease(held[0]))  # its holder died: the lease lapses...
    await redis.zadd(keys.lease_deadlines_of(held[0]), {held[0]: 1})  # ...at its deadline
    assert await sweeper.sweep_due() == 1
    assert sweeper._last_due == 1
    assert (await store.get(held[0])).attempt == 2


async def test_one_worker_sweeps_at_a_time_and_another_takes_over_when_it_leaves(
    redis: Redis, settings: Settings
) -> None:
    first = Sweeper(Engine.build(settings, redis, name="w1"))
    second = Sweeper(Engine.build(settings, redis, name="w2"))
    assert await first.take_turn() == 2  # taken now
    assert await second.take_turn() == 0
    assert await first.take_turn() == 1  # still ours, renewed
    await first.leave_turn()
    assert await second.take_turn() == 2
    assert await first.take_turn() == 0


async def test_the_runs_of_a_registered_worker_without_connections_are_reclaimed(
    redis_url: str, redis: Redis, keys: Keys, store: RunStore, bus: Bus, settings: Settings
) -> None:
    from tidings.redis import connect
    from tidings.services.worker.liveness import Liveness, client_name

    rid = (await store.create("t_steps", {"n": 1})).run_id
    await bus.publish(rid, EventType.WORKFLOW_STARTED, attempt=1)
    ghost = Leases(redis, keys, "ghost-worker", ttl_ms=300_000)  # a lease far from lapsing
    assert await ghost.refresh_run(None, rid, 1) == b"ok"
    await redis.hset(keys.workers, "ghost-worker", "1")  # registered, never connected
    cluster = settings.redis_cluster
    named = connect(redis_url, cluster=cluster, client_name=client_name("sweeper-test"))
    try:
        engine = Engine.build(settings, named, name="sweeper-test")
        sweeper = Sweeper(engine, Liveness(named, "sweeper-test", grace_s=0, settle_s=0))
        assert await sweeper.check_liveness() == 1
        record = await store.get(rid)
        assert record.status is RunStatus.QUEUED and record.attempt == 2
        [lost] = [e for e in await bus.events(rid) if e.type is EventType.WORKER_LOST]
        assert lost.data is not None and lost.data["reason"] == "worker_gone"
        assert await sweeper.check_liveness() == 0  # it holds nothing now: unregistered
        assert not await redis.hexists(keys.workers, "ghost-worker")
    finally:
        await named.aclose()


async def test_a_record_that_cannot_name_a_queue_never_stalls_the_sweep(
    redis: Redis, keys: Keys, store: RunStore, bus: Bus, settings: Settings
) -> None:
    # A record no code of ours writes (hand-edited, or from a foreign writer): its workflow
    # cannot name a queue. The sweep must recover the other runs all the same, every pass.
    broken, orphan = [(await store.create("t_steps", {"n": 1})).run_id for _ in range(2)]
    for rid in (broken, orphan):
        await bus.publish(rid, EventType.WORKFLOW_STARTED, attempt=1)  # running, no lease
    await redis.hset(keys.run(broken), "workflow", "no such/queue")
    engine = Engine.build(settings, redis, name="sweeper-test")
    sweeper = Sweeper(engine, grace_s=0)
    assert await sweeper.sweep_pass() == 1
    assert (await store.get(orphan)).attempt == 2
    assert (await store.get(broken)).attempt == 1  # left as it is, for a person to look at
    assert await redis.zscore(keys.lease_deadlines_of(broken), broken) is None  # and not read again
    assert await sweeper.sweep_pass() == 0
