"""`GET /api/streams`: several runs and the run-list feed over one SSE response."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from redis.asyncio import Redis

from tests.test_gateway_support import GatewayFactory, RawStream, wait_for
from tidings.bus import Bus
from tidings.events import EventType
from tidings.keys import Keys
from tidings.runs import RunStore
from tidings.sse import SSEMessage


def _by_run(messages: list[SSEMessage]) -> dict[str, list[dict[str, Any]]]:
    """Run events per run, checking each id is `<run id>/<stream id>` and matches its data."""
    out: dict[str, list[dict[str, Any]]] = {}
    for msg in messages:
        if msg.event in ("snapshot", "run", "resync", "missing", None, ""):
            continue
        body = json.loads(msg.data)
        assert msg.id == f"{body['run_id']}/{body['id']}", msg
        assert msg.event == body["type"]
        out.setdefault(body["run_id"], []).append(body)
    return out


async def _publish(bus: Bus, run_id: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await bus.publish(run_id, EventType.LOG, f"{run_id[:4]} {i}")


async def test_two_runs_and_the_feed_on_one_stream_then_an_exact_resume(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory()
    a, b = await store.create("demo", None), await store.create("demo", None)
    await _publish(bus, a.run_id, 5)
    await _publish(bus, b.run_id, 3)
    stream = await gw.stream(f"/api/streams?run={a.run_id}&run={b.run_id}&feed=runs")
    assert stream.status == 200
    # The snapshot and both replays, in any order (a cluster's feed waits for all its channels).
    first = await stream.take(1 + 5 + 3)
    assert [m.event for m in first].count("snapshot") == 1
    seen = _by_run(first)
    assert [e["seq"] for e in seen[a.run_id]] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in seen[b.run_id]] == [1, 2, 3]

    # It counts as one viewer of each run.
    async with gw.client() as client:
        for run in (a, b):
            assert (await client.get(f"/api/runs/{run.run_id}")).json()["viewers"] == 1

    # Live events of both runs interleave on the one connection.
    await _publish(bus, a.run_id, 2, start=5)
    await bus.publish(b.run_id, EventType.WORKFLOW_COMPLETED, "done")
    live = await stream.take(3)
    seen = _by_run(live)
    assert [e["seq"] for e in seen[a.run_id]] == [6, 7]
    assert [e["type"] for e in seen[b.run_id]] == ["workflow_completed"]
    stream.close()

    # Reconnect with the last id of each run: exactly what followed, nothing again.
    last_a = f"{a.run_id}/{seen[a.run_id][-1]['id']}"
    last_b = f"{b.run_id}/{seen[b.run_id][-1]['id']}"
    await _publish(bus, a.run_id, 3, start=7)
    await bus.publish(a.run_id, EventType.WORKFLOW_FAILED, "boom")
    again = await gw.stream(f"/api/streams?run={last_a}&run={last_b}")
    messages = await asyncio.wait_for(again.read_to_end(), 20)
    again.close()
    assert again.ended and not again.eof  # both runs ended and no feed: the stream ends
    resumed = _by_run(messages)
    assert [e["seq"] for e in resumed[a.run_id]] == [8, 9, 10, 11]
    assert b.run_id not in resumed


async def test_last_event_id_moves_only_its_own_run_forward(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory()
    a, b = await store.create("demo", None), await store.create("demo", None)
    events_a = [await bus.publish(a.run_id, EventType.LOG, str(i)) for i in range(4)]
    await _publish(bus, b.run_id, 2)
    # The URL still has the first cursors; the browser's reconnect names a newer one for A.
    headers = {"Last-Event-ID": f"{a.run_id}/{events_a[2].id}"}
    stream = await gw.stream(f"/api/streams?run={a.run_id}&run={b.run_id}", headers=headers)
    seen = _by_run(await stream.take(1 + 2))
    stream.close()
    assert [e["seq"] for e in seen[a.run_id]] == [4]
    assert [e["seq"] for e in seen[b.run_id]] == [1, 2]


async def test_a_trimmed_run_gets_its_own_resync_and_a_missing_run_is_named(
    gateway_factory: GatewayFactory, redis: Redis, keys: Keys, store: RunStore
) -> None:
    gw = await gateway_factory()
    trimming = Bus(redis, keys, maxlen=10)
    run = await store.create("demo", None)
    await _publish(trimming, run.run_id, 200)
    await trimming.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    stream = await gw.stream(f"/api/streams?run={run.run_id}/1-0&run=no-such-run")
    messages = await asyncio.wait_for(stream.read_to_end(), 20)
    stream.close()
    kinds = [m.event for m in messages]
    assert kinds[0] == "missing" and json.loads(messages[0].data) == {"run_id": "no-such-run"}
    assert kinds[1] == "resync"
    assert json.loads(messages[1].data)["run"]["run_id"] == run.run_id
    seqs = [e["seq"] for e in _by_run(messages)[run.run_id]]
    assert seqs == list(range(seqs[0], 202)) and seqs[0] > 1


async def test_bad_multiplexed_requests_are_400s(
    gateway_factory: GatewayFactory, store: RunStore
) -> None:
    gw = await gateway_factory(stream_max_runs=2)
    run = await store.create("demo", None)
    async with gw.client() as client:
        for query in (
            "",
            "?feed=everything",
            f"?run={run.run_id}/not-a-cursor",
            "?run=bad%20id",
            f"?run={run.run_id}&run=b&run=c",
        ):
            resp = await client.get(f"/api/streams{query}")
            assert resp.status_code == 400, (query, resp.text)
            assert resp.json()["error"]["code"] in ("bad_request", "bad_cursor")


async def test_many_multiplexed_viewers_share_each_events_bytes(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory()
    runs = [await store.create("demo", None) for _ in range(3)]
    query = "&".join(f"run={r.run_id}" for r in runs)
    streams: list[RawStream] = [await gw.stream(f"/api/streams?{query}") for _ in range(30)]
    await wait_for(lambda: _viewers_are(gw, 30 * 3), "30 multiplexed viewers of 3 runs", timeout=20)
    readers = [asyncio.create_task(s.read_to_end()) for s in streams]
    for i in range(20):
        for r in runs:
            await bus.publish(r.run_id, EventType.TASK_PROGRESS, f"{i}", progress=i)
    for r in runs:
        await bus.publish(r.run_id, EventType.WORKFLOW_COMPLETED, "done")
    for messages in await asyncio.wait_for(asyncio.gather(*readers), 30):
        seen = _by_run(messages)
        for r in runs:
            assert [e["seq"] for e in seen[r.run_id]] == list(range(1, 22))
    for s in streams:
        s.close()
    metrics = await gw.metrics()
    assert metrics["tidings_gateway_direct_writes_total"] >= 30 * 3 * 10


async def _viewers_are(gw: Any, n: int) -> bool:
    return bool((await gw.metrics()).get("tidings_gateway_viewers") == n)
