"""What a workflow function and an activity receive: the `Run` and `TaskContext` protocols.

The engine (`tidings.services.worker`) implements them; a workflow sees nothing else of it.
Everything a shipped workflow needs of its process is here: the run's identity (`info`), the
model (`model`), other runs (`runs`). A `getattr` on a handle means this protocol lacks something.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from tidings.events import EventType

__all__ = ["Run", "RunInfo", "RunView", "Runs", "Signal", "TaskContext", "TaskSpec"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Who a run (or a task of it) is: stable across re-executions except `attempt` and `try_`.

    `attempt` counts executions of the run (a new one after a worker was lost or handed the run
    back); `try_` counts a task's tries within one attempt (0 for the run itself)."""

    run_id: str
    workflow: str
    version: str
    attempt: int
    try_: int = 0
    task_id: str = ""
    task: str = ""


class RunView(Protocol):
    """What `Runs` tells of a run (the fields of `GET /api/runs/{id}`)."""

    @property
    def run_id(self) -> str: ...
    @property
    def workflow(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def progress(self) -> float: ...
    @property
    def message(self) -> str: ...
    @property
    def created_at(self) -> str: ...
    @property
    def result(self) -> Any: ...
    @property
    def error(self) -> str: ...


class Runs(Protocol):
    """Other runs, through the same code path as the HTTP API (same validation, same events)."""

    async def start(self, workflow: str, input: dict[str, Any] | None) -> RunView: ...

    async def get(self, run_id: str) -> RunView: ...

    async def signal(self, run_id: str, name: str, payload: dict[str, Any] | None = None) -> Any:
        """Send stop | pause | resume | cancel | message (or a workflow's own signal)."""
        ...

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> tuple[Sequence[RunView], str | None]:
        """Newest first; returns (page, cursor of the next page)."""
        ...


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

    @property
    def info(self) -> RunInfo:
        """The run and this task: ids, workflow, version, attempt and try."""
        ...

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
    def info(self) -> RunInfo:
        """The run's id, workflow, version and attempt."""
        ...

    @property
    def runs(self) -> Runs:
        """Other runs: start, list, inspect and signal them (what chat's tools use)."""
        ...

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
