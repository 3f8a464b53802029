"""Fan-out through a real gateway process: many viewers, slow viewers, stuck viewers."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import cast

import psutil  # type: ignore[import-untyped]
from redis.asyncio import Redis, RedisCluster

from tests.test_gateway_support import (
    Gateway,
    GatewayFactory,
    RawStream,
    events_of,
    wait_for,
)
from tidings.bus import Bus
from tidings.events import EventType
from tidings.keys import Keys
from tidings.runs import RunStore


async def test_500_viewers_receive_the_identical_gapless_sequence_and_the_end(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory(viewers_per_client=500)  # one client's 500 streams
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    streams = await asyncio.gather(
        *(gw.stream(f"/api/runs/{run.run_id}/events") for _ in range(500))
    )
    assert all(s.status == 200 for s in streams)
    readers = [asyncio.create_task(s.read_to_end()) for s in streams]
    await wait_for(
        lambda: _gauge(gw, "tidings_gateway_viewers", 500), "500 viewers subscribed", timeout=30
    )

    for i in range(198):
        await bus.publish(run.run_id, EventType.TASK_PROGRESS, f"step {i}", progress=i / 2)
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    received = await asyncio.wait_for(asyncio.gather(*readers), timeout=60)

    logged = await bus.events(run.run_id, limit=1000)
    expected = [(e.id, e.seq) for e in logged]
    assert [seq for _, seq in expected] == list(range(1, 201))
    for messages in received:
        events = events_of(messages)
        assert [(e["id"], e["seq"]) for e in events] == expected
        assert events[-1]["type"] == "workflow_completed"
    assert all(s.ended for s in streams)  # each response finished after the terminal event
    for s in streams:
        s.close()

    metrics = await gw.metrics()
    assert metrics["tidings_gateway_events_received_total"] >= 199
    # Live delivery dominated: the hub encoded each event once for all 500 viewers.
    assert metrics["tidings_gateway_sse_messages_total"] >= 500 * 200


async def _gauge(gw: Gateway, name: str, value: float) -> bool:
    return (await gw.metrics()).get(name) == value


async def test_a_viewer_that_stops_reading_costs_bounded_memory_and_loses_nothing(
    gateway_factory: GatewayFactory, redis: Redis, keys: Keys, store: RunStore
) -> None:
    gw = await gateway_factory(viewer_buffer=64, replay_page=500)
    bus = Bus(redis, keys, maxlen=100_000)  # the publisher must not trim what the viewer needs
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")

    slow = await gw.stream(f"/api/runs/{run.run_id}/events", rcvbuf=4096)
    [first] = await slow.take(1)
    assert first.event == "workflow_started"
    rss_before = psutil.Process(gw.proc.pid).memory_info().rss

    # The viewer reads nothing while 10 000 events of ~1 KiB flow (far more than the socket
    # buffers hold), so its gateway-side buffer must overflow and be dropped, repeatedly.
    payload = "x" * 1000
    for start in range(0, 10_000, 250):
        await asyncio.gather(
            *(
                bus.publish(run.run_id, EventType.LOG, payload, data={"i": i})
                for i in range(start, start + 250)
            )
        )
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")

    metrics = await gw.metrics()
    assert metrics["tidings_gateway_viewer_buffer_limit"] == 64
    assert 1 <= metrics["tidings_gateway_viewer_buffer_max"] <= 64
    assert metrics["tidings_gateway_overflows_total"] >= 1
    grown = psutil.Process(gw.proc.pid).memory_info().rss - rss_before
    assert grown < 40 * 2**20, f"gateway RSS grew by {grown / 2**20:.1f} MiB"

    rest = await asyncio.wait_for(slow.read_to_end(), timeout=60)
    slow.close()
    seqs = [e["seq"] for e in events_of([first, *rest])]
    assert seqs == list(range(1, 10_003))
    metrics = await gw.metrics()
    assert metrics["tidings_gateway_catchups_total"] >= 2  # first connect + after the overflow
    assert metrics["tidings_gateway_viewer_buffer_max"] <= 64


async def test_a_viewer_that_never_reads_is_disconnected_after_the_send_timeout(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory(send_timeout_s=0.5)
    run = await store.create("demo", None)
    stuck = await gw.stream(f"/api/runs/{run.run_id}/events", rcvbuf=4096)
    payload = "y" * 8000

    async def disconnected() -> bool:
        await asyncio.gather(*(bus.publish(run.run_id, EventType.LOG, payload) for _ in range(100)))
        return (await gw.metrics())["tidings_gateway_slow_disconnects_total"] >= 1

    await wait_for(disconnected, "the stuck viewer to be disconnected", timeout=60)
    await wait_for(lambda: _gauge(gw, "tidings_gateway_viewers", 0), "no viewers left")
    # Once it reads again it finds the stream closed without a terminal event.
    messages = await asyncio.wait_for(stuck.read_to_end(), timeout=30)
    stuck.close()
    assert stuck.eof
    assert all(m.event == "log" for m in messages)
    assert gw.proc.poll() is None


async def test_the_live_stream_after_the_viewer_buffer_limit_still_ends(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    """A viewer buffer of 1 event: every burst overflows, the stream still ends complete."""
    gw = await gateway_factory(viewer_buffer=1)
    run = await store.create("demo", None)
    viewer: RawStream = await gw.stream(f"/api/runs/{run.run_id}/events")
    reader = asyncio.create_task(viewer.read_to_end())
    await wait_for(lambda: _gauge(gw, "tidings_gateway_viewers", 1), "the viewer")
    await asyncio.gather(*(bus.publish(run.run_id, EventType.LOG, str(i)) for i in range(300)))
    await bus.publish(run.run_id, EventType.WORKFLOW_FAILED, "boom")
    messages = await asyncio.wait_for(reader, timeout=30)
    viewer.close()
    assert [e["seq"] for e in events_of(messages)] == list(range(1, 302))


async def test_one_subscription_per_channel_refcounted_by_viewers(
    gateway_factory: GatewayFactory, redis: Redis, keys: Keys, store: RunStore
) -> None:
    gw = await gateway_factory()
    a, b = await store.create("demo", None), await store.create("demo", None)
    lifecycle = [keys.runs_channel_in(bucket) for bucket in keys.bucket_ids]
    channels = [keys.run_channel(a.run_id), keys.run_channel(b.run_id), *lifecycle]

    async def numsub() -> list[int]:
        return [await subscribers(redis, keys, channel) for channel in channels]

    def counts(run_a: int, run_b: int, feed: int) -> list[int]:
        return [run_a, run_b] + [feed] * len(lifecycle)

    streams = [await gw.stream(f"/api/runs/{a.run_id}/events") for _ in range(3)]
    streams += [await gw.stream(f"/api/runs/{b.run_id}/events") for _ in range(2)]
    streams += [await gw.stream("/api/runs/events") for _ in range(2)]
    await wait_for(lambda: _numsub_is(numsub, counts(1, 1, 1)), "one subscription per channel")
    for stream in streams[:4]:
        stream.close()
    await wait_for(lambda: _numsub_is(numsub, counts(0, 1, 1)), "run A unsubscribed, B kept")
    for stream in streams[4:]:
        stream.close()
    await wait_for(lambda: _numsub_is(numsub, counts(0, 0, 0)), "everything unsubscribed")


async def subscribers(redis: Redis, keys: Keys, channel: str) -> int:
    """Subscribers of `channel`: PUBSUB NUMSUB on a single Redis; in a cluster, where channels
    are sharded, PUBSUB SHARDNUMSUB on the node owning the channel's slot."""
    if keys.clustered:
        cluster = await cast(RedisCluster, redis).initialize()
        node = cluster.get_node_from_key(channel)
        reply = await cluster.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node)
    else:
        reply = await redis.pubsub_numsub(channel)
    [(_, count)] = reply  # redis-py parses both into [(channel, count)]
    return int(count)


async def _numsub_is(numsub: Callable[[], Awaitable[list[int]]], expected: list[int]) -> bool:
    return bool(await numsub() == expected)


async def test_sigterm_ends_open_streams_cleanly_and_exits(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory()
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    run_stream = await gw.stream(f"/api/runs/{run.run_id}/events")
    list_stream = await gw.stream("/api/runs/events")
    await run_stream.take(1)
    await list_stream.take(1)
    gw.proc.send_signal(signal.SIGTERM)
    for stream in (run_stream, list_stream):
        await asyncio.wait_for(stream.read_to_end(), timeout=30)
        assert stream.ended and not stream.eof  # a finished response, not a dropped connection
        stream.close()
    # uvicorn re-raises the signal it handled once shut down: a clean exit by SIGTERM.
    assert await asyncio.to_thread(gw.proc.wait, 30) in (0, -signal.SIGTERM)
    assert "Traceback" not in gw.log() and "ERROR" not in gw.log()


async def test_viewers_churning_on_a_live_run_never_see_gaps(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore, redis: Redis, keys: Keys
) -> None:
    """Viewers come and go while events flow, so the run's channel is subscribed and
    unsubscribed over and over; every viewer still gets a gapless sequence from its cursor."""
    gw = await gateway_factory()
    run = await store.create("demo", None)
    path = f"/api/runs/{run.run_id}/events"
    done = asyncio.Event()

    async def publisher() -> None:
        for i in range(400):
            await bus.publish(run.run_id, EventType.LOG, str(i))
            if i % 10 == 0:
                await asyncio.sleep(0.002)
        await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
        done.set()

    async def churner() -> list[list[int]]:
        seen: list[list[int]] = []
        cursor = ""
        while not done.is_set():
            headers = {"Last-Event-ID": cursor} if cursor else {}
            stream = await gw.stream(path, headers=headers)
            messages = await stream.take(7)
            stream.close()
            if messages:
                cursor = messages[-1].id
                seen.append([e["seq"] for e in events_of(messages)])
        return seen

    task = asyncio.create_task(publisher())
    results = await asyncio.wait_for(asyncio.gather(*(churner() for _ in range(8))), 60)
    await task
    for runs in results:
        flat = [seq for part in runs for seq in part]
        assert flat == list(range(1, len(flat) + 1))  # resumed exactly where each left off
    await wait_for(
        lambda: _numsub_is(lambda: _numsub(redis, keys, keys.run_channel(run.run_id)), [0]),
        "the channel released",
    )


async def _numsub(redis: Redis, keys: Keys, channel: str) -> list[int]:
    return [await subscribers(redis, keys, channel)]
