"""Workflows for the author-API tests (tests/test_author_api.py): typed results, checkpoint keys
under conditional steps, step and task timeouts and retries, activities by function, versions.

Workers load it with TIDINGS_TEST_WORKFLOWS=tests.workflows_author_api; it brings the engine
tests' workflows along. `t_version` is version "1" here and "2" in `workflows_author_api_v2`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal

from pydantic import BaseModel

import tests.workflows_for_tests  # noqa: F401  (the engine tests' workflows, same workers)
from tidings.events import EventType
from tidings.sdk import ReplayMismatch, Run, TaskContext, activity, workflow


class Point(BaseModel):
    x: int
    y: int


@activity
async def a_point(ctx: TaskContext, x: int, y: int) -> Point:
    return Point(x=x, y=y)


@activity("a_sleepy", retries=0)
async def a_sleepy(ctx: TaskContext, sleep_s: float, fast_from_try: int | None = None) -> str:
    """Sleeps `sleep_s`, unless this is try `fast_from_try` or later."""
    if fast_from_try is not None and ctx.info.try_ >= fast_from_try:
        return f"fast on try {ctx.info.try_}"
    await asyncio.sleep(sleep_s)
    return "slow"


@activity
async def a_info(ctx: TaskContext) -> dict[str, Any]:
    return {"workflow": ctx.info.workflow, "version": ctx.info.version, "task": ctx.info.task}


async def _point(x: int, y: int) -> Point:
    return Point(x=x, y=y)


async def _pair() -> tuple[int, str]:
    return (1, "one")


async def _raw():  # type: ignore[no-untyped-def]  # no annotation: JSON values
    return {"x": 7, "y": 8}


def _kinds(values: dict[str, Any]) -> dict[str, str]:
    return {k: type(v).__name__ for k, v in values.items()}


class TypedInput(BaseModel):
    hold: bool = False  # attempt 1 waits after its steps (the test kills its worker)


@workflow("t_typed", Input=TypedInput)
async def t_typed(run: Run, input: TypedInput) -> dict[str, Any]:
    point = await run.step("point", _point, 1, 2)
    pair = await run.step("pair", _pair)
    raw = await run.step("raw", _raw)
    points = await run.parallel([run.task(a_point, 3, 4), run.task(a_point, x=5, y=6)])
    seen = {
        "point": point,
        "pair": pair,
        "raw": raw,
        "task0": points[0],
        "task1": points[1],
    }
    kinds = _kinds(seen)
    await run.save_state(**{f"attempt{run.info.attempt}": kinds})
    if input.hold and run.info.attempt == 1:
        await run.sleep(3600)
    return {"kinds": kinds, "sum": point.x + point.y + sum(p.x + p.y for p in points)}


async def _first() -> dict[str, str]:
    return {"step": "first"}


async def _second() -> dict[str, str]:
    return {"step": "second"}


async def _square(i: int) -> int:
    return i * i


class CondInput(BaseModel):
    # fn: a step taken on attempt 1 only shifts the next one of the same name onto it;
    # args: the same function over another list; keyed: as fn, with keys of their own;
    # swallow: as fn, the workflow catches the ReplayMismatch.
    mode: Literal["fn", "args", "keyed", "swallow"] = "fn"


@workflow("t_cond", Input=CondInput)
async def t_cond(run: Run, input: CondInput) -> dict[str, Any]:
    """Steps whose path depends on the attempt: what a non-deterministic condition does."""
    first_attempt = run.info.attempt == 1
    out: dict[str, Any] = {}
    if input.mode == "args":
        items = [1, 2, 3] if first_attempt else [2, 3]
        out["squares"] = [await run.step("sq", _square, i) for i in items]
    else:
        keyed = input.mode == "keyed"
        if first_attempt:
            out["first"] = await run.step("s", _first, key="first" if keyed else None)
        try:
            out["second"] = await run.step("s", _second, key="second" if keyed else None)
        except ReplayMismatch:
            if input.mode != "swallow":
                raise
            out["second"] = "swallowed"
    if first_attempt:
        await run.emit(EventType.LOG, "holding")
        await run.sleep(3600)
    return out


_calls: dict[str, int] = {}


async def _flaky(run_id: str, failures: int) -> str:
    _calls[run_id] = _calls.get(run_id, 0) + 1
    if _calls[run_id] <= failures:
        raise RuntimeError(f"flaky call {_calls[run_id]}")
    return f"ok after {_calls[run_id]} calls"


async def _slow(sleep_s: float) -> str:
    await asyncio.sleep(sleep_s)
    return "slow"


async def _kw(a: int, *, b: int, name: str) -> dict[str, Any]:
    return {"a": a, "b": b, "name": name}


async def _deliberate() -> None:
    from tidings.sdk import WorkflowError

    raise WorkflowError("no retry for this")


class TriesInput(BaseModel):
    case: Literal["step_timeout", "step_retry", "step_kwargs", "step_deliberate"]


@workflow("t_tries", Input=TriesInput)
async def t_tries(run: Run, input: TriesInput) -> Any:
    if input.case == "step_timeout":
        return await run.step("slow", _slow, 30, timeout=0.2, retries=2, backoff=0.01)
    if input.case == "step_retry":
        return await run.step("flaky", _flaky, run.run_id, 2, retries=3, backoff=0.01)
    if input.case == "step_deliberate":
        return await run.step("deliberate", _deliberate, retries=3, backoff=0.01)
    return await run.step("kw", _kw, 1, b=2, name="passed to fn")


class TaskTriesInput(BaseModel):
    fast_from_try: int | None = None


@workflow("t_task_tries", Input=TaskTriesInput)
async def t_task_tries(run: Run, input: TaskTriesInput) -> list[str]:
    spec = run.task(a_sleepy, 30, input.fast_from_try).options(timeout=0.3, retries=1)
    return await run.parallel([spec])


class RefInput(BaseModel):
    ref: Literal["function", "unknown_name", "not_an_activity", "by_name"]


async def _not_an_activity(ctx: TaskContext) -> str:
    return "never"


@workflow("t_refs", Input=RefInput)
async def t_refs(run: Run, input: RefInput) -> Any:
    if input.ref == "unknown_name":
        run.task("no_such_activity")
        await run.emit(EventType.LOG, "after run.task")
    if input.ref == "not_an_activity":
        run.task(_not_an_activity)
        await run.emit(EventType.LOG, "after run.task")
    if input.ref == "by_name":
        return await run.parallel([run.task("a_point", 1, 1, name="by name")])
    return await run.parallel([run.task(a_point, 2, 2).options(name="by function")])


class CancelInput(BaseModel):
    pass


@workflow("t_swallow_cancel", Input=CancelInput)
async def t_swallow_cancel(run: Run, input: CancelInput) -> str:
    """Swallows its cancellation (what a workflow must not do): the run still ends cancelled."""
    with contextlib.suppress(asyncio.CancelledError):
        await run.emit(EventType.LOG, "waiting")
        await run.sleep(3600)
    return "completed anyway"


class VersionInput(BaseModel):
    pass


@workflow("t_version", Input=VersionInput, version="1")
async def t_version(run: Run, input: VersionInput) -> dict[str, Any]:
    [task] = await run.parallel([run.task(a_info)])
    return {"run": run.info.version, "task": task, "code": "1"}
