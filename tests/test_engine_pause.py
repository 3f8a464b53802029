"""Pause and resume are judged by what was asked, not only by the run's status.

A run's status changes to `paused` (and back) only when its workflow reaches a step boundary, and
to `queued` while it is handed to another worker; a pause or resume sent in between must neither
be refused nor lost. Runs are moved through their lifecycle here by publishing the events a worker
would publish; the last test uses a real worker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

import tests.workflows_for_tests  # noqa: F401  (registers the test workflows)
from tests.engine_helpers import all_events, of_type, until, wait_event, wait_terminal
from tidings import codec
from tidings.bus import Bus
from tidings.control import Control
from tidings.errors import Conflict
from tidings.events import EventType, RunStatus
from tidings.keys import Keys
from tidings.signals import fold_signals


async def _running(control: Control, bus: Bus) -> str:
    rec = await control.start("t_loop", {})
    await bus.publish(rec.run_id, EventType.WORKFLOW_STARTED, "started", attempt=rec.attempt)
    return rec.run_id


async def _asked(redis: Redis, keys: Keys, run_id: str) -> list[str]:
    raw = await redis.lrange(keys.signals(run_id), 0, -1)  # type: ignore[misc]
    return [str(codec.loads(item)["name"]) for item in raw]


async def test_resume_right_after_pause_is_accepted_before_the_run_pauses(
    control: Control, bus: Bus, redis: Redis, keys: Keys
) -> None:
    run_id = await _running(control, bus)
    await control.signal(run_id, "pause")
    assert (await control.get(run_id)).status is RunStatus.RUNNING  # no step boundary yet
    await control.signal(run_id, "resume")
    assert await _asked(redis, keys, run_id) == ["pause", "resume"]
    assert fold_signals(await redis.lrange(keys.signals(run_id), 0, -1)).paused is False  # type: ignore[misc]
    with pytest.raises(Conflict):
        await control.signal(run_id, "resume")  # already resumed: nothing to resume


async def test_pause_right_after_resume_is_accepted(
    control: Control, bus: Bus, redis: Redis, keys: Keys
) -> None:
    run_id = await _running(control, bus)
    await control.signal(run_id, "pause")
    await bus.publish(run_id, EventType.WORKFLOW_PAUSED, "paused", attempt=1)
    await control.signal(run_id, "resume")
    assert (await control.get(run_id)).status is RunStatus.PAUSED  # not resumed yet
    await control.signal(run_id, "pause")
    assert await _asked(redis, keys, run_id) == ["pause", "resume", "pause"]
    with pytest.raises(Conflict):
        await control.signal(run_id, "pause")  # already asked to pause


async def test_pause_twice_or_resume_of_a_running_run_is_a_conflict(
    control: Control, bus: Bus, redis: Redis, keys: Keys
) -> None:
    run_id = await _running(control, bus)
    with pytest.raises(Conflict):
        await control.signal(run_id, "resume")
    await control.signal(run_id, "pause")
    with pytest.raises(Conflict):
        await control.signal(run_id, "pause")
    assert await _asked(redis, keys, run_id) == ["pause"]


async def test_pause_and_resume_while_the_run_is_queued_for_another_worker(
    control: Control, bus: Bus, redis: Redis, keys: Keys
) -> None:
    run_id = await _running(control, bus)
    await control.signal(run_id, "pause")
    await bus.publish(run_id, EventType.WORKFLOW_PAUSED, "paused", attempt=1)
    await bus.publish(run_id, EventType.WORKER_LOST, "handed back")  # status: queued
    assert (await control.get(run_id)).status is RunStatus.QUEUED
    await control.signal(run_id, "resume")  # it was asked to pause: resuming is allowed
    await control.signal(run_id, "pause")
    assert await _asked(redis, keys, run_id) == ["pause", "resume", "pause"]
    # A run queued without any pause asked for may be paused before a worker starts it.
    fresh = await control.start("t_loop", {})
    with pytest.raises(Conflict):
        await control.signal(fresh.run_id, "resume")
    await control.signal(fresh.run_id, "pause")


async def test_finished_runs_take_neither_pause_nor_resume(control: Control, bus: Bus) -> None:
    run_id = await _running(control, bus)
    await control.signal(run_id, "pause")
    await bus.publish(run_id, EventType.WORKFLOW_CANCELLED, "cancelled", attempt=1)
    for name in ("resume", "pause", "stop"):
        with pytest.raises(Conflict):
            await control.signal(run_id, name)


async def test_concurrent_pauses_are_accepted_once(
    control: Control, bus: Bus, redis: Redis, keys: Keys
) -> None:
    run_id = await _running(control, bus)
    outcomes = await asyncio.gather(
        *(control.signal(run_id, "pause") for _ in range(5)), return_exceptions=True
    )
    assert sum(not isinstance(o, Exception) for o in outcomes) == 1
    assert all(isinstance(o, Conflict) for o in outcomes if isinstance(o, Exception))
    assert await _asked(redis, keys, run_id) == ["pause"]


async def test_concurrent_signals_enter_the_list_in_the_order_of_their_events(
    control: Control, bus: Bus, redis: Redis, keys: Keys
) -> None:
    run_id = await _running(control, bus)
    names = ["pause", "resume"] * 5 + ["message"] * 5
    await asyncio.gather(*(control.signal(run_id, name) for name in names))
    events = of_type(await all_events(bus, run_id), EventType.SIGNAL_RECEIVED)
    raw = await redis.lrange(keys.signals(run_id), 0, -1)  # type: ignore[misc]
    assert [codec.loads(item)["id"] for item in raw] == [e.id for e in events]
    assert await _asked(redis, keys, run_id) == names


async def test_pause_then_resume_in_quick_succession_leaves_the_run_running_to_completion(
    control: Control, bus: Bus, workers: Any
) -> None:
    await workers(1)
    rec = await control.start("t_steps", {"n": 4, "sleep_s": 0.3})
    run_id = rec.run_id
    await wait_event(bus, run_id, lambda e: e.type is EventType.TASK_STARTED, "a step")
    await control.signal(run_id, "pause")
    await control.signal(run_id, "resume")  # the run is still in its step: not yet paused
    end = await wait_terminal(bus, run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    record = await control.get(run_id)
    assert record.status is RunStatus.COMPLETED and len(record.result) == 4
    events = await all_events(bus, run_id)
    paused = of_type(events, EventType.WORKFLOW_PAUSED)
    assert len(of_type(events, EventType.WORKFLOW_RESUMED)) == len(paused) <= 1


async def test_resume_then_pause_in_quick_succession_leaves_the_run_paused(
    control: Control, bus: Bus, workers: Any, processes: Any
) -> None:
    [worker] = await workers(1, log_level="debug")
    rec = await control.start("t_loop", {"tick_s": 0.2})
    run_id = rec.run_id
    await wait_event(bus, run_id, lambda e: e.type is EventType.ITERATION_STARTED, "a loop")
    await control.signal(run_id, "pause")
    await wait_event(bus, run_id, lambda e: e.type is EventType.WORKFLOW_PAUSED, "paused")
    await control.signal(run_id, "resume")
    await control.signal(run_id, "pause")  # before or after the worker resumed: both are fine
    # Either the worker read both at once and never left its pause (nothing in the log says
    # so), or it resumed and paused again at its next step boundary. Both end in its pause loop
    # with all three signals read, which the worker reports: only then is the outcome final.
    settled = f"run {run_id} attempt 1 paused, 3 signals read"
    await until(lambda: settled in processes.output(worker), what="the worker to settle")
    events = await all_events(bus, run_id)
    paused = len(of_type(events, EventType.WORKFLOW_PAUSED))
    resumed = len(of_type(events, EventType.WORKFLOW_RESUMED))
    assert (paused, resumed) in ((1, 0), (2, 1))
    assert (await control.get(run_id)).status is RunStatus.PAUSED
    await control.signal(run_id, "stop")
    end = await wait_terminal(bus, run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED
