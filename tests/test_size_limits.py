"""Sizes are bounded: run inputs and signal payloads, events in the log, replay and JSON pages."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

import tidings.services.workflows  # noqa: F401  (this process plays the workers: it has the code)
from tests.test_gateway_support import GatewayFactory, events_of
from tidings import codec
from tidings.bus import Bus
from tidings.control import Control
from tidings.errors import PayloadTooLarge
from tidings.events import EventType
from tidings.keys import Keys
from tidings.runs import RunStore

BIG = "x" * 10_000


async def _log(bus: Bus, run_id: str, n: int, size: int) -> None:
    await bus.publish(run_id, EventType.WORKFLOW_STARTED, "go")
    for i in range(n):
        await bus.publish(run_id, EventType.TASK_PROGRESS, f"{i}", data={"blob": "y" * size})


async def test_a_page_stops_at_its_byte_budget_but_always_makes_progress(
    bus: Bus, store: RunStore
) -> None:
    run = await store.create("demo", None)
    await _log(bus, run.run_id, 20, 10_000)
    page, _ = await bus.read_page(run.run_id, (0, 0), 500, max_bytes=35_000)
    sizes = [len(raw) for _, raw in page]
    assert 2 <= len(page) < 21 and sum(sizes) <= 35_000
    # A budget below one event still returns that one event.
    one, _ = await bus.read_page(run.run_id, page[-1][0], 500, max_bytes=10)
    assert len(one) == 1 and one[0][0] > page[-1][0]
    # Reading page by page covers the log exactly once, in order.
    seen, cursor = [], (0, 0)
    while True:
        chunk, info = await bus.read_page(run.run_id, cursor, 500, max_bytes=25_000)
        if not chunk:
            break
        seen += [sid for sid, _ in chunk]
        cursor = chunk[-1][0]
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 21
    assert info.last_id == seen[-1] and info.run_status == b"running"


async def test_a_page_of_a_run_with_no_log_yet_is_empty(bus: Bus, store: RunStore) -> None:
    run = await store.create("demo", None)
    page, info = await bus.read_page(run.run_id, (0, 0), 10)
    assert page == [] and (info.length, info.last_id) == (0, None)


async def test_an_event_over_the_limit_keeps_a_marker_instead_of_its_data(
    redis: Redis, keys: Keys, store: RunStore
) -> None:
    bus = Bus(redis, keys, max_event_bytes=4_096)
    run = await store.create("demo", None)
    event = await bus.publish(
        run.run_id, EventType.TASK_COMPLETED, "m" * 5_000, data={"report": BIG, "n": 1}
    )
    [(_, raw)] = await bus.read(run.run_id)
    assert len(raw) <= 4_096
    stored = codec.loads(raw)
    assert stored["data"] == {
        "truncated": True,
        "bytes": stored["data"]["bytes"],
        "limit": 4_096,
        "keys": ["n", "report"],
    }
    assert stored["data"]["bytes"] > 10_000 and stored["seq"] == event.seq
    # Events under the limit are untouched.
    small = await bus.publish(run.run_id, EventType.TASK_PROGRESS, "ok", data={"n": 2})
    assert small.data == {"n": 2}


async def test_inputs_and_signal_payloads_over_the_limit_are_refused(
    redis: Redis, keys: Keys, bus: Bus, control: Control
) -> None:
    limited = Control(
        redis,
        keys,
        bus,
        control.settings.model_copy(update={"max_input_bytes": 1_000}),
        control.workflows,
    )
    with pytest.raises(PayloadTooLarge, match="TIDINGS_MAX_INPUT_BYTES"):
        await limited.start("research", {"topic": "t" * 2_000})
    record = await limited.start("research", {"topic": "tides"})
    with pytest.raises(PayloadTooLarge):
        await limited.signal(record.run_id, "message", {"text": "z" * 2_000})
    event = await limited.signal(record.run_id, "message", {"text": "short"})
    assert event.data == {"signal": "message", "payload": {"text": "short"}}
    assert await redis.llen(keys.signals(record.run_id)) == 1  # the refused one left no trace


async def test_the_api_answers_413_for_a_big_input_or_payload(
    gateway_factory: GatewayFactory, redis: Redis, keys: Keys
) -> None:
    gw = await gateway_factory(max_input_bytes=1_000)
    async with gw.client() as client:
        big = await client.post(
            "/api/runs", json={"workflow": "research", "input": {"topic": "t" * 2_000}}
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
        ok = await client.post("/api/runs", json={"workflow": "research", "input": {"topic": "a"}})
        run_id = ok.json()["run_id"]
        sig = await client.post(f"/api/runs/{run_id}/signals/message", json={"text": "z" * 2_000})
        assert sig.status_code == 413
        listed = await client.get("/api/runs")
        assert [r["run_id"] for r in listed.json()["runs"]] == [run_id]


async def test_streams_and_json_pages_replay_a_log_of_big_events_whole(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory(page_max_bytes=16_384)
    run = await store.create("demo", None)
    await _log(bus, run.run_id, 12, 6_000)
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    stream = await gw.stream(f"/api/runs/{run.run_id}/events")
    messages = await asyncio.wait_for(stream.read_to_end(), 20)
    stream.close()
    assert [e["seq"] for e in events_of(messages)] == list(range(1, 15))
    async with gw.client(headers={"Accept": "application/json"}) as client:
        seqs, after, pages = [], "", 0
        while True:
            resp = await client.get(
                f"/api/runs/{run.run_id}/events", params={"after": after, "limit": 1000}
            )
            body = resp.json()
            if not body["events"]:
                break
            assert len(resp.content) < 16_384 + 8_000  # one page: the budget plus the record
            seqs += [e["seq"] for e in body["events"]]
            after, pages = body["next"], pages + 1
    assert seqs == list(range(1, 15)) and pages >= 5
