"""`RunHandle`: the concrete `tidings.sdk.Run` a workflow function receives.

Decisions:
- A step's result is stored as JSON, and what `step` returns is that JSON read back and validated
  into the function's return annotation (a pydantic model comes back as the model; without an
  annotation, dicts, lists, numbers, strings), both the first time and on replay, so a workflow
  behaves the same either way. Task results from `parallel` likewise, by the activity's
  annotation (`replay`).
- Checkpoint keys (`steps`): the n-th step of a name in one execution is `name` / `name#n`, as
  checkpoints have always been keyed, so a workflow whose steps run in a fixed order needs
  nothing more. A step in a conditional or a loop whose path may differ between attempts gets a
  `key=` of its own (`key:<key>`, independent of order). Whatever the key, each checkpoint
  records the call that wrote it (function qualname, ordinal, and for order-keyed steps a digest
  of the arguments); a replay that meets a checkpoint of another call raises `ReplayMismatch`,
  which fails the run (`workflow_failed`, even if the workflow catches it), instead of returning
  a result shifted from another step. Checkpoints written before identities were recorded (a bare
  JSON result) are accepted as they are. Fan-outs alike: task ids are `p<n>.<i>` or, with
  `parallel(..., key=)`, `<key>.<i>`, and a stored task result of another activity or other
  arguments is a `ReplayMismatch` (`fanout`).
- Steps take `timeout` (per try), `retries` and `backoff` (seconds, doubled each retry, capped);
  tasks `timeout` and `retries` (`TaskSpec`, enforced on the worker executing each try). These
  keywords are the engine's own, reserved and keyword-only: they never reach the step's function
  or the activity, and an activity cannot declare a parameter of those names (`@activity`).
- Activities are named by function (`run.task(fetch, url)`, type-checked against its
  parameters; a function that is not a registered activity is a TypeError at the call) or by
  name (an unknown name raises at the call too, not when `parallel` runs).
- Versions: `info.version` is the version on the run record, written when the run was created.
  The runner never executes a run whose version is not the one this worker registered for its
  workflow (`runner`).
- Checkpoints, the state snapshot and every event are fenced by the run's attempt; a step commits
  its checkpoint and its `task_completed` in one script (`Bus.publish_once`).
- Control signals: `checkpoint` (called by `step`, `parallel`, `sleep`, `next_message`) blocks
  while paused, between `workflow_paused` and `workflow_resumed`; `stop` releases a pause (the
  run is to finish, not to wait); `cancel` cancels the workflow's task wherever it awaits, the
  model call included, and the runner turns that into `workflow_cancelled`.
- `progress` and `emit` do not wait for Redis (see `Publisher`); lifecycle and commits do.
- A Redis outage is waited out, not failed (`outage.until_redis`): loading, publishing,
  committing, saving state and reading signals retry until Redis is back, then carry on as the
  same attempt, or stop if the fence says the run was taken over meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from tidings import codec
from tidings.errors import Fenced, RunFinished
from tidings.events import LIFECYCLE_STATUS, EventType
from tidings.sdk import ReplayMismatch, Run, RunInfo, Signal, TaskSpec, registry
from tidings.sdk.model import Message, Tool, ToolResult
from tidings.sdk.protocols import check_retries, check_timeout
from tidings.sdk.registry import ActivityDef

from .context import EngineViews
from .conversation import publish_conversation
from .fanout import run_parallel
from .outage import until_redis
from .publisher import Publisher
from .signals import SignalBox
from .steps import StepCalls, run_step
from .tokens import stream_tokens

if TYPE_CHECKING:
    from .context import Engine

__all__ = ["RunHandle"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_GROUP_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_AUTO_GROUP = re.compile(r"p[0-9]+")


class RunHandle(EngineViews):
    def __init__(self, engine: Engine, run_id: str, attempt: int) -> None:
        self.engine = engine
        self.run_id = run_id
        self.attempt = attempt
        self.workflow = ""  # set by `load`
        self.version = "1"  # set by `load`
        self.input: Any = None
        self.publisher = Publisher(engine.bus, run_id, attempt, on_error=self._publish_failed)
        self.signals = SignalBox(engine.redis, engine.keys, run_id)
        # Why the workflow's task was cancelled: cancel | fenced | finished | handback.
        self.abort_reason: str | None = None
        self.main: asyncio.Task[Any] | None = None
        self.steps: dict[str, bytes] = {}
        self.calls = StepCalls()
        # A replay met a checkpoint of another call: the run fails, caught or not.
        self.mismatch: ReplayMismatch | None = None
        self._state: dict[str, Any] = {}
        self._parallels = 0
        self._groups: set[str] = set()

    # -- what workflows may read --------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        return self.signals.stop

    @property
    def state(self) -> dict[str, Any]:
        return self._state

    @property
    def info(self) -> RunInfo:
        return RunInfo(self.run_id, self.workflow, self.version, self.attempt)

    # -- lifecycle (used by the runner) ---------------------------------------------------------

    async def load(self) -> None:
        """The record, checkpoints, state and signal history, as left by earlier attempts.

        One round trip, signal history included.
        """
        (workflow, version, input), steps, state, signals = await until_redis(
            self._read_all, f"run {self.run_id} attempt {self.attempt}: load"
        )
        self.workflow = workflow.decode() if workflow else ""
        self.version = version.decode() if version else "1"
        self.input = codec.loads(input) if input else None
        self.steps = {k.decode(): v for k, v in steps.items()}
        self._state = codec.loads(state) if state else {}
        self.signals.fold(signals)
        self.signals.on_new = self._on_signals

    async def _read_all(self) -> list[Any]:
        keys = self.engine.keys
        async with self.engine.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.run(self.run_id), ["workflow", "version", "input"])
            pipe.hgetall(keys.steps(self.run_id))
            pipe.get(keys.state(self.run_id))
            pipe.lrange(keys.signals(self.run_id), 0, -1)
            replies: list[Any] = await pipe.execute()
        return replies

    def abort(self, reason: str) -> None:
        """Stop the workflow's task now (from a signal, a lost fence, or a hand-back)."""
        if self.abort_reason is None:
            self.abort_reason = reason
        if reason != "cancel":
            self.publisher.close()
        if self.main is not None and not self.main.done():
            self.main.cancel(f"run {reason}")

    def _publish_failed(self, exc: Exception) -> None:
        if isinstance(exc, Fenced):
            self.abort("fenced")
        elif isinstance(exc, RunFinished):
            self.abort("finished")

    def _on_signals(self, new: list[Signal]) -> None:
        for sig in new:
            if sig.name == "cancel":
                self.abort("cancel")
            elif sig.name == "stop":
                self.engine.spawn(
                    self._quiet_send(EventType.LOG, "stop: finishing the current iteration"),
                    name=f"stop-note:{self.run_id}",
                )

    async def _quiet_send(self, type: EventType, message: str) -> None:
        with contextlib.suppress(Fenced, RunFinished):
            await self.publisher.send(type, message)

    # -- the Run protocol ---------------------------------------------------------------------

    async def save_state(self, **updates: Any) -> None:
        self._state.update(updates)
        key, value = self.engine.keys.state(self.run_id), codec.dumps(self._state)
        outcome = await until_redis(
            partial(self.engine.leases.fenced_set, self.run_id, self.attempt, key, value),
            f"run {self.run_id} attempt {self.attempt}: save state",
        )
        if outcome != "ok":
            self.abort("fenced" if outcome == "fenced" else "finished")
            raise Fenced(f"run {self.run_id} attempt {self.attempt} may no longer save state")

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
        result: T = await run_step(
            self,
            name,
            fn,
            args,
            kwargs,
            key=key,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
        )
        return result

    def task(self, activity: Any, /, *args: Any, **kwargs: Any) -> TaskSpec[Any]:
        name = kwargs.pop("name", "")
        retries = kwargs.pop("retries", None)
        timeout = kwargs.pop("timeout", None)
        definition: ActivityDef
        if isinstance(activity, str):
            definition = registry.get_activity(activity)
        elif callable(activity):
            definition = registry.activity_of(activity)
        else:
            raise TypeError(f"run.task takes an activity function or name, not {activity!r}")
        if not isinstance(name, str):
            raise TypeError(f"a task's name is a string, not {name!r}")
        return TaskSpec(
            definition.name,
            args,
            kwargs,
            name or definition.name,
            definition.retries if retries is None else check_retries(retries),
            definition.timeout if timeout is None else check_timeout(timeout),
        )

    async def parallel(
        self,
        tasks: Sequence[TaskSpec[R]],
        *,
        progress: tuple[float, float] | None = None,
        key: str | None = None,
    ) -> list[R]:
        if key is None:
            self._parallels += 1
            group = f"p{self._parallels}"
        else:
            group = _group_key(key)
            if group in self._groups:
                raise ValueError(f"parallel key {key!r} used twice in one execution")
            self._groups.add(group)
        return await run_parallel(self, group, tasks, progress, keyed=key is not None)

    async def progress(self, percent: float, message: str = "", **data: Any) -> None:
        await self.publisher.send(
            EventType.TASK_PROGRESS, message, progress=percent, data=data or None
        )

    async def emit(
        self,
        type: EventType,
        message: str = "",
        *,
        task: str | None = None,
        task_id: str | None = None,
        progress: float | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        if type in LIFECYCLE_STATUS:
            raise ValueError(f"{type.value} is the engine's to publish")
        await self.publisher.send(
            type, message, task=task, task_id=task_id, progress=progress, data=data
        )

    async def sleep(self, seconds: float) -> None:
        await self.checkpoint()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.signals.stop:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self.signals.changed(remaining)
            self._raise_if_cancelled()

    async def checkpoint(self) -> None:
        self._raise_if_cancelled()
        if not self.signals.paused or self.signals.stop:
            return
        await self.publisher.send(EventType.WORKFLOW_PAUSED, "paused", wait=True)
        while self.signals.paused and not self.signals.stop:
            # A resume and a later pause read together leave no trace in the log (the run
            # stays paused): this line says which signals a paused run has taken into account.
            logger.debug(
                "run %s attempt %d paused, %d signals read",
                self.run_id,
                self.attempt,
                self.signals.read,
            )
            await self.signals.changed(None)
            self._raise_if_cancelled()
        why = "resumed to stop" if self.signals.paused else "resumed"
        await self.publisher.send(EventType.WORKFLOW_RESUMED, why, wait=True)

    async def next_message(self, timeout: float | None = None) -> Signal | None:
        await self.checkpoint()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            message = self.signals.next_message()
            if message is not None:
                return message
            if self.signals.stop:
                return None
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            await self.signals.changed(remaining)
            self._raise_if_cancelled()

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
        return publish_conversation(
            self.model,
            self.publisher,
            messages,
            tools,
            task=task,
            max_rounds=max_rounds,
            max_tokens=max_tokens,
            data=data,
        )

    def stream_llm(
        self, prompt: str, *, task: str = "llm", system: str | None = None, max_tokens: int = 400
    ) -> AsyncIterator[str]:
        return stream_tokens(
            self.model, self.publisher, prompt, task=task, system=system, max_tokens=max_tokens
        )

    # -- helpers --------------------------------------------------------------------------------

    def _raise_if_cancelled(self) -> None:
        if self.signals.cancel:
            self.abort("cancel")
            raise asyncio.CancelledError("run cancelled")


def _group_key(key: str) -> str:
    """An author's fan-out key: its task ids are `<key>.<i>`; `p<n>` is the engine's own."""
    if not (isinstance(key, str) and _GROUP_KEY.fullmatch(key)) or _AUTO_GROUP.fullmatch(key):
        raise ValueError(
            f"a parallel key is 1-64 letters, digits, '_' or '-', and not p<n>: {key!r}"
        )
    return key


def _conforms(handle: RunHandle) -> Run:
    return handle  # mypy checks RunHandle against the protocol workflows are written for
