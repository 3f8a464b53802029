"""The errors a workflow author meets: raised to a workflow, or raised by one on purpose.

All are `TidingsError`s, so the engine reports them with their message and nothing else.

Cancellation is not among them: a `cancel` signal cancels the workflow's task, so it arrives as
`asyncio.CancelledError` at whatever the workflow awaits. Do not swallow it (clean up in
`finally`); should a workflow swallow it anyway, the run still ends `cancelled`. Likewise a
`ReplayMismatch` caught by the workflow still fails the run: the engine remembers it.
"""

from __future__ import annotations

from tidings.errors import TidingsError

__all__ = ["ReplayMismatch", "StepTimeout", "TaskFailed", "WorkflowError"]


class WorkflowError(TidingsError):
    """Raise it to fail the run with this message (no traceback in the run's events)."""

    code = "workflow_error"


class TaskFailed(WorkflowError):
    """A fanned-out task (`run.parallel`) failed after its retries."""

    code = "task_failed"


class StepTimeout(WorkflowError):
    """A step ran past its `timeout` on its last try. (A task's last try that runs out fails
    the task: `parallel` raises `TaskFailed`, its message saying the task timed out.)"""

    code = "step_timeout"


class ReplayMismatch(WorkflowError):
    """On re-execution the workflow asked for a checkpoint other than the one its earlier attempt
    recorded at that point: the code changed under a running run, or a step's name depends on
    something that is not deterministic. The run fails instead of silently reusing a result
    stored for a different step."""

    code = "replay_mismatch"
