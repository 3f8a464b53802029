"""tidings.control.Control against a real server (no workers needed)."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

import tests.workflows_for_tests  # noqa: F401  (registers the test workflows)
from tidings.bus import Bus
from tidings.control import Control
from tidings.errors import BadCursor, Conflict, InvalidInput, NotFound
from tidings.events import EventType, RunStatus
from tidings.jobs import RUN_JOB, job_key, queue_of, run_job_id
from tidings.keys import Keys


async def test_start_records_the_run_and_enqueues_a_json_job(
    control: Control, redis: Redis, keys: Keys
) -> None:
    rec = await control.start("t_steps", {"n": 2})
    assert rec.status is RunStatus.QUEUED and rec.attempt == 1
    assert rec.input == {"n": 2, "sleep_s": 0.0, "fail_at": None}  # defaults filled in
    job_id = run_job_id(rec.run_id, 1, keys.run_tag(rec.run_id))
    # The queue of the run's version in the run's bucket (the only one on a single Redis).
    assert queue_of(keys, rec) == keys.queue_for("t_steps", "1", keys.bucket(rec.run_id))
    assert await redis.zscore(queue_of(keys, rec), job_id) is not None
    payload = json.loads(await redis.get(job_key(job_id)))  # JSON, readable, never pickle
    assert payload["f"] == RUN_JOB and payload["a"] == [rec.run_id, 1]
    assert await redis.zscore(keys.active_of(rec.run_id), rec.run_id) is not None
    assert (await control.get(rec.run_id)).workflow == "t_steps"


async def test_start_rejects_unknown_workflows_and_bad_input_without_writing(
    control: Control, redis: Redis, keys: Keys
) -> None:
    with pytest.raises(NotFound):
        await control.start("no_such_workflow", {})
    with pytest.raises(InvalidInput) as info:
        await control.start("t_steps", {"n": "many"})
    assert info.value.errors and info.value.errors[0]["loc"] == ["n"]
    json.dumps(info.value.errors)  # serialisable as an HTTP error body
    with pytest.raises(InvalidInput):
        await control.start("t_steps", [1, 2])  # type: ignore[arg-type]
    for bucket in keys.bucket_ids:
        assert await redis.zcard(keys.runs_in(bucket)) == 0
        assert await redis.zcard(keys.queue_for("t_steps", "1", bucket)) == 0


async def test_start_with_a_taken_id_is_a_conflict_and_enqueues_nothing_more(
    control: Control, redis: Redis, keys: Keys
) -> None:
    await control.start("t_steps", {}, run_id="fixed-id")
    with pytest.raises(Conflict):
        await control.start("t_steps", {}, run_id="fixed-id")
    queue = keys.queue_for("t_steps", "1", keys.bucket("fixed-id"))
    assert await redis.zcard(queue) == 1


async def test_signal_validation(control: Control) -> None:
    rec = await control.start("t_loop", {})
    with pytest.raises(NotFound):
        await control.signal("nope", "stop")
    with pytest.raises(NotFound):
        await control.signal("bad id!", "stop")
    with pytest.raises(InvalidInput):
        await control.signal(rec.run_id, "explode")
    with pytest.raises(Conflict):
        await control.signal(rec.run_id, "resume")  # not paused
    await control.signal(rec.run_id, "pause")  # queued: it pauses at its first step
    with pytest.raises(Conflict):
        await control.signal(rec.run_id, "pause")  # already asked to pause
    ev = await control.signal(rec.run_id, "message", {"text": "hi"})
    assert ev.type is EventType.SIGNAL_RECEIVED
    assert ev.data == {"signal": "message", "payload": {"text": "hi"}}


async def test_cancel_of_a_queued_run_ends_it_at_once(
    control: Control, bus: Bus, redis: Redis, keys: Keys
) -> None:
    rec = await control.start("t_loop", {})
    await control.signal(rec.run_id, "cancel")
    after = await control.get(rec.run_id)
    assert after.status is RunStatus.CANCELLED and after.finished_at
    types = [e.type for e in await bus.events(rec.run_id)]
    assert types == [EventType.SIGNAL_RECEIVED, EventType.WORKFLOW_CANCELLED]
    assert await redis.zcard(queue_of(keys, rec)) == 0
    with pytest.raises(Conflict):
        await control.signal(rec.run_id, "stop")  # finished runs take no signals


async def test_list_runs_pages_newest_first_with_filters(control: Control) -> None:
    ids = [(await control.start("t_steps", {})).run_id for _ in range(5)]
    loop_id = (await control.start("t_loop", {})).run_id
    await control.signal(loop_id, "cancel")
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await control.list_runs(limit=2, before=cursor)
        seen += [r.run_id for r in page]
        if cursor is None:
            break
    # Every run exactly once across pages (runs created in the same millisecond included).
    assert sorted(seen) == sorted([*ids, loop_id])
    steps, _ = await control.list_runs(workflow="t_steps", limit=50)
    assert {r.run_id for r in steps} == set(ids)
    cancelled, _ = await control.list_runs(status="cancelled")
    assert [r.run_id for r in cancelled] == [loop_id]
    with pytest.raises(InvalidInput):
        await control.list_runs(status="sleepy")
    with pytest.raises(BadCursor):
        await control.list_runs(before="yesterday")


async def test_list_runs_puts_the_newer_run_first(control: Control) -> None:
    older = await control.start("t_steps", {})
    await asyncio.sleep(0.01)
    newer = await control.start("t_steps", {})
    page, cursor = await control.list_runs()
    assert [r.run_id for r in page] == [newer.run_id, older.run_id] and cursor is None


async def test_state_of_unknown_run_is_not_found(control: Control) -> None:
    with pytest.raises(NotFound):
        await control.state("missing")
    rec = await control.start("t_steps", {})
    assert await control.state(rec.run_id) is None


@pytest.mark.parametrize("before", ["²:x", "1:bad id", "123456789012345678901234:x", "x"])
async def test_a_malformed_history_cursor_is_a_bad_cursor_not_a_crash(
    control: Control, before: str
) -> None:
    from tidings.errors import BadCursor

    with pytest.raises(BadCursor):
        await control.list_runs(before=before)
