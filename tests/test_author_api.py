"""The author API on real workers and a real server: typed results, checkpoint keys that never
shift under conditional steps, step and task timeouts and retries, activities by function,
workflow versions. Workflows: tests/workflows_author_api.py (and _v2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.conftest import ROOT
from tests.engine_helpers import (
    FAST_LEASES,
    all_events,
    listening,
    listening_count,
    of_type,
    pid_of,
    until,
    wait_event,
    wait_terminal,
)
from tidings import codec
from tidings.bus import Bus
from tidings.control import Control
from tidings.events import Event, EventType, RunStatus
from tidings.jobs import run_job_id
from tidings.keys import Keys
from tidings.runs import RunStore
from tidings.sdk import Registry, TaskContext
from tidings.settings import Settings

MODULE = "tests.workflows_author_api"
MODULE_V2 = "tests.workflows_author_api_v2"


@pytest.fixture
def control(redis: Redis, keys: Keys, bus: Bus, settings: Settings) -> Control:
    """Learns the workflows from the catalog the workers publish, as a gateway does (this
    process does not import both versions of `t_version`)."""
    return Control(redis, keys, bus, settings)


@pytest.fixture
def start(
    processes: Any, settings_env: Callable[..., dict[str, str]], redis: Redis, keys: Keys
) -> Callable[..., Any]:
    """`await start(module=MODULE, n=1)`: workers serving `module`'s workflows, listening."""

    async def make(module: str = MODULE, n: int = 1) -> list[subprocess.Popen[bytes]]:
        before = await listening_count(redis, keys)
        env = {**settings_env(**FAST_LEASES), "TIDINGS_TEST_WORKFLOWS": module}
        procs = [
            processes.python("tidings.services.worker", env=env, name=f"worker-{module}")
            for _ in range(n)
        ]
        await until(lambda: listening(redis, keys, before + n), what=f"{n} workers", procs=procs)
        return procs

    return make


def _events(events: list[Event], type: EventType, task: str | None = None) -> list[Event]:
    return [e for e in of_type(events, type) if task is None or e.task == task]


async def _kill_holder(bus: Bus, run_id: str, procs: list[subprocess.Popen[bytes]]) -> None:
    """kill -9 of the worker running `run_id` (a crash, mid-run)."""
    started = of_type(await all_events(bus, run_id), EventType.WORKFLOW_STARTED)[-1]
    assert started.data is not None
    pid = pid_of(started.data["worker"])
    os.kill(pid, signal.SIGKILL)
    for proc in procs:
        if proc.pid == pid:
            proc.wait()


# -- 1. activities by function -------------------------------------------------------------


def test_activity_decorator_names_defaults_and_reserved_parameters() -> None:
    reg = Registry()

    @reg.activity
    async def fetch(ctx: TaskContext, url: str) -> str:
        return url

    @reg.activity()
    async def parse(ctx: TaskContext, text: str) -> int:
        return len(text)

    @reg.activity("summarize", retries=0, timeout=5)
    async def summarize_fn(ctx: TaskContext, text: str) -> str:
        return text

    assert set(reg.activities) == {"fetch", "parse", "summarize"}
    assert reg.activity_of(fetch).name == "fetch"
    assert reg.activity_of(summarize_fn) == reg.get_activity("summarize")
    assert (reg.get_activity("summarize").retries, reg.get_activity("summarize").timeout) == (0, 5)
    assert (reg.get_activity("fetch").retries, reg.get_activity("fetch").timeout) == (2, None)

    async def stray(ctx: TaskContext) -> None:
        return None

    with pytest.raises(TypeError, match="stray is not a registered activity"):
        reg.activity_of(stray)
    with pytest.raises(TypeError, match="'timeout' is reserved"):

        @reg.activity
        async def slow(ctx: TaskContext, timeout: float) -> None:
            return None

    with pytest.raises(ValueError, match="registered twice"):
        reg.activity("fetch")(parse)


async def test_tasks_by_function_and_by_name_run_and_bad_references_fail_at_the_call(
    control: Control, bus: Bus, start: Any
) -> None:
    await start()
    by_fn = await control.start("t_refs", {"ref": "function"})
    by_name = await control.start("t_refs", {"ref": "by_name"})
    unknown = await control.start("t_refs", {"ref": "unknown_name"})
    stray = await control.start("t_refs", {"ref": "not_an_activity"})
    for rec, name in ((by_fn, "by function"), (by_name, "by name")):
        end = await wait_terminal(bus, rec.run_id)
        assert end.type is EventType.WORKFLOW_COMPLETED, end.message
        [done] = of_type(await all_events(bus, rec.run_id), EventType.TASK_COMPLETED)
        assert done.task == name
    end = await wait_terminal(bus, unknown.run_id)
    assert end.type is EventType.WORKFLOW_FAILED and "no activity 'no_such_activity'" in end.message
    end = await wait_terminal(bus, stray.run_id)
    assert end.type is EventType.WORKFLOW_FAILED
    assert "TypeError: _not_an_activity is not a registered activity" in end.message
    for rec in (unknown, stray):  # raised by run.task itself, before the next line ran
        assert not of_type(await all_events(bus, rec.run_id), EventType.LOG)


def test_run_task_is_type_checked_against_the_activity(tmp_path: Path) -> None:
    """mypy (strict) accepts right calls, infers the results' types, and rejects wrong calls:
    each expected error is silenced by a specific ignore, which strict mode would report as
    unused were the call accepted."""
    snippet = tmp_path / "typed_calls.py"
    snippet.write_text(
        "from typing import assert_type\n"
        "from tidings.sdk import Run, TaskContext, TaskSpec, activity\n"
        "@activity\n"
        "async def fetch(ctx: TaskContext, url: str, tries: int = 1) -> dict[str, int]:\n"
        "    return {}\n"
        "async def flow(run: Run) -> None:\n"
        "    spec = run.task(fetch, 'https://x', tries=2)\n"
        "    assert_type(spec, TaskSpec[dict[str, int]])\n"
        "    assert_type(spec.options(retries=3, timeout=9.5), TaskSpec[dict[str, int]])\n"
        "    results = await run.parallel([spec])\n"
        "    assert_type(results, list[dict[str, int]])\n"
        "    run.task(fetch, 42)  # type: ignore[call-overload]\n"
        "    run.task(fetch, 'u', retries=3)  # type: ignore[call-arg]\n"
        "    run.task(fetch)  # type: ignore[call-overload]\n"
        "    run.task('fetch', 42, retries=3)  # by name: not checked\n"
    )
    links = tmp_path / "typecheck" / "tidings"
    links.mkdir(parents=True)
    for item in (ROOT / "shared").iterdir():
        (links / item.name).symlink_to(item)
    (links / "services").symlink_to(ROOT / "services")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
        env={**os.environ, "MYPYPATH": str(links.parent)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# -- 2. checkpoint keys under conditional steps ----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fn", "args", "swallow"])
async def test_a_conditional_step_replayed_after_a_crash_fails_with_replay_mismatch(
    control: Control, bus: Bus, start: Any, mode: str
) -> None:
    procs = await start()
    rec = await control.start("t_cond", {"mode": mode})
    await wait_event(bus, rec.run_id, lambda e: e.type is EventType.LOG, "attempt 1 holding")
    await _kill_holder(bus, rec.run_id, procs)
    await start()  # its sweeper recovers the run: attempt 2 takes the other path
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_FAILED, end.message
    assert end.message.startswith("ReplayMismatch: checkpoint")
    assert ("other arguments" in end.message) is (mode == "args")
    events = await all_events(bus, rec.run_id)
    # Attempt 2 ran no step and returned nothing: no result shifted from another step.
    assert not [e for e in events if e.attempt == 2 and e.type is EventType.TASK_COMPLETED]
    record = await control.get(rec.run_id)
    assert record.status is RunStatus.FAILED and record.result is None and record.attempt == 2


@pytest.mark.slow
async def test_keyed_conditional_steps_keep_their_results_after_a_crash(
    control: Control, bus: Bus, start: Any
) -> None:
    procs = await start()
    rec = await control.start("t_cond", {"mode": "keyed"})
    await wait_event(bus, rec.run_id, lambda e: e.type is EventType.LOG, "attempt 1 holding")
    events = await all_events(bus, rec.run_id)
    assert [e.task_id for e in of_type(events, EventType.TASK_COMPLETED)] == [
        "key:first",
        "key:second",
    ]
    await _kill_holder(bus, rec.run_id, procs)
    await start()
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    assert (await control.get(rec.run_id)).result == {"second": {"step": "second"}}
    events = await all_events(bus, rec.run_id)
    assert not [e for e in events if e.attempt == 2 and e.type is EventType.TASK_STARTED]


async def test_checkpoints_written_before_identities_replay_as_they_are(
    control: Control, bus: Bus, redis: Redis, keys: Keys, start: Any
) -> None:
    await start()
    rec = await control.start("t_steps", {"n": 2})
    # A bare JSON result, as the earlier code stored checkpoints (and runs migrated from it).
    await redis.hset(keys.steps(rec.run_id), "s", codec.dumps({"i": 0, "pid": -1}))
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    assert (await control.get(rec.run_id)).result[0] == {"i": 0, "pid": -1}
    stored = codec.loads(await redis.hget(keys.steps(rec.run_id), "s#2"))
    assert stored["$step"]["fn"] == "_one_step" and stored["$step"]["n"] == 2
    assert stored["value"]["i"] == 1


# -- 3. timeouts, retries, back-off ----------------------------------------------------------


async def test_step_timeout_retries_with_backoff_then_raises_step_timeout(
    control: Control, bus: Bus, start: Any
) -> None:
    await start()
    rec = await control.start("t_tries", {"case": "step_timeout"})
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_FAILED
    assert end.message == "StepTimeout: step slow timed out after 0.2 s on each of 3 tries"
    events = await all_events(bus, rec.run_id)
    retrying = _events(events, EventType.TASK_RETRYING, "slow")
    assert [(e.data or {}).get("try") for e in retrying] == [1, 2]
    assert [(e.data or {}).get("delay_s") for e in retrying] == [0.01, 0.02]
    assert all("StepTimeout" in (e.data or {}).get("error", "") for e in retrying)
    [failed] = _events(events, EventType.TASK_FAILED, "slow")
    assert failed.data is not None and failed.data["try"] == 2


async def test_step_retries_until_it_succeeds_and_options_never_reach_the_function(
    control: Control, bus: Bus, start: Any
) -> None:
    await start()
    flaky = await control.start("t_tries", {"case": "step_retry"})
    kwargs = await control.start("t_tries", {"case": "step_kwargs"})
    deliberate = await control.start("t_tries", {"case": "step_deliberate"})
    end = await wait_terminal(bus, flaky.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    assert (await control.get(flaky.run_id)).result == "ok after 3 calls"
    events = await all_events(bus, flaky.run_id)
    assert len(_events(events, EventType.TASK_RETRYING, "flaky")) == 2
    assert len(_events(events, EventType.TASK_COMPLETED, "flaky")) == 1
    end = await wait_terminal(bus, kwargs.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    assert (await control.get(kwargs.run_id)).result == {"a": 1, "b": 2, "name": "passed to fn"}
    end = await wait_terminal(bus, deliberate.run_id)
    assert (
        end.type is EventType.WORKFLOW_FAILED and end.message == "WorkflowError: no retry for this"
    )
    assert not of_type(await all_events(bus, deliberate.run_id), EventType.TASK_RETRYING)


async def test_task_timeout_fails_each_try_then_the_task(
    control: Control, bus: Bus, start: Any
) -> None:
    await start()
    slow = await control.start("t_task_tries", {})
    fast_retry = await control.start("t_task_tries", {"fast_from_try": 1})
    end = await wait_terminal(bus, slow.run_id)
    assert end.type is EventType.WORKFLOW_FAILED
    assert end.message.startswith("TaskFailed: task p1.0 failed: StepTimeout: task a_sleepy")
    assert "timed out after 0.3 s" in end.message
    events = await all_events(bus, slow.run_id)
    [retrying] = of_type(events, EventType.TASK_RETRYING)
    assert retrying.data is not None and "timed out" in retrying.data["error"]
    [failed] = of_type(events, EventType.TASK_FAILED)
    assert failed.data is not None and failed.data["try"] == 1
    end = await wait_terminal(bus, fast_retry.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    assert (await control.get(fast_retry.run_id)).result == ["fast on try 1"]


# -- 4. typed results ------------------------------------------------------------------------

_KINDS = {"point": "Point", "pair": "tuple", "raw": "dict", "task0": "Point", "task1": "Point"}


@pytest.mark.slow
async def test_results_come_back_as_annotated_types_first_time_and_on_replay(
    control: Control, bus: Bus, start: Any
) -> None:
    procs = await start()
    first = await control.start("t_typed", {})
    end = await wait_terminal(bus, first.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    assert (await control.get(first.run_id)).result == {"kinds": _KINDS, "sum": 3 + 7 + 11}
    # Replayed after a crash: every result comes from its checkpoint, typed the same way.
    held = await control.start("t_typed", {"hold": True})
    await wait_event(
        bus,
        held.run_id,
        lambda e: e.type is EventType.TASK_COMPLETED and e.task_id == "p1.1",
        "all",
    )
    await until(
        lambda: control.state(held.run_id), what="attempt 1's state"
    )  # saved after its steps
    await _kill_holder(bus, held.run_id, procs)
    await start()
    end = await wait_terminal(bus, held.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    assert (await control.state(held.run_id)) == {"attempt1": _KINDS, "attempt2": _KINDS}
    events = await all_events(bus, held.run_id)
    assert not [e for e in events if e.attempt == 2 and e.type is EventType.TASK_STARTED]


# -- 5. versions -----------------------------------------------------------------------------


async def test_a_run_records_its_version_and_tasks_and_info_tell_it(
    control: Control, bus: Bus, start: Any
) -> None:
    await start(MODULE_V2)
    rec = await control.start("t_version", {})
    assert rec.version == "2"
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    record = await control.get(rec.run_id)
    assert record.version == "2"
    task = {"workflow": "t_version", "version": "2", "task": "a_info"}
    assert record.result == {"run": "2", "task": task, "code": "2"}


async def test_a_worker_never_executes_another_versions_run(
    bus: Bus, redis: Redis, keys: Keys, start: Any
) -> None:
    await start(MODULE_V2)
    # A run of version 1 whose job reached a queue a version-2 worker serves.
    rec = await RunStore(redis, keys).create(
        "t_version", {}, version="1", job_queue=("t_version", "2")
    )
    lost = await wait_event(bus, rec.run_id, lambda e: e.type is EventType.WORKER_LOST, "handback")
    assert lost.data is not None and lost.data["reason"] == "version" and lost.attempt == 2
    v1 = keys.queue_for("t_version", "1", keys.bucket(rec.run_id))
    job = run_job_id(rec.run_id, 2, keys.run_tag(rec.run_id))
    assert await redis.zscore(v1, job) is not None
    await start(MODULE)  # serves version 1: takes it
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    events = await all_events(bus, rec.run_id)
    assert [e.attempt for e in of_type(events, EventType.WORKFLOW_STARTED)] == [2]
    result = (await RunStore(redis, keys).get(rec.run_id)).result
    assert result["code"] == "1" and result["run"] == "1" and result["task"]["version"] == "1"


# -- 7. cancellation -------------------------------------------------------------------------


async def test_a_run_that_swallows_its_cancel_still_ends_cancelled(
    control: Control, bus: Bus, start: Any
) -> None:
    await start()
    rec = await control.start("t_swallow_cancel", {})
    await wait_event(bus, rec.run_id, lambda e: e.type is EventType.LOG, "waiting")
    await control.signal(rec.run_id, "cancel")
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_CANCELLED
    assert (await control.get(rec.run_id)).status is RunStatus.CANCELLED
