"""Resuming a run's stream through a real gateway: Last-Event-ID, ?after=, trimmed logs."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from tests.test_gateway_support import (
    Gateway,
    GatewayFactory,
    events_of,
    wait_for,
)
from tidings.bus import Bus
from tidings.events import EventType
from tidings.keys import Keys
from tidings.runs import RunStore


async def _publish(bus: Bus, run_id: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await bus.publish(run_id, EventType.TASK_PROGRESS, f"step {i}", progress=i / 10)


async def _viewers(gw: Gateway) -> float:
    return (await gw.metrics())["tidings_gateway_viewers"]


async def test_reconnecting_with_last_event_id_or_after_gets_exactly_the_missed_events(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory()
    run = await store.create("demo", None)
    path = f"/api/runs/{run.run_id}/events"
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    await _publish(bus, run.run_id, 19)

    first = await gw.stream(path)
    assert first.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert first.headers["cache-control"] == "no-store"
    assert first.headers["x-accel-buffering"] == "no"
    seen = await first.take(20)
    assert first.parser.retry == 2000
    first.close()  # mid-run
    await wait_for(lambda: _viewers_are(gw, 0), "the gateway to notice the disconnect")

    await _publish(bus, run.run_id, 30, start=19)
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    last_id = seen[-1].id

    by_header = await gw.stream(path, headers={"Last-Event-ID": last_id})
    by_query = await gw.stream(f"{path}?after={last_id}")
    missed = [await s.read_to_end() for s in (by_header, by_query)]
    for stream, messages in zip((by_header, by_query), missed, strict=True):
        stream.close()
        assert stream.ended
        assert [e["seq"] for e in events_of(messages)] == list(range(21, 52))
    assert [e["seq"] for e in events_of(seen)] == list(range(1, 21))

    # A finished run: a new viewer gets the whole log, then the end.
    everything = await gw.stream(path)
    assert [e["seq"] for e in events_of(await everything.read_to_end())] == list(range(1, 52))
    # Resuming from the terminal event itself: nothing more to say, the stream just ends.
    at_end = await gw.stream(path, headers={"Last-Event-ID": missed[0][-1].id})
    assert events_of(await at_end.read_to_end()) == [] and at_end.ended
    everything.close()
    at_end.close()


async def _viewers_are(gw: Gateway, n: int) -> bool:
    return await _viewers(gw) == n


async def test_resuming_while_the_run_is_live_joins_the_live_stream_without_a_gap(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory()
    run = await store.create("demo", None)
    path = f"/api/runs/{run.run_id}/events"
    await _publish(bus, run.run_id, 10)
    early = await gw.stream(path)
    [*_, tenth] = await early.take(10)
    early.close()

    async def publisher() -> None:
        for i in range(200):
            await bus.publish(run.run_id, EventType.LOG, str(i))
            if i % 20 == 0:
                await asyncio.sleep(0.005)
        await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")

    task = asyncio.create_task(publisher())
    resumed = await gw.stream(path, headers={"Last-Event-ID": tenth.id})
    messages = await asyncio.wait_for(resumed.read_to_end(), timeout=30)
    await task
    resumed.close()
    assert [e["seq"] for e in events_of(messages)] == list(range(11, 212))


async def test_a_cursor_older_than_the_trimmed_log_gets_resync_then_the_rest(
    gateway_factory: GatewayFactory, redis: Redis, keys: Keys, store: RunStore
) -> None:
    gw = await gateway_factory()
    bus = Bus(redis, keys, maxlen=10)  # the publisher trims; the gateway never does
    run = await store.create("demo", {"topic": "x"})
    await redis.set(keys.state(run.run_id), json.dumps({"done": 299}))
    [early] = [await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")]
    await _publish(bus, run.run_id, 298)
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    info = await bus.log_info(run.run_id)
    assert info.trimmed > 0 and info.first_id is not None
    first = f"{info.first_id[0]}-{info.first_id[1]}"
    [(_, oldest)] = await bus.read(run.run_id, (0, 0), 1)
    oldest_seq = json.loads(oldest)["seq"]

    path = f"/api/runs/{run.run_id}/events"
    for headers, query in (({"Last-Event-ID": early.id}, ""), ({}, ""), ({}, f"?after={early.id}")):
        stream = await gw.stream(path + query, headers=headers)
        messages = await stream.read_to_end()
        stream.close()
        resync, *rest = messages
        assert resync.event == "resync"
        body = json.loads(resync.data)
        assert body["from"] == first and body["reason"] == "trimmed"
        assert body["after_seq"] == oldest_seq - 1
        assert body["run"]["run_id"] == run.run_id and body["run"]["status"] == "completed"
        assert body["state"] == {"done": 299}
        seqs = [e["seq"] for e in events_of(rest)]
        assert seqs == list(range(oldest_seq, 301))
        assert rest[0].id == first

    # A cursor inside the retained log needs no resync.
    [(mid_id, _)] = await bus.read(run.run_id, info.first_id, 1)
    stream = await gw.stream(f"{path}?after={mid_id[0]}-{mid_id[1]}")
    messages = await stream.read_to_end()
    stream.close()
    assert messages[0].event != "resync"
    assert [e["seq"] for e in events_of(messages)] == list(range(oldest_seq + 2, 301))
    assert (await gw.metrics())["tidings_gateway_resyncs_total"] == 3
