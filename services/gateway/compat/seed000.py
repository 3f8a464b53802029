"""Seed 000's routes (a research workflow streamed over SSE), mapped onto runs.

- `POST /api/v1/workflows/` stores a *definition* (`<ns>:compat:wf:{ID}`, one day TTL), not a
  run: the seed creates first and executes later, and a run record that no job backs would look
  stuck in every run list. A body whose `tasks` carry prompts becomes a `prompt_chain`; otherwise
  a `research` run on `topic` (or `query`, or the name without a leading "Research"), with
  `config.breadth` / `config.depth`. The input is validated at creation against the workflow's
  JSON schema in the catalog (`tidings.catalog`): a bad one is a 422 then, not a failed run later
  (what a schema cannot say, such as a cycle among tasks, fails the run when it starts).
- `POST /api/v1/workflows/{id}/execute[?stream=true]` starts the run *with the definition's ID*,
  so every native route works with the same ID; `metadata.stream_url` points at:
- `GET /api/v1/workflows/{id}/stream`: an unnamed `{"status": "connected", …}` line, then every
  event named by its type with the seed's fields (`event_type`, `workflow_id`, `task_id`,
  `task_name`, `progress_percent`, `message`, `data`, `timestamp`; token events included) and
  its stream ID as `id:`, so a reconnecting EventSource resumes without loss. A reconnect after
  the run's last event gets 204, which tells EventSource to stop reconnecting.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidings import codec
from tidings.errors import Conflict, NotFound
from tidings.events import TERMINAL_STATUSES, now_iso
from tidings.keys import check_run_id
from tidings.sse import encode
from tidings.streamid import StreamId, parse_cursor

from ..access import Need, authorize
from ..bodies import parse_model, read_json
from ..limits import start_limited
from ..run_routes import control_of
from ..streaming import stream_run

__all__ = [
    "create_definition",
    "execute_definition",
    "finished_at",
    "get_seed_workflow",
    "render_seed000",
    "stream_seed_workflow",
]

_DEFINITION_TTL_S = 86_400


class _SeedConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    breadth: int = 3
    depth: int = 1


class _SeedCreate(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=500)
    description: str | None = Field(None, max_length=2_000)
    topic: str | None = None
    query: str | None = None
    tasks: list[dict[str, Any]] = Field(default_factory=list, max_length=50)
    config: _SeedConfig = Field(default_factory=_SeedConfig)


def _seed_input(body: _SeedCreate) -> tuple[str, dict[str, Any]]:
    """(workflow, input) for a seed-000 definition."""
    if body.tasks and all(isinstance(t.get("prompt"), str) for t in body.tasks):
        tasks = [
            {
                "name": t.get("name"),
                "prompt": t["prompt"],
                "depends_on": t.get("depends_on") or t.get("dependencies") or [],
            }
            for t in body.tasks
        ]
        return "prompt_chain", {"tasks": tasks}
    topic = body.topic or body.query or re.sub(r"^\s*research\s+", "", body.name, flags=re.I)
    return "research", {
        "topic": topic.strip() or body.name,
        "breadth": body.config.breadth,
        "depth": body.config.depth,
    }


async def create_definition(request: Request) -> JSONResponse:
    authorize(request, Need.CONTROL)
    body = parse_model(_SeedCreate, await read_json(request))
    workflow, raw_input = _seed_input(body)
    prepared = await control_of(request).prepare(workflow, raw_input)
    ctx = request.app.state.ctx
    def_id = str(uuid.uuid4())
    record = {
        "id": def_id,
        "name": body.name,
        "description": body.description,
        "workflow": workflow,
        "input": prepared.input,
        "config": body.config.model_dump(mode="json"),
        "tasks": body.tasks,
        "created_at": now_iso(),
    }
    await ctx.redis.set(
        ctx.keys.compat_definition(def_id), codec.dumps(record), ex=_DEFINITION_TTL_S
    )
    return JSONResponse(
        {**record, "status": "pending", "results": {}, "metadata": {}}, status_code=201
    )


async def _definition(request: Request, def_id: str) -> dict[str, Any] | None:
    ctx = request.app.state.ctx
    raw = await ctx.redis.get(ctx.keys.compat_definition(check_run_id(def_id)))
    return codec.loads(raw) if raw else None


async def execute_definition(request: Request) -> JSONResponse:
    def_id = request.path_params["id"]
    principal = authorize(request, Need.CONTROL, def_id)
    definition = await _definition(request, def_id)
    control = control_of(request)
    if definition is None:
        record = await control.get(def_id)  # NotFound if neither exists
        raise Conflict(f"workflow {def_id} was already executed (status {record.status.value})")
    ctx = request.app.state.ctx
    workflow, input = definition["workflow"], definition["input"]
    record = await start_limited(ctx, principal.client, workflow, input, run_id=def_id)
    await ctx.redis.delete(ctx.keys.compat_definition(def_id))
    metadata: dict[str, Any] = {"run_url": f"/api/runs/{def_id}"}
    if request.query_params.get("stream", "").lower() in ("1", "true", "yes"):
        metadata["stream_url"] = f"/api/v1/workflows/{def_id}/stream"
    return JSONResponse(
        {
            "id": def_id,
            "name": definition["name"],
            "workflow": definition["workflow"],
            "status": record.status.value,
            "created_at": definition["created_at"],
            "started_at": record.created_at,
            "results": {},
            "metadata": metadata,
        }
    )


async def get_seed_workflow(request: Request) -> JSONResponse:
    def_id = request.path_params["id"]
    authorize(request, Need.READ, def_id)
    definition = await _definition(request, def_id)
    if definition is not None:
        return JSONResponse({**definition, "status": "pending", "results": {}})
    record = await control_of(request).get(def_id)
    return JSONResponse(
        {
            "id": def_id,
            "workflow": record.workflow,
            "status": record.status.value,
            "progress_percent": record.progress,
            "created_at": record.created_at,
            "started_at": record.started_at or None,
            "completed_at": record.finished_at or None,
            "results": record.result if record.result is not None else {},
            "error": record.error or None,
        }
    )


_SEED000_MESSAGES = {
    "workflow_started": "Starting workflow",
    "workflow_completed": "Workflow completed successfully",
    "workflow_failed": "Workflow failed",
    "workflow_cancelled": "Workflow cancelled",
    "task_started": "Starting task: {task}",
    "task_completed": "Completed: {task}",
    "task_failed": "Task failed: {task}",
    "task_retrying": "Retrying task: {task}",
}


def _seed000_message(event: dict[str, Any]) -> str:
    """The seed's wording for events that carry no message of their own."""
    template = _SEED000_MESSAGES.get(event["type"], "")
    return template.format(task=event.get("task") or "")


def render_seed000(raw: bytes) -> bytes | None:
    """A Tidings event as the seed's `WorkflowEvent.to_sse()` would have written it."""
    event = json.loads(raw)
    body = {
        "event_type": event["type"],
        "workflow_id": event["run_id"],
        "task_id": event.get("task_id"),
        "task_name": event.get("task"),
        "progress_percent": event.get("progress", 0.0),
        "message": event.get("message") or _seed000_message(event),
        "data": event.get("data"),
        "timestamp": event.get("ts"),
        "seq": event.get("seq"),
    }
    return encode(codec.dumps(body), event=event["type"], id=event.get("id") or None)


async def stream_seed_workflow(request: Request) -> Response:
    def_id = request.path_params["id"]
    authorize(request, Need.READ, def_id)
    if not await control_of(request).store.exists(def_id):
        if await _definition(request, def_id) is not None:
            raise Conflict(f"workflow {def_id} has not been executed yet: POST …/execute first")
        raise NotFound(f"no workflow {def_id!r}")
    header = request.headers.get("last-event-id")
    after = parse_cursor(header) if header else None
    if after is not None and await finished_at(request, def_id, after):
        return Response(status_code=204)
    preamble = encode(codec.dumps({"status": "connected", "workflow_id": def_id}))
    return await stream_run(request, def_id, render=render_seed000, preamble=preamble)


async def finished_at(request: Request, run_id: str, cursor: StreamId) -> bool:
    """Has the run ended, and has the holder of `cursor` seen its last event? An EventSource that
    reconnects after the end then gets a 204, which tells it to stop reconnecting."""
    record = await control_of(request).get(run_id)
    return (
        record.status in TERMINAL_STATUSES
        and bool(record.last_event_id)
        and parse_cursor(record.last_event_id) <= cursor
    )
