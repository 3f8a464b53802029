"""Checkpointed publishes and batches (the engine's commit path) against a real server."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tidings.bus import Bus
from tidings.errors import Fenced, RunFinished
from tidings.events import EventType
from tidings.keys import Keys
from tidings.runs import RunStore


async def test_publish_once_commits_and_announces_exactly_once(
    bus: Bus, store: RunStore, redis: Redis, keys: Keys
) -> None:
    run = await store.create("demo", None)
    steps = keys.steps(run.run_id)
    cmd = bus.command(run.run_id, EventType.TASK_COMPLETED, task="plan", attempt=1)
    first = await bus.publish_once(cmd, steps, "plan", '{"v":1}')
    again = bus.command(run.run_id, EventType.TASK_COMPLETED, task="plan", attempt=1)
    second = await bus.publish_once(again, steps, "plan", '{"v":2}')
    assert first is not None and first.seq == 1
    assert second is None
    assert await redis.hget(steps, "plan") == b'{"v":1}'
    assert [e.type for e in await bus.events(run.run_id)] == [EventType.TASK_COMPLETED]
    # A resent call (same command, same uid) counts as committed, and writes nothing twice.
    resent = await bus.publish_once(cmd, steps, "plan", '{"v":1}')
    assert resent is not None and resent.type is EventType.TASK_COMPLETED
    assert len(await bus.events(run.run_id)) == 1


async def test_publish_once_from_a_stale_attempt_commits_nothing(
    bus: Bus, store: RunStore, redis: Redis, keys: Keys
) -> None:
    run = await store.create("demo", None)
    await redis.hset(keys.run(run.run_id), "attempt", "2")
    cmd = bus.command(run.run_id, EventType.TASK_COMPLETED, task="plan", attempt=1)
    with pytest.raises(Fenced):
        await bus.publish_once(cmd, keys.steps(run.run_id), "plan", "1")
    assert not await redis.exists(keys.steps(run.run_id))
    assert await bus.events(run.run_id) == []


async def test_publish_many_keeps_order_and_reports_errors_per_event(
    bus: Bus, store: RunStore
) -> None:
    run = await store.create("demo", None)
    cmds = [bus.command(run.run_id, EventType.TOKEN, data={"text": str(i)}) for i in range(50)]
    cmds.append(bus.command(run.run_id, EventType.WORKFLOW_COMPLETED))
    cmds.append(bus.command(run.run_id, EventType.LOG, "too late"))
    out = await bus.publish_many(cmds)
    assert [e.seq for e in out[:51] if not isinstance(e, Exception)] == list(range(1, 52))
    assert isinstance(out[51], RunFinished)
    logged = await bus.events(run.run_id)
    assert [e.data for e in logged[:50]] == [{"text": str(i)} for i in range(50)]
