"""What a workflow function and an activity receive: the `Run` and `TaskContext` protocols.

The engine (`tidings.services.worker`) implements them; a workflow sees nothing else of it.
Everything a shipped workflow needs of its process is here: the run's identity (`info`), the
model (`model`), other runs (`runs`). A `getattr` on a handle means this protocol lacks something.

Typing. `run.task(activity_fn, *args, **kwargs)` is checked against the activity's parameters
after its `ctx` (a `ParamSpec`), and returns a `TaskSpec[R]` with `R` the activity's return type,
which `run.parallel` hands back as `list[R]`. The task's own options (`name`, `retries`,
`timeout`) are reserved keywords of `run.task` (no activity may take a parameter of those names:
`@activity` refuses it), but Python's typing cannot add keywords next to a `ParamSpec`, so a typed
call sets them with `.options(...)`: `run.task(fetch, url).options(retries=5, timeout=30)`. By
name (`run.task("fetch", url, retries=5)`) the arguments are not type-checked.

Cancellation. A `cancel` signal cancels the workflow's task wherever it awaits: the author sees
`asyncio.CancelledError` (a model call, a sleep, a step, `parallel`…). Clean up in `finally` and
let it propagate; a workflow that swallows it still ends `cancelled`, never `completed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from tidings.events import EventType

from .model import Message, Model, Tool, ToolResult

__all__ = ["Run", "RunInfo", "RunView", "Runs", "Signal", "TaskContext", "TaskSpec"]

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
P = ParamSpec("P")


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
class TaskSpec(Generic[R_co]):
    """A fanned-out unit of work, made by `run.task`, executed by `run.parallel`; `R_co` is what
    the activity returns (its return annotation, validated on the way back)."""

    activity: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # display name in events; defaults to the activity name
    retries: int = 2  # failed tries retried (a lost worker is retried on top of these)
    timeout: float | None = None  # seconds per try, on the worker executing it

    def options(
        self, *, name: str | None = None, retries: int | None = None, timeout: float | None = None
    ) -> TaskSpec[R_co]:
        """This task with other options (what keeps `run.task(fn, …)` type-checked)."""
        return replace(
            self,
            name=self.name if name is None else name,
            retries=self.retries if retries is None else check_retries(retries),
            timeout=self.timeout if timeout is None else check_timeout(timeout),
        )


def check_retries(retries: int) -> int:
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
        raise ValueError(f"retries must be an integer from 0 to 100, not {retries!r}")
    return retries


def check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


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

    @property
    def model(self) -> Model:
        """The configured model (`name`, `simulated`): what `stream_llm` and `converse` use."""
        ...

    def converse(
        self,
        messages: Sequence[Message],
        tools: Sequence[Tool] = (),
        *,
        max_rounds: int = 4,
        max_tokens: int = 400,
        data: dict[str, Any] | None = None,
    ) -> AsyncIterator[str | ToolResult]:
        """`Run.converse`, its tokens published as this task's."""
        ...

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
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        key: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        **kwargs: Any,
    ) -> T:
        """Run `fn(*args, **kwargs)` once and checkpoint its result; on re-execution return the
        checkpoint instead of running it again. Emits task_started, task_retrying, then
        task_completed or task_failed.

        The checkpoint's key is `name` (the n-th step of the same name in one execution gets
        `name#n`), or `key` when given: a key independent of the order of calls, for steps in
        conditionals or loops. A checkpoint recorded by another function (or, without `key`,
        with other arguments) raises `ReplayMismatch` instead of returning its result.

        `timeout` bounds each try (seconds); `retries` re-runs a failed or timed-out try after
        `backoff` seconds, doubled each retry (capped at a minute). A step that timed out on its
        last try raises `StepTimeout`; another error is raised as it is. A `WorkflowError` is
        never retried. `key`, `timeout`, `retries` and `backoff` are the step's own, keyword-only
        and reserved: they never reach `fn` (bind such arguments with a closure or a partial);
        `name` and `fn` are positional-only, so `fn` may take a keyword `name`.

        Returns `fn`'s result as its return annotation says (a pydantic model comes back as that
        model, validated from the stored JSON), the first time and on replay alike; without an
        annotation (or `Any`), the JSON values."""
        ...

    @overload
    def task(
        self,
        activity: Callable[Concatenate[TaskContext, P], Awaitable[R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskSpec[R]: ...

    @overload
    def task(
        self,
        activity: str,
        /,
        *args: Any,
        name: str = "",
        retries: int | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> TaskSpec[Any]: ...

    def task(self, activity: Any, /, *args: Any, **kwargs: Any) -> TaskSpec[Any]:
        """Describe a call of a registered activity, to pass to `parallel`: by its function
        (arguments type-checked; set options with `.options(...)`) or by its name. Raises at once
        for a function that is not a registered activity (TypeError) or an unknown name.

        Options: `name` (shown in events), `retries` (failed tries retried; the activity's
        default, 2 unless `@activity` says otherwise), `timeout` (seconds per try, on the worker
        executing it: a try that runs out counts as a failed try). Reserved keywords."""
        ...

    async def parallel(
        self,
        tasks: Sequence[TaskSpec[R]],
        *,
        progress: tuple[float, float] | None = None,
        key: str | None = None,
    ) -> list[R]:
        """Enqueue each task as its own job across the worker pool; results in order, each as its
        activity's return annotation says. Each task is checkpointed; retries (task_retrying) up
        to `retries`; raises `TaskFailed` if one finally fails.

        Task ids are `p<n>.<i>` (the n-th `parallel` call of this execution), or `<key>.<i>` with
        `key` (letters, digits, `_`, `-`): stable whatever other fan-outs ran before. A stored
        result of another activity (or, without `key`, other arguments) raises `ReplayMismatch`.

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

    @property
    def model(self) -> Model:
        """The configured model (`name`, `simulated`): what `stream_llm` and `converse` use."""
        ...

    def converse(
        self,
        messages: Sequence[Message],
        tools: Sequence[Tool] = (),
        *,
        task: str = "llm",
        max_rounds: int = 4,
        max_tokens: int = 400,
        data: dict[str, Any] | None = None,
    ) -> AsyncIterator[str | ToolResult]:
        """Ask the model with `tools` it may call (`tidings.sdk.model.converse`): the tools it
        chooses run, their results go back to it, until it answers in text (at most
        `max_rounds` model calls). Yields text deltas, published as coalesced `token` events of
        `task` (with `data` added), and each `ToolResult`. Raises `ModelError`."""
        ...

    def stream_llm(
        self, prompt: str, *, task: str = "llm", system: str | None = None, max_tokens: int = 400
    ) -> AsyncIterator[str]:
        """Stream a completion from the configured model, publishing coalesced `token` events
        (about every 50 ms). Cancel aborts the in-flight call."""
        ...
