"""`prompt_chain`: user-defined prompts run as a DAG, later prompts fed by earlier results.

Each task is `{name, prompt, depends_on}`. A `{name}` placeholder in a prompt is replaced by the
output of the task with that name, and counts as a dependency even when `depends_on` omits it
(a placeholder that names no task is left as written, so prompts may contain other braces).
The input model rejects duplicate names, unknown dependencies and cycles, so a bad chain is a
422 at submission and never a half-run workflow.

Tasks run layer by layer: every task whose dependencies are all done goes into one
`run.parallel`, so independent prompts run side by side on the worker pool. The layers share the
progress bar (0-100 %) in proportion to their task counts, so every prompt is worth the same and
the bar moves as each one completes.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, model_validator

from tidings.events import EventType
from tidings.sdk import Run, TaskContext, activity, workflow

from ._runtime import model_info

__all__ = ["ChainInput", "ChainTask", "chain_prompt", "layers", "prompt_chain", "render"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_-]{0,63})\}")


class ChainTask(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$", description="Unique task name.")
    prompt: str = Field(min_length=1, max_length=8_000, description="May use {name} placeholders.")
    depends_on: list[str] = Field(default_factory=list, max_length=50)


class ChainInput(BaseModel):
    tasks: list[ChainTask] = Field(min_length=1, max_length=50)
    system: str | None = Field(None, max_length=4_000, description="System prompt for every task.")

    @model_validator(mode="after")
    def _is_a_dag(self) -> ChainInput:
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {', '.join(duplicates)}")
        known = set(names)
        for task in self.tasks:
            unknown = sorted(set(task.depends_on) - known)
            if unknown:
                raise ValueError(f"task {task.name!r} depends on unknown {', '.join(unknown)}")
            if task.name in task.depends_on or task.name in _references(task.prompt, known):
                raise ValueError(f"task {task.name!r} depends on itself")
        layers(self.tasks)  # raises on a cycle
        return self

    def dependencies(self) -> dict[str, set[str]]:
        return _dependencies(self.tasks)


def _references(prompt: str, known: set[str]) -> set[str]:
    return {m.group(1) for m in _PLACEHOLDER.finditer(prompt) if m.group(1) in known}


def _dependencies(tasks: list[ChainTask]) -> dict[str, set[str]]:
    known = {t.name for t in tasks}
    return {t.name: set(t.depends_on) | _references(t.prompt, known) for t in tasks}


def layers(tasks: list[ChainTask]) -> list[list[str]]:
    """Kahn's algorithm, by layer, in input order within a layer. ValueError on a cycle."""
    deps = _dependencies(tasks)
    order = [t.name for t in tasks]
    done: set[str] = set()
    result: list[list[str]] = []
    while len(done) < len(order):
        ready = [n for n in order if n not in done and deps[n] <= done]
        if not ready:
            stuck = sorted(n for n in order if n not in done)
            raise ValueError(f"the tasks form a cycle: {', '.join(stuck)}")
        result.append(ready)
        done.update(ready)
    return result


def render(prompt: str, outputs: dict[str, str]) -> str:
    """Replace `{name}` with the output of task `name`; other braces are left alone."""
    return _PLACEHOLDER.sub(lambda m: outputs.get(m.group(1), m.group(0)), prompt)


@activity
async def chain_prompt(ctx: TaskContext, prompt: str, system: str | None = None) -> str:
    """Complete one prompt of a chain, streaming its tokens."""
    text = await ctx.complete(prompt, system=system, max_tokens=400)
    return text.strip()


@workflow(
    "prompt_chain",
    Input=ChainInput,
    description="Run prompts as a dependency graph; {name} inserts an earlier task's output.",
)
async def prompt_chain(run: Run, input: ChainInput) -> dict[str, str]:
    info = model_info(run)
    by_name = {t.name: t for t in input.tasks}
    plan = layers(input.tasks)
    outputs: dict[str, str] = {}
    total = len(input.tasks)
    await run.progress(0, f"{total} tasks in {len(plan)} layers")
    for n, layer in enumerate(plan, start=1):
        span = (100 * len(outputs) / total, 100 * (len(outputs) + len(layer)) / total)
        await run.emit(
            EventType.ITERATION_STARTED,
            f"Layer {n}/{len(plan)}: {', '.join(layer)}",
            data={"iteration": n, "tasks": layer, **info},
        )
        specs = [
            run.task(chain_prompt, render(by_name[name].prompt, outputs), input.system).options(
                name=name
            )
            for name in layer
        ]
        results = await run.parallel(specs, progress=span)
        outputs.update(dict(zip(layer, results, strict=True)))
        await run.emit(
            EventType.ITERATION_COMPLETED,
            f"Layer {n}/{len(plan)} done",
            progress=span[1],
            data={"iteration": n, "outputs": {k: outputs[k] for k in layer}, **info},
        )
    return {t.name: outputs[t.name] for t in input.tasks}
