"""`t_rolling` at a version of the importer's choosing, for the mixed-pool and rolling-deploy
tests (tests/test_mixed_pool.py): `tests.workflows_rolling_v1` and `_v2` each define one version,
and a worker loads one of them alone (`TIDINGS_WORKFLOWS=tests.workflows_rolling_v2`), as two
releases of one module would."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tidings import Run, TaskContext, activity, workflow


class RollingInput(BaseModel):
    wait: bool = False  # wait for one `message` signal before fanning out


def define(version: str) -> None:
    """Register `t_rolling` and its activity as the code of `version`."""

    @activity("rolling_info")
    async def rolling_info(ctx: TaskContext) -> dict[str, Any]:
        return {"version": ctx.info.version, "code": version}

    @workflow("t_rolling", Input=RollingInput, version=version)
    async def t_rolling(run: Run, input: RollingInput) -> dict[str, Any]:
        if input.wait:
            await run.next_message()
        [task] = await run.parallel([run.task(rolling_info)])
        return {"run": run.info.version, "code": version, "task": task}
