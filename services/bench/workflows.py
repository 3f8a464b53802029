"""Workflows that exist only for `tidings bench`; a benchmark's worker imports this module through
`TIDINGS_TEST_WORKFLOWS=tidings.services.bench.workflows`, and the bench process imports it so that
`Control.start` knows them. Nothing here is shipped to users' catalogs.

`bench_emit` publishes `n` events through the engine's ordinary path, `run.emit`, in a loop that
does nothing else, so its rate is the most one worker's engine can publish for a single run. The
events look like ordinary progress reports (a message, a task name, a small data dict); none
carries a progress value, so the lifecycle channel only hears about the start and the end.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from tidings.events import EventType
from tidings.sdk import Run, workflow

__all__ = ["EMIT", "EmitInput", "bench_emit"]

EMIT = "bench_emit"


class EmitInput(BaseModel):
    n: int = Field(10_000, ge=1, le=10_000_000)


@workflow(EMIT, Input=EmitInput, description="Benchmark only: emit n events as fast as possible.")
async def bench_emit(run: Run, input: EmitInput) -> dict[str, Any]:
    t0 = time.perf_counter()
    for i in range(input.n):
        await run.emit(EventType.TASK_PROGRESS, f"step {i}", task="bench", data={"i": i})
    # Time spent handing events to the engine; the terminal event waits for the rest to land.
    return {"n": input.n, "loop_s": time.perf_counter() - t0}
