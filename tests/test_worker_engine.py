"""The workflow engine end to end: real worker processes, a real server, test workflows."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

import tests.workflows_for_tests  # noqa: F401
from tests.engine_helpers import (
    all_events,
    of_type,
    until,
    wait_event,
    wait_terminal,
)
from tidings import codec
from tidings.bus import Bus
from tidings.control import Control
from tidings.events import EventType, RunStatus
from tidings.keys import Keys


async def test_steps_are_checkpointed_and_a_checkpoint_is_never_rerun(
    control: Control, bus: Bus, redis: Redis, keys: Keys, workers: Any
) -> None:
    rec = await control.start("t_steps", {"n": 3})
    # As if an earlier attempt had committed the first step: it must be returned, not re-run.
    await redis.hset(keys.steps(rec.run_id), "s", codec.dumps({"i": 0, "pid": -1}))
    await workers(1)
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED and end.progress == 100
    record = await control.get(rec.run_id)
    assert record.status is RunStatus.COMPLETED
    assert record.result[0] == {"i": 0, "pid": -1} and [r["i"] for r in record.result] == [0, 1, 2]
    events = await all_events(bus, rec.run_id)
    assert [e.task for e in of_type(events, EventType.TASK_COMPLETED)] == ["s#2", "s#3"]
    started = of_type(events, EventType.WORKFLOW_STARTED)[0]
    assert started.data is not None and started.data["attempt"] == 1 and started.data["worker"]
    assert all(e.attempt == 1 for e in events)
    steps = await redis.hgetall(keys.steps(rec.run_id))
    assert set(steps) == {b"s", b"s#2", b"s#3"}


async def test_a_failing_step_fails_the_run_with_its_error(
    control: Control, bus: Bus, workers: Any
) -> None:
    await workers(1)
    rec = await control.start("t_steps", {"n": 3, "fail_at": 1})
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_FAILED and "step 1 broke" in end.message
    events = await all_events(bus, rec.run_id)
    [failed] = of_type(events, EventType.TASK_FAILED)
    assert failed.task == "s#2"
    record = await control.get(rec.run_id)
    assert record.status is RunStatus.FAILED and "step 1 broke" in record.error


async def test_parallel_tasks_spread_over_the_pool(
    control: Control, bus: Bus, redis: Redis, keys: Keys, workers: Any
) -> None:
    # Two slots per worker: the run holds one, so its worker cannot take every task.
    await workers(2, worker_max_jobs=2)
    rec = await control.start("t_fan", {"n": 4, "sleep_s": 0.3})
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    record = await control.get(rec.run_id)
    assert [r["i"] for r in record.result] == [0, 1, 2, 3]
    events = await all_events(bus, rec.run_id)
    started = of_type(events, EventType.TASK_STARTED)
    workers_used = {e.data["worker"] for e in started if e.data}
    assert len(workers_used) == 2
    assert len({r["pid"] for r in record.result}) == 2
    completed = of_type(events, EventType.TASK_COMPLETED)
    assert sorted(e.task_id or "" for e in completed) == ["p1.0", "p1.1", "p1.2", "p1.3"]
    assert {e.task for e in of_type(events, EventType.TASK_PROGRESS)} == {"w0", "w1", "w2", "w3"}
    assert await redis.hlen(keys.tasks(rec.run_id)) == 4


async def test_a_failing_task_is_retried_with_task_retrying_events(
    control: Control, bus: Bus, workers: Any
) -> None:
    await workers(1)
    rec = await control.start("t_fan", {"n": 2, "sleep_s": 0.0, "flaky": True})
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    events = await all_events(bus, rec.run_id)
    retrying = of_type(events, EventType.TASK_RETRYING)
    assert sorted(e.task or "" for e in retrying) == ["w0", "w1"]
    assert all(e.data and e.data["try"] == 1 for e in retrying)
    assert len(of_type(events, EventType.TASK_COMPLETED)) == 2


async def test_pause_resume_and_stop_appear_as_events_and_take_effect(
    control: Control, bus: Bus, workers: Any
) -> None:
    await workers(1)
    rec = await control.start("t_loop", {"tick_s": 0.05})
    run_id = rec.run_id
    await wait_event(bus, run_id, lambda e: e.type is EventType.ITERATION_COMPLETED, "a loop")
    await control.signal(run_id, "pause")
    await wait_event(bus, run_id, lambda e: e.type is EventType.WORKFLOW_PAUSED, "paused")
    assert (await control.get(run_id)).status is RunStatus.PAUSED
    paused_at = len(await all_events(bus, run_id))
    await control.signal(run_id, "resume")
    resumed = await wait_event(
        bus, run_id, lambda e: e.type is EventType.WORKFLOW_RESUMED, "resumed"
    )
    assert resumed.seq == paused_at + 2  # the resume's signal_received, then the effect
    await control.signal(run_id, "stop")
    end = await wait_terminal(bus, run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED
    record = await control.get(run_id)
    assert record.result["iterations"] >= 1
    assert (await control.state(run_id))["iterations"] == record.result["iterations"]
    events = await all_events(bus, run_id)
    signals = [e.data["signal"] for e in of_type(events, EventType.SIGNAL_RECEIVED) if e.data]
    assert signals == ["pause", "resume", "stop"]
    # The last iteration finished before completing.
    kinds = [e.type for e in events if e.type.value.startswith("iteration")]
    assert kinds[-1] is EventType.ITERATION_COMPLETED


async def test_cancel_aborts_a_running_run(control: Control, bus: Bus, workers: Any) -> None:
    await workers(1)
    rec = await control.start("t_loop", {"tick_s": 30})
    await wait_event(bus, rec.run_id, lambda e: e.type is EventType.ITERATION_STARTED, "a loop")
    await control.signal(rec.run_id, "cancel")
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_CANCELLED
    assert (await control.get(rec.run_id)).status is RunStatus.CANCELLED


async def test_stop_wakes_a_sleeping_run(control: Control, bus: Bus, workers: Any) -> None:
    await workers(1)
    rec = await control.start("t_loop", {"tick_s": 60})
    await wait_event(bus, rec.run_id, lambda e: e.type is EventType.ITERATION_STARTED, "a loop")
    await control.signal(rec.run_id, "stop")
    end = await wait_terminal(bus, rec.run_id, timeout=20)
    assert end.type is EventType.WORKFLOW_COMPLETED
    assert (await control.get(rec.run_id)).result == {"iterations": 1}


async def test_chat_messages_arrive_in_order_and_stop_ends_the_conversation(
    control: Control, bus: Bus, workers: Any
) -> None:
    await workers(1)
    rec = await control.start("t_chat", {})
    for text in ("one", "two", "three"):
        await control.signal(rec.run_id, "message", {"text": text})
    await wait_event(
        bus, rec.run_id, lambda e: e.type is EventType.TASK_COMPLETED and e.task == "reply#3", "3"
    )
    await control.signal(rec.run_id, "stop")
    await wait_terminal(bus, rec.run_id)
    assert (await control.get(rec.run_id)).result == ["ONE", "TWO", "THREE"]


async def test_stream_llm_publishes_coalesced_token_events(
    control: Control, bus: Bus, workers: Any
) -> None:
    await workers(1)
    rec = await control.start("t_llm", {})
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED
    events = await all_events(bus, rec.run_id)
    tokens = of_type(events, EventType.TOKEN)
    assert tokens and all(e.task == "answer" for e in tokens)
    text = "".join(e.data["text"] for e in tokens if e.data)
    assert text == (await control.get(rec.run_id)).result


async def test_a_burst_of_events_is_published_in_order(
    control: Control, bus: Bus, workers: Any
) -> None:
    await workers(1)
    rec = await control.start("t_burst", {"n": 3000})
    await wait_terminal(bus, rec.run_id)
    events = await all_events(bus, rec.run_id)
    logs = of_type(events, EventType.LOG)
    assert [e.data["i"] for e in logs if e.data] == list(range(3000))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_cancel_during_a_fan_out_stops_its_tasks(
    control: Control, bus: Bus, redis: Redis, keys: Keys, workers: Any
) -> None:
    await workers(1)
    rec = await control.start("t_fan", {"n": 2, "sleep_s": 120})
    await wait_event(
        bus,
        rec.run_id,
        lambda e: e.type is EventType.TASK_PROGRESS and e.task == "w1",
        "both tasks running",
    )
    await control.signal(rec.run_id, "cancel")
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_CANCELLED

    async def tasks_gone() -> bool:
        leases = [keys.task_lease(rec.run_id, f"p1.{i}") for i in range(2)]
        return not await redis.exists(*leases)

    # Aborted tasks stop renewing their leases long before their two minutes are up.
    await until(tasks_gone, what="the tasks to stop")
    assert not await redis.exists(keys.steps(rec.run_id))


async def test_a_run_of_a_workflow_the_worker_does_not_know_fails_cleanly(
    bus: Bus, redis: Redis, keys: Keys, workers: Any
) -> None:
    from tidings.runs import RunStore

    # Routing keeps a ghost's jobs on its own queue, which no worker serves; one that reaches a
    # worker anyway (a hand-made job, a stale queue) fails its run instead of hanging.
    rec = await RunStore(redis, keys).create("ghost", {}, job_queue=("t_steps", "1"))
    await workers(1)
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_FAILED and "ghost" in end.message


async def test_runs_cannot_take_the_slots_their_own_tasks_need(
    control: Control, bus: Bus, workers: Any
) -> None:
    # Two slots, two fanning-out runs: if both runs held a slot, no task could ever start.
    await workers(1, worker_max_jobs=2)
    runs = [await control.start("t_fan", {"n": 2, "sleep_s": 0.1}) for _ in range(2)]
    for rec in runs:
        end = await wait_terminal(bus, rec.run_id)
        assert end.type is EventType.WORKFLOW_COMPLETED, end.message
