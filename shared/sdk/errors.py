"""The errors a workflow author meets: raised to a workflow, or raised by one on purpose.

All are `TidingsError`s, so the engine reports them with their message and nothing else.
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
    """A step or task ran past its `timeout` (after its retries, if any)."""

    code = "step_timeout"


class ReplayMismatch(WorkflowError):
    """On re-execution the workflow asked for a checkpoint other than the one its earlier attempt
    recorded at that point: the code changed under a running run, or a step's name depends on
    something that is not deterministic. The run fails instead of silently reusing a result
    stored for a different step."""

    code = "replay_mismatch"
