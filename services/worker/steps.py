"""`run.step`, the run's side: a checkpointed call with timeout, retries and back-off.

Keys: the n-th step named `name` in one execution is checkpointed under `name` (n = 1) or
`name#n`, as before; a step given `key=` under `key:<key>`, whatever ran before it (a key used
twice in one execution is an error: the second call would get the first one's result). What a
checkpoint records of its call, and how a replay checks it, is `replay`'s docstring.

Tries: `timeout` bounds each try (`asyncio.timeout`; the function is cancelled); a failed or
timed-out try with retries left publishes `task_retrying` (data `try`, `error`, `delay_s`), waits
`backoff * 2**(try - 1)` seconds (at most `_BACKOFF_CAP_S`), honours pause and cancel, and runs
the function again. The last try's failure publishes `task_failed` and raises: `StepTimeout` if
it timed out, else the function's own exception. Not retried: a `WorkflowError` (the author's
deliberate failure, a `TaskFailed` or `ReplayMismatch` from within), a result that does not fit
the return annotation (a bug, not bad luck), and whatever means the run is not ours any more.

The result is validated into the annotated type before its checkpoint is committed; the
checkpoint and `task_completed` are one script (`Publisher.commit`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tidings import codec
from tidings.errors import Fenced, RunFinished
from tidings.events import EventType
from tidings.sdk import ReplayMismatch, StepTimeout, WorkflowError
from tidings.sdk.protocols import check_retries, check_timeout

from .messages import (
    completed_message,
    describe_error,
    failed_message,
    retrying_message,
    started_message,
)
from .replay import (
    Call,
    adapter_for,
    args_digest,
    decode,
    describe_invalid,
    encode,
    identity,
    typed,
)

if TYPE_CHECKING:
    from .run import RunHandle

__all__ = ["StepCalls", "run_step"]

_BACKOFF_CAP_S = 60.0
_KEY_PREFIX = "key:"


class StepCalls:
    """The keys and ordinals this execution has given its steps so far."""

    def __init__(self) -> None:
        self.count = 0
        self.names: Counter[str] = Counter()
        self.keys: set[str] = set()

    def next(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: str | None,
    ) -> Call:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a step's name is a non-empty string, not {name!r}")
        self.count += 1
        if key is not None:
            if not isinstance(key, str) or not key or len(key) > 200:
                raise ValueError(f"a step's key is a string of 1-200 characters, not {key!r}")
            if key in self.keys:
                raise ValueError(f"step key {key!r} used twice in one execution")
            self.keys.add(key)
            return Call(_KEY_PREFIX + key, identity(fn), self.count, None)
        self.names[name] += 1
        n = self.names[name]
        field = name if n == 1 else f"{name}#{n}"
        return Call(field, identity(fn), self.count, args_digest(args, kwargs))


class _TimedOut(Exception):
    pass


class _Unfit(TypeError):
    """The function returned something its return annotation does not describe."""


async def run_step(
    run: RunHandle,
    name: str,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    key: str | None,
    timeout: float | None,
    retries: int,
    backoff: float,
) -> Any:
    timeout = check_timeout(timeout)
    check_retries(retries)
    if isinstance(backoff, bool) or not isinstance(backoff, int | float) or backoff < 0:
        raise ValueError(f"backoff must be a number of seconds >= 0, not {backoff!r}")
    call = run.calls.next(name, fn, args, kwargs, key)
    adapter = adapter_for(fn)
    stored = run.steps.get(call.key)
    if stored is not None:
        try:
            value = decode(call, stored)
            return typed(adapter, value)
        except ValidationError as exc:
            run.mismatch = ReplayMismatch(
                f"checkpoint {call.key!r} does not fit the return annotation of {call.fn} "
                f"(code changed under a running run?): {describe_invalid(exc)}"
            )
        except ReplayMismatch as exc:
            run.mismatch = exc
        raise run.mismatch
    # Events name a step by its key (`s#2`), or by its name when the author gave the key.
    task, task_id = (call.key if key is None else name), call.key
    await run.checkpoint()
    await run.publisher.send(
        EventType.TASK_STARTED, started_message(task), task=task, task_id=task_id
    )
    tries = retries + 1
    for attempt in range(1, tries + 1):
        try:
            result = await _bounded(fn(*args, **kwargs), timeout)
            value = codec.dumps(result)
            parsed = codec.loads(value)
            try:
                out = typed(adapter, parsed)
            except ValidationError as exc:
                raise _Unfit(
                    f"{call.fn} returned a value its return annotation does not describe: "
                    f"{describe_invalid(exc)}"
                ) from None
            break
        except (Fenced, RunFinished):
            raise
        except Exception as exc:
            error_exc: Exception = exc
            if isinstance(exc, _TimedOut):
                error_exc = StepTimeout(
                    f"step {task} timed out after {timeout:g} s"
                    + (f" on each of {tries} tries" if tries > 1 else "")
                )
            error = describe_error(error_exc)
            final = attempt == tries or isinstance(exc, WorkflowError | _Unfit)
            if final:
                await run.publisher.send(
                    EventType.TASK_FAILED,
                    failed_message(task, error),
                    task=task,
                    task_id=task_id,
                    data={"error": error, "try": attempt - 1},
                    wait=True,
                )
                if error_exc is exc:
                    raise
                raise error_exc from None
            delay = min(backoff * 2 ** (attempt - 1), _BACKOFF_CAP_S)
            await run.publisher.send(
                EventType.TASK_RETRYING,
                retrying_message(task, attempt + 1, tries, error),
                task=task,
                task_id=task_id,
                data={"try": attempt, "error": error, "delay_s": delay},
            )
            await asyncio.sleep(delay)  # a cancel cancels the run's task here too
            await run.checkpoint()
    checkpoint = encode(call, run.attempt, value)
    cmd = run.publisher.command(
        EventType.TASK_COMPLETED,
        completed_message(task),
        task=task,
        task_id=task_id,
        data={"result": parsed},
    )
    await run.publisher.commit(cmd, run.engine.keys.steps(run.run_id), call.key, checkpoint)
    run.steps[call.key] = checkpoint.encode()
    return out


async def _bounded(work: Awaitable[Any], timeout: float | None) -> Any:
    if timeout is None:
        return await work
    try:
        async with asyncio.timeout(timeout) as scope:
            return await work
    except TimeoutError:
        if scope.expired():
            raise _TimedOut() from None
        raise
