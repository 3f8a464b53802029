"""Seed 003's routes (a Temporal "durable AI agent": monty, signals, queries, chat) on runs.

- `GET|POST /monty/stream` starts a `monty` run (optional input from the JSON body or the query
  string) and streams unnamed messages whose JSON carries `event` (`workflow_started`,
  `progress_update`, `workflow_completed` with `result`, `workflow_failed`, …) and the monty
  fields under both the trace view's and the query's names. Each message's `id:` is
  `<run id>/<stream id>`: a reconnecting EventSource sends it back as `Last-Event-ID` and resumes
  the same run instead of starting a new one; after the run's last event, a 204 tells it to
  stop reconnecting. The run belongs to its stream (`stream_runs.py`): once no viewer of it has
  held a lease for `TIDINGS_ORPHAN_GRACE_S` (a reconnect to any gateway renews it), it is stopped
  as `POST /workflow/{id}/signal/stop` would, and after `TIDINGS_STREAM_RUN_MAX_S` in any case.
- `POST /workflow/{id}/signal/stop`, `GET /workflow/{id}/status|query|history`.
- `POST /chat {"message", "workflow_id"?}` starts a `chat` run or messages an existing one and
  waits (bounded, `timeout_s`, default 30 s) for the reply; 200 with the reply, or 202 with
  `"status": "pending"` if the model is still answering (read it from `/history`). A chat started
  here completes after `TIDINGS_CHAT_IDLE_S` without a message, with a `log` event saying so.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidings import codec
from tidings.errors import BadCursor, Conflict, InvalidInput, NotFound
from tidings.events import TERMINAL_STATUSES
from tidings.keys import check_run_id
from tidings.sse import encode
from tidings.streamid import StreamId, parse_cursor

from ..access import Need, authorize
from ..bodies import parse_model, read_json
from ..context import gateway
from ..limits import start_limited
from ..run_routes import control_of
from ..streaming import SSE_HEADERS, stream_run
from .query import coerce_query
from .seed000 import finished_at

__all__ = [
    "chat",
    "monty_stream",
    "render_monty",
    "workflow_history",
    "workflow_query",
    "workflow_status",
    "workflow_stop",
]

_MONTY_FIELDS = (
    "iteration",
    "progress",
    "status",
    "quotes_delivered",
    "current_quote",
    "elapsed",
    "iteration_count",
    "total_quotes_delivered",
    "total_elapsed",
    "should_exit",
)
_PROGRESS_TYPES = {"task_progress", "iteration_started", "iteration_completed"}


def render_monty(run_id: str) -> Any:
    """A renderer for one viewer: remembers the latest monty fields so every message, including
    the final one, carries the statistics the seed's trace view shows."""
    last: dict[str, Any] = {f: None for f in _MONTY_FIELDS}
    last.update(iteration=0, iteration_count=0, quotes_delivered=0, total_quotes_delivered=0)
    last.update(elapsed=0.0, total_elapsed=0.0, progress=0, status="starting", should_exit=False)

    def render(raw: bytes) -> bytes | None:
        event = json.loads(raw)
        kind, data = event["type"], event.get("data") or {}
        if kind == "token":
            return None
        body: dict[str, Any] = {}
        if kind in _PROGRESS_TYPES and "iteration" in data:
            last.update({f: data[f] for f in _MONTY_FIELDS if f in data})
            name = "progress_update"
        elif kind == "workflow_completed":
            name = "workflow_completed"
            last.update(status="completed", should_exit=True)
            body["result"] = data.get("result") or {
                "total_iterations": last["iteration_count"],
                "total_quotes_delivered": last["total_quotes_delivered"],
                "total_elapsed": last["total_elapsed"],
            }
        elif kind in ("workflow_failed", "workflow_cancelled"):
            name = kind
            last.update(status=event.get("message") or kind, should_exit=True)
        elif kind == "signal_received" and data.get("signal") == "stop":
            name = "stop_requested"
            last.update(should_exit=True)
        else:
            name = kind
        body = {
            "event": name,
            "workflow_id": run_id,
            "timestamp": event.get("ts"),
            "message": event.get("message", ""),
            **last,
            **body,
        }
        return encode(codec.dumps(body), id=f"{run_id}/{event.get('id', '')}")

    return render


async def monty_stream(request: Request) -> Response:
    resumed = _resume_point(request)
    if resumed is None and request.method == "HEAD":  # what a GET would answer; no run started
        return Response(status_code=200, media_type="text/event-stream", headers=SSE_HEADERS)
    if resumed is None:
        return await _start_monty(request)
    run_id, after = resumed
    authorize(request, Need.READ, run_id)
    if await finished_at(request, run_id, after):
        return Response(status_code=204)
    return await stream_run(request, run_id, after=after, render=render_monty(run_id))


async def _start_monty(request: Request) -> Response:
    principal = authorize(request, Need.CONTROL)
    raw = await read_json(request, empty={}) if request.method == "POST" else {}
    if not isinstance(raw, dict):
        raise InvalidInput(
            "the body must be a JSON object of monty input",
            errors=[{"loc": ["body"], "msg": "expected an object", "type": "dict_type"}],
        )
    ctx = gateway(request)
    params: dict[str, Any] = {k: v for k, v in request.query_params.items() if k != "quotes"}
    if "quotes" in request.query_params:
        params["quotes"] = request.query_params.getlist("quotes")
    if params:  # query values are text: numbers as the catalog's schema takes them
        params = coerce_query((await ctx.catalog.get("monty")).current.input_schema, params)
    # The viewer's lease first: a client with no stream left starts no run.
    run_id = str(uuid.uuid4())
    lease = await ctx.presence.acquire(principal.client, [run_id])
    try:
        await start_limited(ctx, principal.client, "monty", {**params, **raw}, run_id=run_id)
        await ctx.stream_runs.own(run_id)  # it ends when its viewers are gone
    except BaseException:
        lease.release()
        raise
    return await stream_run(request, run_id, render=render_monty(run_id), lease=lease)


def _resume_point(request: Request) -> tuple[str, StreamId] | None:
    """`<run id>/<stream id>` from a reconnecting EventSource's Last-Event-ID."""
    header = request.headers.get("last-event-id", "")
    run_id, sep, cursor = header.partition("/")
    if not sep:
        return None
    try:
        check_run_id(run_id)
    except NotFound:
        raise BadCursor(f"not a `<run id>/<stream id>` event id: {header[:100]!r}") from None
    return run_id, parse_cursor(cursor)


async def workflow_stop(request: Request) -> JSONResponse:
    run_id = request.path_params["id"]
    authorize(request, Need.CONTROL, run_id)
    await control_of(request).signal(run_id, "stop")
    return JSONResponse({"status": "signal sent", "workflow_id": run_id, "signal": "stop_workflow"})


async def workflow_status(request: Request) -> JSONResponse:
    run_id = request.path_params["id"]
    authorize(request, Need.READ, run_id)
    record = await control_of(request).get(run_id)
    return JSONResponse(
        {
            "workflow_id": run_id,
            "workflow_type": record.workflow,
            "status": record.status.value.upper(),
            "progress": record.progress,
            "start_time": record.started_at or record.created_at,
            "close_time": record.finished_at or None,
            "message": record.message,
            "result": record.result,
            "error": record.error or None,
        }
    )


async def workflow_query(request: Request) -> JSONResponse:
    run_id = request.path_params["id"]
    authorize(request, Need.READ, run_id)
    state = await control_of(request).state(run_id)
    body = state if isinstance(state, dict) else {"state": state}
    return JSONResponse({"workflow_id": run_id, **body})


async def workflow_history(request: Request) -> JSONResponse:
    run_id = request.path_params["id"]
    authorize(request, Need.READ, run_id)
    control = control_of(request)
    record = await control.get(run_id)
    state = await control.state(run_id)
    messages = state.get("messages", []) if isinstance(state, dict) else []
    return JSONResponse(
        {"workflow_id": run_id, "status": record.status.value, "messages": messages}
    )


class _ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=8_000)
    workflow_id: str | None = Field(None, max_length=64)
    timeout_s: float = Field(30.0, ge=0, le=120)


async def chat(request: Request) -> JSONResponse:
    principal = authorize(request, Need.CONTROL)
    body = parse_model(_ChatRequest, await read_json(request))
    control = control_of(request)
    if body.workflow_id:
        existing = await control.get(body.workflow_id)
        if existing.workflow != "chat":
            raise Conflict(f"run {body.workflow_id} is a {existing.workflow} run, not a chat")
        ref = uuid.uuid4().hex
        await control.signal(body.workflow_id, "message", {"text": body.message, "ref": ref})
        run_id = body.workflow_id
    else:
        ctx = gateway(request)
        idle = ctx.settings.chat_idle_s
        chat_input = {"message": body.message, "idle_timeout_s": idle}
        record = await start_limited(ctx, principal.client, "chat", chat_input)
        run_id, ref = record.run_id, "input"
    reply = await _await_reply(request, run_id, ref, body.timeout_s)
    if reply is None:
        return JSONResponse(
            {"workflow_id": run_id, "status": "pending", "response": None}, status_code=202
        )
    return JSONResponse(
        {
            "workflow_id": run_id,
            "status": "completed",
            "response": reply["content"],
            "tool": reply.get("tool"),
            "history_url": f"/workflow/{run_id}/history",
        }
    )


async def _await_reply(
    request: Request, run_id: str, ref: str, timeout: float
) -> dict[str, Any] | None:
    """Poll the run's state for the assistant message answering `ref` (bounded)."""
    control = control_of(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.02
    while True:
        state = await control.state(run_id)
        for message in state.get("messages", []) if isinstance(state, dict) else []:
            if message.get("reply_to") == ref and message.get("role") == "assistant":
                return dict(message)
        if loop.time() >= deadline:
            return None
        record = await control.get(run_id)
        if record.status in TERMINAL_STATUSES:
            raise Conflict(f"chat {run_id} ended ({record.status.value}) before replying")
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 1.5, 0.25)
