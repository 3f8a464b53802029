"""Tidings. `shared/` in the repository, imported as `tidings`.

What a workflow author imports is the SDK (`tidings.sdk`), re-exported here:

    from tidings import Run, TaskContext, activity, workflow

The other modules are what both services share: settings, Redis names, the event model, the bus,
the SSE codec. None of them imports `tidings.services`.
"""

from __future__ import annotations

from .sdk import (
    ActivityDef,
    Registry,
    ReplayMismatch,
    Run,
    RunInfo,
    Runs,
    RunView,
    Signal,
    StepTimeout,
    TaskContext,
    TaskFailed,
    TaskSpec,
    WorkflowDef,
    WorkflowError,
    activity,
    registry,
    workflow,
)

__all__ = [
    "ActivityDef",
    "Registry",
    "ReplayMismatch",
    "Run",
    "RunInfo",
    "RunView",
    "Runs",
    "Signal",
    "StepTimeout",
    "TaskContext",
    "TaskFailed",
    "TaskSpec",
    "WorkflowDef",
    "WorkflowError",
    "activity",
    "registry",
    "workflow",
]
