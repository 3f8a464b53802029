"""Crash recovery with real worker processes: kill -9, a frozen zombie, SIGTERM hand-back."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

import tests.workflows_for_tests  # noqa: F401
from tests.engine_helpers import (
    FAST_LEASES,
    all_events,
    of_type,
    pid_of,
    start_workers,
    until,
    wait_event,
    wait_terminal,
)
from tidings.bus import Bus
from tidings.control import Control
from tidings.events import Event, EventType, RunStatus
from tidings.keys import Keys

pytestmark = pytest.mark.slow


async def _two_workers(
    processes: Any,
    settings_env: Callable[..., dict[str, str]],
    redis: Redis,
    keys: Keys,
    **settings: object,
) -> dict[int, subprocess.Popen[bytes]]:
    procs = await start_workers(
        processes, settings_env, redis, keys, 2, **{**FAST_LEASES, **settings}
    )
    return {proc.pid: proc for proc in procs}


async def _holder(bus: Bus, run_id: str, steps_done: int) -> int:
    """Once `steps_done` steps completed, the pid of the worker running the run."""
    await wait_event(
        bus,
        run_id,
        lambda e: e.type is EventType.TASK_COMPLETED and e.task == f"s#{steps_done}",
        f"{steps_done} steps",
    )
    started = of_type(await all_events(bus, run_id), EventType.WORKFLOW_STARTED)[0]
    assert started.data is not None
    return pid_of(started.data["worker"])


def _assert_exactly_once_and_fenced(events: list[Event], n: int) -> Event:
    """Every step announced once; nothing from attempt 1 after the run moved on."""
    completed = Counter(e.task for e in of_type(events, EventType.TASK_COMPLETED))
    names = ["s"] + [f"s#{i}" for i in range(2, n + 1)]
    assert completed == Counter(names), completed
    [lost] = of_type(events, EventType.WORKER_LOST)
    assert lost.attempt == 2 and lost.data is not None and lost.data["previous_attempt"] == 1
    assert all(e.attempt != 1 for e in events if e.seq > lost.seq)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    return lost


async def test_kill_9_of_the_running_worker_completes_on_the_other(
    control: Control, bus: Bus, redis: Redis, keys: Keys, processes: Any, settings_env: Any
) -> None:
    procs = await _two_workers(processes, settings_env, redis, keys)
    n = 8
    rec = await control.start("t_steps", {"n": n, "sleep_s": 0.25})
    victim = await _holder(bus, rec.run_id, 2)
    os.kill(victim, signal.SIGKILL)
    procs[victim].wait()
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    events = await all_events(bus, rec.run_id)
    lost = _assert_exactly_once_and_fenced(events, n)
    assert lost.data is not None and pid_of(lost.data["worker"]) == victim
    restarted = of_type(events, EventType.WORKFLOW_STARTED)[-1]
    assert restarted.data is not None and restarted.data["attempt"] == 2
    assert pid_of(restarted.data["worker"]) != victim
    record = await control.get(rec.run_id)
    assert record.status is RunStatus.COMPLETED and record.attempt == 2
    assert [r["i"] for r in record.result] == list(range(n))


async def test_a_frozen_zombie_is_fenced_when_it_wakes_up(
    control: Control, bus: Bus, redis: Redis, keys: Keys, processes: Any, settings_env: Any
) -> None:
    procs = await _two_workers(processes, settings_env, redis, keys)
    n = 12
    rec = await control.start("t_steps", {"n": n, "sleep_s": 0.3})
    zombie = await _holder(bus, rec.run_id, 2)
    os.kill(zombie, signal.SIGSTOP)
    try:
        await wait_event(bus, rec.run_id, lambda e: e.type is EventType.WORKER_LOST, "recovery")
        steps_before = await redis.hgetall(keys.steps(rec.run_id))
    finally:
        os.kill(zombie, signal.SIGCONT)
    # The zombie resumes mid-step while attempt 2 runs: it must neither publish nor commit.
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    events = await all_events(bus, rec.run_id)
    _assert_exactly_once_and_fenced(events, n)
    steps_after = await redis.hgetall(keys.steps(rec.run_id))
    assert all(steps_after[k] == v for k, v in steps_before.items())
    record = await control.get(rec.run_id)
    pids = {r["pid"] for r in record.result}
    assert pids <= set(procs) and len(pids) == 2
    assert procs[zombie].poll() is None  # alive, fenced, still serving


async def test_sigterm_hands_the_run_back_without_waiting_for_the_lease(
    control: Control, bus: Bus, redis: Redis, keys: Keys, processes: Any, settings_env: Any
) -> None:
    # A lease far longer than this test may take: only a hand-back can move the run in time.
    procs = await _two_workers(
        processes, settings_env, redis, keys, lease_ttl_ms=300_000, lease_refresh_ms=1000
    )
    n = 6
    rec = await control.start("t_steps", {"n": n, "sleep_s": 0.25})
    leaving = await _holder(bus, rec.run_id, 2)
    procs[leaving].send_signal(signal.SIGTERM)
    end = await wait_terminal(bus, rec.run_id, timeout=60)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    assert procs[leaving].wait(10) == 0
    events = await all_events(bus, rec.run_id)
    lost = _assert_exactly_once_and_fenced(events, n)
    assert lost.data is not None and lost.data["reason"] == "shutdown"
    assert "handed back" in lost.message
    restarted = of_type(events, EventType.WORKFLOW_STARTED)[-1]
    assert restarted.data is not None and pid_of(restarted.data["worker"]) != leaving


async def test_a_task_whose_worker_died_is_enqueued_again(
    control: Control, bus: Bus, redis: Redis, keys: Keys, processes: Any, settings_env: Any
) -> None:
    procs = await _two_workers(processes, settings_env, redis, keys, worker_max_jobs=2)
    rec = await control.start("t_fan", {"n": 4, "sleep_s": 2.0})

    async def tasks_on_other_worker() -> int | None:
        events = await all_events(bus, rec.run_id)
        started = of_type(events, EventType.WORKFLOW_STARTED)
        if not started or not started[0].data:
            return None
        holder = pid_of(started[0].data["worker"])
        others = {
            pid_of(e.data["worker"])
            for e in of_type(events, EventType.TASK_STARTED)
            if e.data and pid_of(e.data["worker"]) != holder
        }
        return others.pop() if others else None

    victim = await until(tasks_on_other_worker, what="a task on the other worker")
    os.kill(victim, signal.SIGKILL)
    procs[victim].wait()
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    events = await all_events(bus, rec.run_id)
    retried = [e for e in of_type(events, EventType.TASK_RETRYING) if e.data]
    assert retried and all(e.data and e.data["reason"] == "worker_lost" for e in retried)
    completed = Counter(e.task_id for e in of_type(events, EventType.TASK_COMPLETED))
    assert completed == Counter(["p1.0", "p1.1", "p1.2", "p1.3"])
    record = await control.get(rec.run_id)
    assert victim not in {r["pid"] for r in record.result}


async def test_a_queued_run_whose_job_vanished_is_enqueued_again(
    control: Control, bus: Bus, redis: Redis, keys: Keys, processes: Any, settings_env: Any
) -> None:
    from tidings.jobs import job_key, run_job_id

    rec = await control.start("t_steps", {"n": 2})
    job_id = run_job_id(rec.run_id, 1, keys.run_tag(rec.run_id))
    await redis.zrem(keys.queue_for("t_steps", "1", keys.bucket(rec.run_id)), job_id)
    await redis.delete(job_key(job_id))
    await start_workers(processes, settings_env, redis, keys, 1, **FAST_LEASES)
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED
    events = await all_events(bus, rec.run_id)
    assert [e.type for e in events][:2] == [EventType.WORKER_LOST, EventType.WORKFLOW_STARTED]
    assert (await control.get(rec.run_id)).attempt == 2


async def test_sigterm_hands_running_tasks_back(
    control: Control, bus: Bus, redis: Redis, keys: Keys, processes: Any, settings_env: Any
) -> None:
    procs = await _two_workers(
        processes, settings_env, redis, keys, worker_max_jobs=2, lease_ttl_ms=300_000
    )
    rec = await control.start("t_fan", {"n": 4, "sleep_s": 1.0})

    async def task_worker() -> int | None:
        events = await all_events(bus, rec.run_id)
        started = of_type(events, EventType.WORKFLOW_STARTED)
        if not started or not started[0].data:
            return None
        holder = pid_of(started[0].data["worker"])
        pids = {pid_of(e.data["worker"]) for e in of_type(events, EventType.TASK_STARTED) if e.data}
        return next(iter(pids - {holder}), None)

    leaving = await until(task_worker, what="a task on the other worker")
    procs[leaving].send_signal(signal.SIGTERM)
    end = await wait_terminal(bus, rec.run_id, timeout=60)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    assert procs[leaving].wait(10) == 0
    events = await all_events(bus, rec.run_id)
    handed = [e for e in of_type(events, EventType.TASK_RETRYING) if e.data]
    assert handed and all(e.data and e.data["reason"] == "shutdown" for e in handed)
    completed = Counter(e.task_id for e in of_type(events, EventType.TASK_COMPLETED))
    assert completed == Counter(["p1.0", "p1.1", "p1.2", "p1.3"])
    assert leaving not in {r["pid"] for r in (await control.get(rec.run_id)).result}


async def test_a_killed_worker_is_noticed_before_its_lease_expires(
    control: Control, bus: Bus, redis: Redis, keys: Keys, processes: Any, settings_env: Any
) -> None:
    # Its connections vanish with it; a lease this long would otherwise hold the run for minutes.
    procs = await _two_workers(
        processes, settings_env, redis, keys, lease_ttl_ms=300_000, lease_refresh_ms=1000
    )
    n = 6
    rec = await control.start("t_steps", {"n": n, "sleep_s": 0.25})
    victim = await _holder(bus, rec.run_id, 2)
    os.kill(victim, signal.SIGKILL)
    procs[victim].wait()
    end = await wait_terminal(bus, rec.run_id, timeout=60)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    events = await all_events(bus, rec.run_id)
    lost = _assert_exactly_once_and_fenced(events, n)
    assert lost.data is not None and lost.data["reason"] == "worker_gone"
