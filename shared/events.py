"""The event model: one schema for every transport (Redis stream, pub/sub, SSE, JSON pages).

`id` is the event's entry ID in the run's Redis stream and doubles as the SSE `id:`; `seq` counts a
run's events from 1 without gaps; `progress` never decreases within a run (the publish script
enforces both). `ts` is ISO 8601 UTC with milliseconds so a browser's `new Date()` parses it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "LIFECYCLE_STATUS",
    "TERMINAL_STATUSES",
    "TERMINAL_TYPES",
    "Event",
    "EventType",
    "RunStatus",
    "RunSummary",
    "now_iso",
    "now_ms",
]


class EventType(StrEnum):
    WORKFLOW_STARTED = "workflow_started"
    WORKFLOW_COMPLETED = "workflow_completed"
    WORKFLOW_FAILED = "workflow_failed"
    WORKFLOW_CANCELLED = "workflow_cancelled"
    WORKFLOW_PAUSED = "workflow_paused"
    WORKFLOW_RESUMED = "workflow_resumed"
    TASK_STARTED = "task_started"
    TASK_PROGRESS = "task_progress"
    TASK_COMPLETED = "task_completed"
    TASK_FAILED = "task_failed"
    TASK_RETRYING = "task_retrying"
    ITERATION_STARTED = "iteration_started"
    ITERATION_COMPLETED = "iteration_completed"
    TOKEN = "token"
    SIGNAL_RECEIVED = "signal_received"
    WORKER_LOST = "worker_lost"
    LOG = "log"
    # Only ever produced by the gateway for one viewer, never stored in a log.
    RESYNC = "resync"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

TERMINAL_TYPES = frozenset(
    {EventType.WORKFLOW_COMPLETED, EventType.WORKFLOW_FAILED, EventType.WORKFLOW_CANCELLED}
)

# The run status an event moves its run to; the publish script applies it atomically.
LIFECYCLE_STATUS: dict[EventType, RunStatus] = {
    EventType.WORKFLOW_STARTED: RunStatus.RUNNING,
    EventType.WORKFLOW_RESUMED: RunStatus.RUNNING,
    EventType.WORKFLOW_PAUSED: RunStatus.PAUSED,
    EventType.WORKFLOW_COMPLETED: RunStatus.COMPLETED,
    EventType.WORKFLOW_FAILED: RunStatus.FAILED,
    EventType.WORKFLOW_CANCELLED: RunStatus.CANCELLED,
    EventType.WORKER_LOST: RunStatus.QUEUED,
}


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Event(BaseModel):
    """One thing that happened in a run."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field("", description="Stream entry ID, also the SSE id.")
    seq: int = Field(0, description="Position in the run's log, from 1, gapless.")
    run_id: str
    type: EventType
    task_id: str | None = None
    task: str | None = Field(None, description="Task or step name.")
    progress: float = Field(0.0, ge=0, le=100)
    message: str = ""
    data: dict[str, Any] | None = None
    ts: str = Field(default_factory=now_iso)
    attempt: int = Field(0, description="The run attempt that published it.")

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES


class RunSummary(BaseModel):
    """What the `<ns>:runs` channel carries and the run list shows."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    workflow: str
    status: RunStatus
    progress: float = 0.0
    message: str = ""
    seq: int = 0
    created_at: str = ""
    started_at: str = ""
    finished_at: str = ""
