"""The workflow author's API, the SDK: all a workflow module imports.

    from tidings import Run, TaskContext, activity, workflow

It depends on nothing above it (standard library, pydantic, and the leaf modules
`tidings.events` and `tidings.errors`); the engine and the gateway depend on it, never the
reverse. `tests/test_layers.py` holds both directions.
"""

from __future__ import annotations

from .errors import ReplayMismatch, StepTimeout, TaskFailed, WorkflowError
from .model import Message, Model, ModelError, Tool, ToolCall, ToolError, ToolResult
from .protocols import Run, RunInfo, Runs, RunView, Signal, TaskContext, TaskSpec
from .registry import ActivityDef, Registry, WorkflowDef, activity, registry, workflow

__all__ = [
    "ActivityDef",
    "Message",
    "Model",
    "ModelError",
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
    "Tool",
    "ToolCall",
    "ToolError",
    "ToolResult",
    "WorkflowDef",
    "WorkflowError",
    "activity",
    "registry",
    "workflow",
]
