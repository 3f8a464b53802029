"""What a viewer reads in a run's log: the seed's task messages, progress that moves while a run
fans out, and token events that name their model. Real worker processes, a real server."""

from __future__ import annotations

from typing import Any

import tests.workflows_for_tests  # noqa: F401
from tests.engine_helpers import all_events, of_type, wait_terminal
from tidings.bus import Bus
from tidings.control import Control
from tidings.events import Event, EventType


def _messages(events: list[Event], type: EventType, task: str) -> list[str]:
    return [e.message for e in events if e.type is type and e.task == task]


async def test_step_and_task_events_carry_the_seeds_messages(
    control: Control, bus: Bus, workers: Any
) -> None:
    await workers(1)
    steps = await control.start("t_steps", {"n": 2, "fail_at": 1})
    flaky = await control.start("t_fan", {"n": 1, "sleep_s": 0.0, "flaky": True})
    broken = await control.start("t_fan", {"n": 1, "sleep_s": 0.0, "broken": True})

    await wait_terminal(bus, steps.run_id)
    events = await all_events(bus, steps.run_id)
    assert _messages(events, EventType.TASK_STARTED, "s") == ["Starting task: s"]
    assert _messages(events, EventType.TASK_COMPLETED, "s") == ["Completed: s"]
    assert _messages(events, EventType.TASK_FAILED, "s#2") == [
        "Task failed: s#2 - RuntimeError: step 1 broke"
    ]

    await wait_terminal(bus, flaky.run_id)
    events = await all_events(bus, flaky.run_id)
    assert _messages(events, EventType.TASK_STARTED, "w0") == ["Starting task: w0"] * 2
    assert _messages(events, EventType.TASK_RETRYING, "w0") == [
        "Retrying w0 (try 2 of 3): RuntimeError: flaky 0"
    ]
    assert _messages(events, EventType.TASK_COMPLETED, "w0") == ["Completed: w0"]

    end = await wait_terminal(bus, broken.run_id)
    assert end.type is EventType.WORKFLOW_FAILED
    events = await all_events(bus, broken.run_id)
    assert _messages(events, EventType.TASK_RETRYING, "w0") == [
        "Retrying w0 (try 2 of 3): RuntimeError: broken 0",
        "Retrying w0 (try 3 of 3): RuntimeError: broken 0",
    ]
    [failed] = of_type(events, EventType.TASK_FAILED)
    assert failed.task == "w0" and failed.message == "Task failed: w0 - RuntimeError: broken 0"


async def test_a_fan_out_over_a_span_advances_the_runs_progress_as_tasks_complete(
    control: Control, bus: Bus, workers: Any
) -> None:
    await workers(1, worker_max_jobs=8)
    span = {"n": 4, "sleep_s": 0.3, "stagger": True, "progress": [20, 60]}
    rec = await control.start("t_fan", span)
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    events = await all_events(bus, rec.run_id)
    progress = [e.progress for e in events]
    assert progress == sorted(progress)

    # The run's own accounting: one event each time it sees more tasks done, 10 points a task.
    counted = [e for e in of_type(events, EventType.TASK_PROGRESS) if e.task is None]
    assert all(e.data and e.progress == 20 + 10 * e.data["done"] for e in counted)
    assert counted[0].progress == 20 and counted[-1].progress == 60
    # The tasks finish 0.3 s apart, so the bar stops in between at least once.
    assert any(20 < e.progress < 60 for e in counted)
    assert counted[-1].message == "4 of 4 tasks done"

    # Each task at half way asks for 20 + 10 * 0.5: a lower bound, so the bar moves at once.
    halves = [e for e in of_type(events, EventType.TASK_PROGRESS) if e.task is not None]
    assert len(halves) == 4 and all(e.progress >= 25 for e in halves)
    first_done = next(e for e in events if e.type is EventType.TASK_COMPLETED)
    assert first_done.progress < 30  # a half-done task never counts as a whole one


async def test_a_fan_out_without_a_span_leaves_progress_to_the_workflow(
    control: Control, bus: Bus, workers: Any
) -> None:
    await workers(1)
    rec = await control.start("t_fan", {"n": 2, "sleep_s": 0.0})
    await wait_terminal(bus, rec.run_id)
    events = await all_events(bus, rec.run_id)
    assert [e for e in events if e.type is EventType.TASK_PROGRESS and e.task is None] == []
    assert all(e.progress == 0 for e in events if not e.terminal)


async def test_token_events_name_the_model_that_wrote_them(
    control: Control, bus: Bus, workers: Any
) -> None:
    await workers(1)
    rec = await control.start("t_llm", {})
    await wait_terminal(bus, rec.run_id)
    tokens = of_type(await all_events(bus, rec.run_id), EventType.TOKEN)
    assert tokens
    for token in tokens:
        assert token.data is not None and set(token.data) == {"text", "model", "simulated"}
        assert token.data["model"] == "simulated" and token.data["simulated"] is True
