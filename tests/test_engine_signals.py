"""A run's signal view and its publisher, against a real server (no worker process)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tidings import codec
from tidings.bus import Bus
from tidings.errors import Fenced
from tidings.events import EventType
from tidings.keys import Keys
from tidings.runs import RunStore
from tidings.services.worker.publisher import Publisher
from tidings.services.worker.signals import SignalBox


async def _push(redis: Redis, keys: Keys, run_id: str, name: str, **payload: object) -> None:
    await redis.rpush(keys.signals(run_id), codec.dumps({"name": name, "payload": payload}))


async def test_the_signal_history_folds_into_the_current_state(redis: Redis, keys: Keys) -> None:
    box = SignalBox(redis, keys, "r1")
    for name in ("pause", "message", "resume", "pause"):
        await _push(redis, keys, "r1", name, text=name)
    new = await box.poll()
    assert [s.name for s in new] == ["pause", "message", "resume", "pause"]
    assert box.paused and not box.stop and not box.cancel
    await _push(redis, keys, "r1", "resume")
    await _push(redis, keys, "r1", "stop")
    assert [s.name for s in await box.poll()] == ["resume", "stop"]
    assert not box.paused and box.stop
    message = box.next_message()
    assert message is not None and message.payload == {"text": "message"}
    assert box.next_message() is None


async def test_overlapping_reads_never_apply_a_signal_twice(redis: Redis, keys: Keys) -> None:
    box = SignalBox(redis, keys, "r2")
    await _push(redis, keys, "r2", "message", text="a")
    full = await redis.lrange(keys.signals("r2"), 0, -1)
    await box.poll()
    await _push(redis, keys, "r2", "message", text="b")
    assert box.fold(full, 0) == []  # already folded
    both = await redis.lrange(keys.signals("r2"), 0, -1)
    assert [s.payload["text"] for s in box.fold(both, 0)] == ["b"]
    assert [m.payload["text"] for m in box.messages] == ["a", "b"]


async def test_a_fenced_publisher_stops_and_reports_once(
    bus: Bus, store: RunStore, redis: Redis, keys: Keys
) -> None:
    run = await store.create("demo", None)
    errors: list[Exception] = []
    pub = Publisher(bus, run.run_id, 1, on_error=errors.append)
    for i in range(100):
        await pub.send(EventType.LOG, str(i))
    await pub.drain()
    await redis.hset(keys.run(run.run_id), "attempt", "2")  # another attempt took over
    await pub.send(EventType.LOG, "late")
    with pytest.raises(Fenced):
        await pub.drain()
    with pytest.raises(Fenced):
        await pub.send(EventType.LOG, "later")
    assert len(errors) == 1 and isinstance(errors[0], Fenced)
    logged = await bus.events(run.run_id, limit=1000)
    assert [e.message for e in logged] == [str(i) for i in range(100)]
