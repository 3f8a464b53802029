"""Small workflows for the engine's tests; workers import this module when
TIDINGS_TEST_WORKFLOWS=tests.workflows_for_tests is set."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pydantic import BaseModel

from tidings.events import EventType
from tidings.sdk import Run, TaskContext, activity, workflow

WORKER = f"pid:{os.getpid()}"


class StepsInput(BaseModel):
    n: int = 3
    sleep_s: float = 0.0
    fail_at: int | None = None


async def _one_step(i: int, sleep_s: float, fail_at: int | None) -> dict[str, Any]:
    await asyncio.sleep(sleep_s)
    if fail_at is not None and i == fail_at:
        raise RuntimeError(f"step {i} broke")
    return {"i": i, "pid": os.getpid()}


@workflow("t_steps", Input=StepsInput)
async def t_steps(run: Run, input: StepsInput) -> list[Any]:
    out = []
    for i in range(input.n):
        out.append(await run.step("s", _one_step, i, input.sleep_s, input.fail_at))
        await run.progress(100 * (i + 1) / input.n, f"step {i} done")
    return out


class FanInput(BaseModel):
    n: int = 4
    sleep_s: float = 0.2
    flaky: bool = False
    broken: bool = False  # every try fails
    stagger: bool = False  # task i sleeps (i + 1) * sleep_s, so they finish one by one
    progress: tuple[float, float] | None = None


@activity("t_work")
async def t_work(
    ctx: TaskContext, i: int, sleep_s: float, flaky: bool, broken: bool = False
) -> dict[str, Any]:
    await ctx.progress(0.5, f"half of {i}")
    await asyncio.sleep(sleep_s)
    if broken or (flaky and ctx.info.try_ == 0):
        raise RuntimeError(f"{'broken' if broken else 'flaky'} {i}")
    return {"i": i, "pid": os.getpid()}


@workflow("t_fan", Input=FanInput)
async def t_fan(run: Run, input: FanInput) -> list[Any]:
    tasks = [
        run.task(
            "t_work",
            i,
            input.sleep_s * (i + 1 if input.stagger else 1),
            input.flaky,
            input.broken,
            name=f"w{i}",
        )
        for i in range(input.n)
    ]
    return await run.parallel(tasks, progress=input.progress)


class LoopInput(BaseModel):
    tick_s: float = 0.05


@workflow("t_loop", Input=LoopInput)
async def t_loop(run: Run, input: LoopInput) -> dict[str, Any]:
    n = 0
    while not run.stop_requested:
        n += 1
        await run.emit(EventType.ITERATION_STARTED, f"iteration {n}")
        await run.sleep(input.tick_s)
        await run.checkpoint()
        await run.save_state(iterations=n)
        await run.emit(EventType.ITERATION_COMPLETED, f"iteration {n}")
    return {"iterations": n}


class ChatInput(BaseModel):
    pass


async def _echo(text: str) -> str:
    return text.upper()


@workflow("t_chat", Input=ChatInput)
async def t_chat(run: Run, input: ChatInput) -> list[str]:
    replies = []
    while (msg := await run.next_message()) is not None:
        replies.append(await run.step("reply", _echo, str(msg.payload.get("text", ""))))
        await run.save_state(replies=replies)
    return replies


class LLMInput(BaseModel):
    prompt: str = "Tell me about durable workflows and streaming"


@workflow("t_llm", Input=LLMInput)
async def t_llm(run: Run, input: LLMInput) -> str:
    parts = [d async for d in run.stream_llm(input.prompt, task="answer", max_tokens=60)]
    return "".join(parts)


class BurstInput(BaseModel):
    n: int = 1000


@workflow("t_burst", Input=BurstInput)
async def t_burst(run: Run, input: BurstInput) -> int:
    for i in range(input.n):
        await run.emit(EventType.LOG, "tick", data={"i": i})
    return input.n


class CountedInput(BaseModel):
    log: str  # a file: every execution of a step or model call appends one line to it
    n: int = 6
    sleep_s: float = 0.2
    fan: int = 2
    max_tokens: int = 30


def _record(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:  # one small O_APPEND write: never interleaved
        f.write(line + "\n")


async def _counted_step(log: str, i: int, sleep_s: float) -> dict[str, Any]:
    _record(log, f"step {i}")
    await asyncio.sleep(sleep_s)
    return {"i": i, "pid": os.getpid()}


@activity("t_counted_model")
async def t_counted_model(ctx: TaskContext, log: str, i: int, max_tokens: int) -> str:
    _record(log, f"model {i}")
    return await ctx.complete(f"Say something about durable step {i}", max_tokens=max_tokens)


@workflow("t_counted", Input=CountedInput)
async def t_counted(run: Run, input: CountedInput) -> dict[str, Any]:
    """Steps, then model calls fanned out, each leaving a line in `log` every time it executes."""
    steps = []
    for i in range(input.n):
        steps.append(await run.step("s", _counted_step, input.log, i, input.sleep_s))
        await run.progress(80 * (i + 1) / input.n, f"step {i} done")
    answers = await run.parallel(
        [
            run.task("t_counted_model", input.log, i, input.max_tokens, name=f"m{i}", retries=0)
            for i in range(input.fan)
        ]
    )
    return {"steps": steps, "answers": len(answers)}
