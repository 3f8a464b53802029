"""A Redis restart mid-run: the gateway reconnects, resubscribes, and viewers lose nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError, TimeoutError

from tests.conftest import CLUSTER
from tests.test_gateway_support import (
    GatewayFactory,
    events_of,
    wait_for,
)
from tidings.bus import Bus
from tidings.embedded import EmbeddedValkey
from tidings.events import Event, EventType
from tidings.keys import Keys
from tidings.redis import connect
from tidings.runs import RunStore

pytestmark = pytest.mark.skipif(CLUSTER, reason="restarts a single Valkey of its own")


@pytest.fixture
async def own_valkey(tmp_path: Path) -> AsyncIterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "valkey", persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _publish_retrying(bus: Bus, run_id: str, type: EventType, message: str) -> Event:
    while True:
        try:
            return await bus.publish(run_id, type, message)
        except (ConnectionError, TimeoutError, OSError):
            await asyncio.sleep(0.05)


async def test_viewers_resume_without_loss_across_a_redis_restart(
    gateway_factory: GatewayFactory, own_valkey: EmbeddedValkey, keys: Keys
) -> None:
    gw = await gateway_factory(redis_url=own_valkey.url)
    redis = connect(own_valkey.url)
    try:
        bus, store = Bus(redis, keys), RunStore(redis, keys)
        run = await store.create("demo", None)
        await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
        viewers = [await gw.stream(f"/api/runs/{run.run_id}/events") for _ in range(3)]
        readers = [asyncio.create_task(v.read_to_end()) for v in viewers]
        published = 0

        async def publisher(n: int) -> None:
            nonlocal published
            for i in range(n):
                await _publish_retrying(bus, run.run_id, EventType.LOG, f"m{i}")
                published += 1
                await asyncio.sleep(0.002)

        task = asyncio.create_task(publisher(300))
        await wait_for(lambda: published >= 80, "events before the restart")
        own_valkey.stop()
        await asyncio.sleep(0.3)  # publishes fail and are retried meanwhile
        own_valkey.start()
        await task
        await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")

        received = await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
        logged = [e.seq for e in await bus.events(run.run_id, limit=10_000)]
        assert logged == list(range(1, len(logged) + 1)) and len(logged) >= 302
        for messages in received:
            assert [e["seq"] for e in events_of(messages)] == logged
        for viewer in viewers:
            viewer.close()
        metrics = await gw.metrics()
        assert metrics["tidings_gateway_pubsub_reconnects_total"] >= 1
        assert metrics["tidings_gateway_pubsub_connected"] == 1
        async with gw.client() as client:
            assert (await client.get("/readyz")).status_code == 200
    finally:
        await redis.aclose()


async def test_readyz_is_503_while_redis_is_down_and_recovers(
    gateway_factory: GatewayFactory, own_valkey: EmbeddedValkey
) -> None:
    gw = await gateway_factory(redis_url=own_valkey.url)
    own_valkey.stop()
    async with gw.client() as client:

        async def not_ready() -> bool:
            resp = await client.get("/readyz")
            return resp.status_code == 503

        await wait_for(not_ready, "readyz to report Redis down")
        body = (await client.get("/readyz")).json()
        assert body["error"]["code"] == "not_ready"
        assert body["error"]["details"]["redis"] is False
        assert (await client.get("/healthz")).status_code == 200
        resp = await client.get("/api/runs/abc")
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
        own_valkey.start()

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await wait_for(ready, "readyz to recover")


async def test_a_replay_interrupted_by_a_redis_outage_is_retried_not_dropped(
    gateway_factory: GatewayFactory, own_valkey: EmbeddedValkey, keys: Keys
) -> None:
    gw = await gateway_factory(redis_url=own_valkey.url, replay_page=50)
    redis = connect(own_valkey.url)
    try:
        bus, store = Bus(redis, keys, maxlen=100_000), RunStore(redis, keys)
        run = await store.create("demo", None)
        payload = "p" * 1000
        for start in range(0, 3000, 250):
            await asyncio.gather(
                *(
                    bus.publish(run.run_id, EventType.LOG, payload)
                    for _ in range(start, start + 250)
                )
            )
        await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")

        # A new viewer replays 3 MB from the log in pages of 50, but reads slowly: the replay is
        # still going when Redis goes away.
        viewer = await gw.stream(f"/api/runs/{run.run_id}/events", rcvbuf=4096)
        head = await viewer.take(10)
        own_valkey.stop()
        reader = asyncio.create_task(viewer.read_to_end())

        async def retried() -> bool:
            return (await gw.metrics())["tidings_gateway_redis_retries_total"] >= 1

        await wait_for(retried, "a log read to fail and be retried")
        assert not reader.done()
        own_valkey.start()
        rest = await asyncio.wait_for(reader, timeout=60)
        viewer.close()
        assert [e["seq"] for e in events_of(head + rest)] == list(range(1, 3002))
    finally:
        await redis.aclose()
