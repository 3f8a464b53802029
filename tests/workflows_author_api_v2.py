"""`t_version` at version "2", for the version tests: a worker loads this module instead of
`tests.workflows_author_api` to serve the new version only."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tidings.sdk import Run, TaskContext, activity, workflow


class VersionInput(BaseModel):
    pass


@activity("a_info")
async def a_info(ctx: TaskContext) -> dict[str, Any]:
    return {"workflow": ctx.info.workflow, "version": ctx.info.version, "task": ctx.info.task}


@workflow("t_version", Input=VersionInput, version="2")
async def t_version(run: Run, input: VersionInput) -> dict[str, Any]:
    [task] = await run.parallel([run.task(a_info)])
    return {"run": run.info.version, "task": task, "code": "2"}
