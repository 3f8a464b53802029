"""The atomic publish script and replay, against a real server."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

from tests.test_cluster_core_support import listening
from tidings.bus import Bus
from tidings.errors import Fenced, NotFound, RunFinished
from tidings.events import Event, EventType, RunStatus
from tidings.keys import Keys
from tidings.runs import RunStore
from tidings.streamid import parse_cursor


async def test_publish_appends_announces_and_updates_the_run(
    bus: Bus, store: RunStore, redis: Redis, keys: Keys
) -> None:
    run = await store.create("demo", {"x": 1})
    async with listening(redis, keys.run_channel(run.run_id)) as channel:
        ev = await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go", progress=5, attempt=1)
        assert ev.seq == 1 and ev.progress == 5 and ev.id
        msg = await channel.next(timeout=5)
    assert msg is not None
    live = Event.model_validate_json(msg)
    assert live == ev
    [(eid, stored)] = await bus.read(run.run_id)
    assert Event.model_validate_json(stored) == ev
    assert f"{eid[0]}-{eid[1]}" == ev.id

    rec = await store.get(run.run_id)
    assert rec.status is RunStatus.RUNNING
    assert rec.started_at and rec.progress == 5 and rec.last_event_id == ev.id


async def test_seq_is_gapless_and_progress_never_decreases_under_concurrency(
    bus: Bus, store: RunStore
) -> None:
    run = await store.create("demo", None)
    asked = [float(i % 37) for i in range(300)]
    events = await asyncio.gather(
        *(bus.publish(run.run_id, EventType.TASK_PROGRESS, progress=p) for p in asked)
    )
    logged = await bus.events(run.run_id, limit=1000)
    assert [e.seq for e in logged] == list(range(1, 301))
    progresses = [e.progress for e in logged]
    assert progresses == sorted(progresses) and progresses[-1] == 36
    assert sorted(e.seq for e in events) == list(range(1, 301))


async def test_progress_is_clamped_to_100(bus: Bus, store: RunStore) -> None:
    run = await store.create("demo", None)
    ev = await bus.publish(run.run_id, EventType.TASK_PROGRESS, progress=250)
    assert ev.progress == 100


async def test_stale_attempt_is_fenced_and_writes_nothing(
    bus: Bus, store: RunStore, redis: Redis, keys: Keys
) -> None:
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, attempt=1)
    await redis.hset(keys.run(run.run_id), "attempt", "2")
    with pytest.raises(Fenced):
        await bus.publish(run.run_id, EventType.TASK_STARTED, attempt=1)
    assert len(await bus.read(run.run_id)) == 1
    # Unfenced publishes (control events from the gateway) still go through.
    await bus.publish(run.run_id, EventType.SIGNAL_RECEIVED, "stop")


async def test_unknown_run_is_not_found(bus: Bus) -> None:
    with pytest.raises(NotFound):
        await bus.publish("nope", EventType.LOG, "x")


async def test_log_is_closed_after_terminal_event(
    bus: Bus, store: RunStore, redis: Redis, keys: Keys
) -> None:
    run = await store.create("demo", None)
    await bus.publish(
        run.run_id, EventType.WORKFLOW_COMPLETED, progress=100, fields={"result": '{"ok":true}'}
    )
    with pytest.raises(RunFinished):
        await bus.publish(run.run_id, EventType.LOG, "late")
    rec = await store.get(run.run_id)
    assert rec.status is RunStatus.COMPLETED and rec.result == {"ok": True} and rec.finished_at
    assert await redis.zscore(keys.active_of(run.run_id), run.run_id) is None


async def test_lifecycle_summaries_on_status_and_whole_percent_changes(
    bus: Bus, store: RunStore, redis: Redis, keys: Keys
) -> None:
    rid = "lifecycle-1"  # known before it exists: its bucket's channel is listened to first
    async with listening(redis, keys.runs_channel_of(rid)) as channel:
        run = await store.create("demo", None, run_id=rid)
        await bus.publish(run.run_id, EventType.WORKFLOW_STARTED)
        await bus.publish(run.run_id, EventType.TASK_PROGRESS, progress=10.2)
        await bus.publish(run.run_id, EventType.TASK_PROGRESS, progress=10.7)  # same percent
        await bus.publish(run.run_id, EventType.TOKEN, "tok")
        await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, progress=100)
        seen = []
        while (msg := await channel.next(timeout=0.5)) is not None:
            seen.append(json.loads(msg))
    assert [(s["status"], int(s["progress"])) for s in seen] == [
        ("queued", 0),
        ("running", 0),
        ("running", 10),
        ("completed", 100),
    ]


async def test_trimmed_log_reports_the_gap(redis: Redis, keys: Keys, store: RunStore) -> None:
    bus = Bus(redis, keys, maxlen=10)
    run = await store.create("demo", None)
    first = await bus.publish(run.run_id, EventType.LOG, "first")
    for i in range(300):
        await bus.publish(run.run_id, EventType.LOG, str(i))
    info = await bus.log_info(run.run_id)
    assert info.length < 301
    assert info.has_gap_after((0, 0))
    ms, sq = (int(x) for x in first.id.split("-"))
    assert info.has_gap_after((ms, sq))
    assert info.last_id is not None and not info.has_gap_after(info.last_id)


async def test_a_cursor_the_log_lost_is_told_from_one_trimmed_or_kept(
    redis: Redis, keys: Keys, store: RunStore
) -> None:
    """A log that went back in time (here: its newest entries removed by hand, as a promoted
    replica that lacked them would be) no longer holds an event its reader saw."""
    bus = Bus(redis, keys)
    run = await store.create("demo", None)
    evs = [await bus.publish(run.run_id, EventType.LOG, str(i)) for i in range(6)]
    at = [parse_cursor(e.id) for e in evs]
    _, kept = await bus.read_page(run.run_id, at[4], seen=True)
    assert kept.cursor_found is True and not kept.rolled_back_past(at[4])
    _, unasked = await bus.read_page(run.run_id, at[4])
    assert unasked.cursor_found is None and not unasked.rolled_back_past(at[4])
    await redis.xdel(keys.events(run.run_id), evs[4].id, evs[5].id)
    page, lost = await bus.read_page(run.run_id, at[5], seen=True)
    assert page == [] and lost.cursor_found is False
    assert lost.rolled_back_past(at[5])
    # The start of a log is no delivered position: nothing to lose there.
    _, start = await bus.read_page(run.run_id, (0, 0), seen=True)
    assert start.cursor_found is None and not start.rolled_back_past((0, 0))


async def test_log_info_of_empty_log(bus: Bus, store: RunStore) -> None:
    run = await store.create("demo", None)
    info = await bus.log_info(run.run_id)
    assert info.length == 0 and not info.has_gap_after((0, 0))


async def test_read_pages_after_a_cursor(bus: Bus, store: RunStore) -> None:
    run = await store.create("demo", None)
    evs = [await bus.publish(run.run_id, EventType.LOG, str(i)) for i in range(7)]
    page = await bus.read(run.run_id, count=3)
    assert [Event.model_validate_json(raw).message for _, raw in page] == ["0", "1", "2"]
    rest = await bus.read(run.run_id, after=page[-1][0], count=100)
    assert [Event.model_validate_json(raw).seq for _, raw in rest] == [e.seq for e in evs[3:]]


async def test_schema_is_stamped_once_and_a_foreign_version_refused(
    redis: Redis, keys: Keys
) -> None:
    from tidings.keys import SCHEMA_VERSION
    from tidings.runs import ensure_schema

    await ensure_schema(redis, keys)
    await ensure_schema(redis, keys)  # idempotent
    assert int(await redis.get(keys.schema)) == SCHEMA_VERSION
    await redis.set(keys.schema, SCHEMA_VERSION + 1)
    with pytest.raises(ValueError, match="schema"):
        await ensure_schema(redis, keys)


async def _evalsha_calls(redis: Redis, key: str) -> int:
    """EVALSHA calls so far on the server holding `key` (its node, in a cluster)."""
    if isinstance(redis, RedisCluster):
        node = await _node_of(redis, key)
        stats = await redis.info("commandstats", target_nodes=node)  # type: ignore[call-arg]
    else:
        stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def _node_of(redis: RedisCluster, key: str) -> ClusterNode:
    await redis.initialize()
    return redis.get_node_from_key(key)


async def test_a_batch_of_one_run_is_one_script_call(bus: Bus, store: RunStore, keys: Keys) -> None:
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, attempt=1)  # loads the script
    before = await _evalsha_calls(bus.redis, keys.run(run.run_id))
    cmds = [
        bus.command(run.run_id, EventType.TOKEN, data={"text": str(i)}, progress=i / 5, attempt=1)
        for i in range(500)
    ]
    events = await bus.publish_many(cmds)
    assert await _evalsha_calls(bus.redis, keys.run(run.run_id)) - before == 1
    assert [e.seq for e in events if isinstance(e, Event)] == list(range(2, 502))
    logged = await bus.events(run.run_id, limit=1000)
    assert [e.data for e in logged[1:]] == [{"text": str(i)} for i in range(500)]
    assert [e.progress for e in logged[1:]] == [i / 5 for i in range(500)]
    rec = await store.get(run.run_id)
    assert (rec.seq, rec.progress, rec.last_event_id) == (501, 99.8, logged[-1].id)


async def test_events_after_a_terminal_event_in_the_same_batch_are_refused(
    bus: Bus, store: RunStore
) -> None:
    run = await store.create("demo", None)
    outcomes = await bus.publish_many(
        [
            bus.command(run.run_id, EventType.WORKFLOW_STARTED),
            bus.command(run.run_id, EventType.WORKFLOW_COMPLETED, fields={"result": "7"}),
            bus.command(run.run_id, EventType.LOG, "late"),
        ]
    )
    assert [type(o) for o in outcomes] == [Event, Event, RunFinished]
    rec = await store.get(run.run_id)
    assert rec.status is RunStatus.COMPLETED and rec.result == 7 and rec.seq == 2


async def test_a_fenced_batch_writes_nothing(
    bus: Bus, store: RunStore, redis: Redis, keys: Keys
) -> None:
    run = await store.create("demo", None)
    await redis.hset(keys.run(run.run_id), "attempt", "2")
    outcomes = await bus.publish_many(
        [bus.command(run.run_id, EventType.LOG, str(i), attempt=1) for i in range(3)]
    )
    assert all(isinstance(o, Fenced) for o in outcomes)
    assert await bus.read(run.run_id) == []


async def test_batches_of_several_runs_keep_each_runs_order(bus: Bus, store: RunStore) -> None:
    a, b = await store.create("demo", None), await store.create("demo", None)
    cmds = [bus.command(r.run_id, EventType.LOG, str(i)) for i in range(4) for r in (a, b, b)]
    outcomes = await bus.publish_many(cmds)
    assert not any(isinstance(o, Exception) for o in outcomes)
    assert [e.message for e in await bus.events(a.run_id)] == ["0", "1", "2", "3"]
    assert [e.message for e in await bus.events(b.run_id)] == [
        "0",
        "0",
        "1",
        "1",
        "2",
        "2",
        "3",
        "3",
    ]


@pytest.mark.parametrize("raw", ["99999999999999999999-0", "1-99999999999999999999", "²", "1-²"])
def test_cursor_out_of_range_or_not_ascii_is_a_bad_cursor(raw: str) -> None:
    from tidings.errors import BadCursor
    from tidings.streamid import parse_cursor

    with pytest.raises(BadCursor):
        parse_cursor(raw)


def test_largest_stream_id_is_a_cursor() -> None:
    from tidings.streamid import parse_cursor

    top = 2**64 - 1
    assert parse_cursor(f"{top}-{top}") == (top, top)


async def test_concurrent_creates_of_one_id_make_one_run_and_one_conflict(
    store: RunStore, bus: Bus
) -> None:
    from tidings.errors import Conflict

    first = await store.create("demo", None, run_id="same-id")
    await bus.publish("same-id", EventType.WORKFLOW_STARTED)
    outcomes = await asyncio.gather(
        *(store.create("demo", {"n": i}, run_id="fresh-id") for i in range(5)),
        store.create("demo", None, run_id="same-id"),
        return_exceptions=True,
    )
    assert sum(isinstance(o, Conflict) for o in outcomes) == 5
    # The started run kept its record: nothing was overwritten.
    rec = await store.get(first.run_id)
    assert rec.status is RunStatus.RUNNING and rec.seq == 1


async def test_a_trim_that_overtakes_a_reader_between_pages_is_reported_with_the_page(
    redis: Redis, keys: Keys, store: RunStore
) -> None:
    bus = Bus(redis, keys, maxlen=10)
    run = await store.create("demo", None)
    for i in range(5):
        await bus.publish(run.run_id, EventType.LOG, str(i))
    page, info = await bus.read_page(run.run_id, (0, 0), count=2)
    assert len(page) == 2 and not info.has_gap_after((0, 0))
    cursor = page[-1][0]
    for i in range(400):  # the log is trimmed far past the reader's cursor
        await bus.publish(run.run_id, EventType.LOG, f"more {i}")
    page, info = await bus.read_page(run.run_id, cursor, count=2)
    assert info.has_gap_after(cursor)
    assert page and info.first_id == page[0][0] and page[0][0] > cursor


async def test_read_page_of_a_run_with_no_log_yet(bus: Bus, store: RunStore) -> None:
    run = await store.create("demo", None)
    page, info = await bus.read_page(run.run_id)
    assert page == [] and info.length == 0 and not info.has_gap_after((0, 0))


async def test_the_position_a_resync_hands_out_has_no_gap(
    redis: Redis, keys: Keys, store: RunStore
) -> None:
    from tidings.streamid import just_before

    bus = Bus(redis, keys, maxlen=10)
    run = await store.create("demo", None)
    for i in range(300):
        await bus.publish(run.run_id, EventType.LOG, str(i))
    _, info = await bus.read_page(run.run_id, (0, 0), count=1)
    assert info.has_gap_after((0, 0)) and info.first_id is not None
    resumed = just_before(info.first_id)
    assert not info.has_gap_after(resumed)
    assert (await bus.read(run.run_id, resumed, 1))[0][0] == info.first_id


async def test_a_resent_batch_is_refused_even_after_other_writers_published(
    bus: Bus, store: RunStore
) -> None:
    """A batch whose first send landed but whose reply was lost is sent again after Redis comes
    back; by then other writers of the run (a task, a signal) may have published. The resend
    must still be recognised and write nothing."""
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    mine = bus.command(run.run_id, EventType.TASK_PROGRESS, "mine")
    [first] = await bus.publish_raw([mine])
    assert first
    for i in range(5):  # other writers, in between
        await bus.publish(run.run_id, EventType.TASK_PROGRESS, f"other {i}")
    [again] = await bus.publish_raw([mine])
    assert again == b""  # refused as a duplicate: counts as published
    messages = [e.message for e in await bus.events(run.run_id)]
    assert messages.count("mine") == 1 and len(messages) == 7
