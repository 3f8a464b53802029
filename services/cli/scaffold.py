"""`tidings new NAME`: write `NAME.py`, a workflow module that runs as it is.

The module defines a workflow named NAME with an input model, one checkpointed step and a fan-out
of an activity, so every part of the SDK an author starts with is there to edit. An existing file
is never overwritten; NAME must be a Python identifier, not a keyword (it names the module too).
"""

from __future__ import annotations

import keyword
from pathlib import Path

from .errors import EXIT_USAGE, CliError

__all__ = ["render", "write_workflow"]

_TEMPLATE = '''"""The {name} workflow.

Serve it with `tidings worker --workflows {name}` (from this directory), then start a run:
`tidings run {name} --input '{{"subject": "tides"}}' --follow`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from tidings import Run, TaskContext, activity, workflow


class {model}(BaseModel):
    subject: str = Field(min_length=1, max_length=200, description="what to write about")
    points: int = Field(3, ge=1, le=10, description="how many points to make")


async def outline(subject: str, points: int) -> list[str]:
    return [f"point {{n}} about {{subject}}" for n in range(1, points + 1)]


@activity("{name}.write")
async def write(ctx: TaskContext, point: str) -> str:
    return await ctx.complete(f"Write one sentence: {{point}}")  # tokens stream as events


@workflow("{name}", Input={model}, description="Outline a subject, then write each point.")
async def {name}(run: Run, input: {model}) -> dict[str, object]:
    points = await run.step("outline", outline, input.subject, input.points)  # checkpointed
    sentences = await run.parallel([run.task("{name}.write", p) for p in points], progress=(10, 95))
    return {{"subject": input.subject, "sentences": sentences}}
'''


# Names the template defines or imports: a workflow of that name would shadow them.
_TAKEN = frozenset(
    {"annotations", "BaseModel", "Field", "Run", "TaskContext", "activity", "workflow"}
    | {"outline", "write", "tidings", "pydantic"}
)


def render(name: str) -> str:
    model = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) + "Input"
    return _TEMPLATE.format(name=name, model=model)


def write_workflow(name: str, directory: Path | None = None) -> Path:
    """Write `<directory>/<name>.py` (default: the current directory); CliError if it exists."""
    if not name.isidentifier() or keyword.iskeyword(name) or len(name) > 64:
        raise CliError(
            f"{name!r} cannot name a module: use letters, digits and _ (not starting with a "
            "digit, at most 64 characters, not a Python keyword)",
            EXIT_USAGE,
        )
    if name in _TAKEN:
        raise CliError(f"{name!r} is a name the module itself uses; choose another", EXIT_USAGE)
    path = (directory or Path.cwd()) / f"{name}.py"
    try:
        with path.open("x", encoding="utf-8") as out:
            out.write(render(name))
    except FileExistsError:
        raise CliError(f"{path} exists; not overwriting it", EXIT_USAGE) from None
    return path
