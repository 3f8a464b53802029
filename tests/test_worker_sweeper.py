"""The sweeper, driven directly against the test's Redis (no worker process needed)."""

from __future__ import annotations

from redis.asyncio import Redis

from services.worker.context import Engine
from services.worker.sweeper import sweep_once
from shared.bus import Bus
from shared.events import EventType, RunStatus
from shared.keys import Keys
from shared.runs import RunStore
from shared.settings import Settings


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
    assert await sweep_once(engine) == 1

    record = await store.get(orphan)
    assert record.status is RunStatus.QUEUED and record.attempt == 2
    assert [e.type for e in await bus.events(orphan)][-1] is EventType.WORKER_LOST
    assert {(await store.get(rid)).attempt for rid in healthy[:5] + healthy[-5:]} == {1}
