"""What a workflow author sees: the registry decorators and the `Run` protocol.

Workflows are plain async functions registered by name with a pydantic input model; the gateway
imports the registry for its catalog and input validation, the worker to execute. Activities are
the functions a run fans out with `run.task(...)`: each becomes its own arq job, so any worker in
the pool may execute it.

    @workflow("research", Input=ResearchInput, description="…")
    async def research(run: Run, input: ResearchInput) -> dict[str, Any]:
        plan = await run.step("plan", make_plan, input.topic)
        found = await run.parallel(
            [run.task("research_question", q) for q in plan["questions"]], progress=(20, 90)
        )
        return await run.step("synthesize", synthesize, found)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from .errors import NotFound
from .events import EventType

__all__ = [
    "ACTIVITIES",
    "WORKFLOWS",
    "ActivityDef",
    "Run",
    "Signal",
    "TaskContext",
    "TaskSpec",
    "WorkflowDef",
    "activity",
    "get_activity",
    "get_workflow",
    "workflow",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True, slots=True)
class Signal:
    """A control or message request delivered to a run, in arrival order."""

    name: str  # stop | pause | resume | cancel | message | any workflow-specific name
    payload: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    ts: str = ""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A fanned-out unit of work, made by `run.task`, executed by `run.parallel`."""

    activity: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # display name in events; defaults to the activity name
    retries: int = 2


class TaskContext(Protocol):
    """What an activity receives: enough to report progress and stream tokens, nothing more."""

    run_id: str
    task_id: str
    name: str

    async def progress(self, fraction: float, message: str = "", **data: Any) -> None:
        """Progress of this task, 0..1, as a `task_progress` event (data `fraction`); inside a
        `run.parallel(..., progress=span)` it may also advance the run's overall progress within
        this task's share of the span (see `Run.parallel`)."""

    async def emit(self, type: EventType, message: str = "", **data: Any) -> None: ...

    def stream_llm(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 400
    ) -> AsyncIterator[str]:
        """Stream a completion, publishing coalesced `token` events; yields the text deltas."""
        ...

    async def complete(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 400
    ) -> str:
        """`stream_llm` joined: the whole completion, tokens still published as they come."""
        ...


class Run(Protocol):
    """The handle a workflow function receives. Every method is safe to call after a crash and
    re-execution: checkpointed steps return their stored result instead of running again."""

    run_id: str
    workflow: str
    attempt: int

    @property
    def stop_requested(self) -> bool:
        """A `stop` signal arrived: finish the current iteration, then return normally."""
        ...

    @property
    def state(self) -> dict[str, Any]:
        """The queryable state (GET /api/runs/{id}/state). Mutate, then `await save_state()`."""
        ...

    async def save_state(self, **updates: Any) -> None:
        """Apply `updates` to `state` and persist it; restored on re-execution."""

    async def step(
        self, name: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        """Run `fn` once and checkpoint its JSON result under `name` (repeated names in a loop
        get `name#2`, `name#3`…). Emits task_started / task_completed (or task_failed).
        Returns the result as JSON values (a model comes back as a dict), the first time and on
        replay alike."""
        ...

    def task(
        self, activity: str, *args: Any, name: str = "", retries: int = 2, **kwargs: Any
    ) -> TaskSpec:
        """Describe a call of a registered activity, to pass to `parallel`."""
        ...

    async def parallel(
        self, tasks: Sequence[TaskSpec], *, progress: tuple[float, float] | None = None
    ) -> list[Any]:
        """Enqueue each task as its own job across the worker pool; results in order. Each task is
        checkpointed; retries (task_retrying) up to `retries`; raises if one finally fails.

        With `progress=(start, end)` the run's overall progress moves from `start` to `end` as the
        tasks complete, each adding `(end - start) / len(tasks)` (a `task_progress` event with
        data `done`, `total`). A task's own `ctx.progress(fraction)` also asks for
        `start + share * fraction`, a lower bound that never overshoots: it moves the bar before
        the first task completes and within a single-task fan-out, at no extra cost."""
        ...

    async def progress(self, percent: float, message: str = "", **data: Any) -> None:
        """Overall progress 0..100 (never decreases; lower values are ignored)."""

    async def emit(
        self,
        type: EventType,
        message: str = "",
        *,
        task: str | None = None,
        task_id: str | None = None,
        progress: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> None: ...

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once for stop (returns early) and cancel (raises)."""

    async def checkpoint(self) -> None:
        """Honour control signals here: block while paused (emitting paused/resumed), raise on
        cancel. `step`, `parallel` and `sleep` call it; long loops should too."""

    async def next_message(self, timeout: float | None = None) -> Signal | None:
        """The next `message` signal (chat), or None on timeout or when stop is requested."""
        ...

    def stream_llm(
        self, prompt: str, *, task: str = "llm", system: str | None = None, max_tokens: int = 400
    ) -> AsyncIterator[str]:
        """Stream a completion from the configured model, publishing coalesced `token` events
        (about every 50 ms). Cancel aborts the in-flight call."""
        ...


@dataclass(frozen=True, slots=True)
class WorkflowDef:
    name: str
    fn: Callable[[Any, Any], Awaitable[Any]]
    Input: type[BaseModel]
    description: str = ""

    def schema(self) -> dict[str, Any]:
        return self.Input.model_json_schema()


@dataclass(frozen=True, slots=True)
class ActivityDef:
    name: str
    fn: Callable[..., Awaitable[Any]]


WORKFLOWS: dict[str, WorkflowDef] = {}
ACTIVITIES: dict[str, ActivityDef] = {}


def workflow(name: str, *, Input: type[BaseModel], description: str = "") -> Callable[[F], F]:
    def register(fn: F) -> F:
        if name in WORKFLOWS and WORKFLOWS[name].fn is not fn:
            raise ValueError(f"workflow {name!r} registered twice")
        WORKFLOWS[name] = WorkflowDef(name, fn, Input, description or (fn.__doc__ or "").strip())
        return fn

    return register


def activity(name: str) -> Callable[[F], F]:
    """Register `async def fn(ctx: TaskContext, *args, **kwargs)` as a fan-out-able task."""

    def register(fn: F) -> F:
        if name in ACTIVITIES and ACTIVITIES[name].fn is not fn:
            raise ValueError(f"activity {name!r} registered twice")
        ACTIVITIES[name] = ActivityDef(name, fn)
        return fn

    return register


def get_workflow(name: str) -> WorkflowDef:
    _load_builtin()
    try:
        return WORKFLOWS[name]
    except KeyError:
        raise NotFound(f"no workflow {name!r}; known: {', '.join(sorted(WORKFLOWS))}") from None


def get_activity(name: str) -> ActivityDef:
    _load_builtin()
    try:
        return ACTIVITIES[name]
    except KeyError:
        raise NotFound(f"no activity {name!r}") from None


def _load_builtin() -> None:
    """The shipped workflows register themselves on import."""
    import tidings.services.workflows  # noqa: F401
