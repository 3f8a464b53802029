"""The run control API: catalog, start, history, query, signal.

Every handler goes through `request.app.state.ctx.control` (`tidings.control.Control`), the same
code the CLI and the chat agent's tools use, and raises `tidings.errors` exceptions that the
gateway's handlers render as `{"error": {...}}`. Bodies are read by `bodies.py`; the OpenAPI
document is `openapi.py`.

`GET /api/runs/{id}` and `GET /api/runs/{id}/events` live with the streaming routes (they know
about viewers); the links in a run's representation point there.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from tidings.catalog import WorkflowEntry
from tidings.control import Control
from tidings.errors import InvalidInput
from tidings.runs import RunRecord

from .access import Need, authorize
from .bodies import parse_model, read_json
from .idempotency import start_once

__all__ = [
    "StartRun",
    "control_of",
    "routes",
    "run_links",
    "run_view",
]


class StartRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=64)
    input: dict[str, Any] | None = None


def control_of(request: Request) -> Control:
    control: Control = request.app.state.ctx.control
    return control


def run_links(run_id: str) -> dict[str, str]:
    base = f"/api/runs/{run_id}"
    return {
        "self": base,
        "events": f"{base}/events",
        "state": f"{base}/state",
        "signals": f"{base}/signals/{{name}}",
    }


def run_view(record: RunRecord) -> dict[str, Any]:
    return {**record.model_dump(mode="json"), "links": run_links(record.run_id)}


async def list_workflows(request: Request) -> JSONResponse:
    """The catalog the workers published (`tidings.catalog`): no workflow code is loaded here."""
    authorize(request, Need.READ)
    view = await request.app.state.ctx.catalog.read(fresh=True)  # and refreshes the cache
    return JSONResponse({"workflows": [entry.view() for entry in view.entries()]})


def _routing(entry: WorkflowEntry, record: RunRecord) -> dict[str, Any]:
    """What a start answer says of where the run goes: its version and whether a worker serves
    that version now (a run nobody serves waits in its queue for one)."""
    version = record.version or entry.current.version
    served = next((v for v in entry.versions if v.version == version), entry.current)
    out: dict[str, Any] = {
        "version": version,
        "served": served.served,
        "workers": len(served.workers),
    }
    if not served.served:
        out["warning"] = (
            f"no live worker serves {entry.name} version {version} now: the run waits in its "
            "queue until one starts"
        )
    return out


async def start_run(request: Request) -> JSONResponse:
    """201 and the new run; with an `Idempotency-Key` already used, 200 and that run."""
    principal = authorize(request, Need.CONTROL)
    raw = await read_json(request)
    body = parse_model(StartRun, raw)
    record, replayed = await start_once(
        request.app.state.ctx,
        principal.client,
        body.workflow,
        body.input,
        key=request.headers.get("idempotency-key"),
        body=raw,
    )
    headers = {"Location": f"/api/runs/{record.run_id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    entry = await request.app.state.ctx.catalog.get(record.workflow)
    view = {**run_view(record), **_routing(entry, record)}
    return JSONResponse(view, status_code=200 if replayed else 201, headers=headers)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidInput(
            f"{name} must be an integer from {low} to {high}",
            errors=[{"loc": ["query", name], "msg": f"expected {low}..{high}", "input": raw}],
        )
    return value


async def list_runs(request: Request) -> JSONResponse:
    authorize(request, Need.READ)
    params = request.query_params
    limit = _int_param(request, "limit", 50, 1, 500)
    runs, cursor = await control_of(request).list_runs(
        workflow=params.get("workflow") or None,
        status=params.get("status") or None,
        limit=limit,
        before=params.get("before") or None,
    )
    next_link = None
    if cursor:
        query = {k: v for k, v in params.items() if k != "before"}
        query["before"] = cursor
        next_link = "/api/runs?" + urlencode(query)
    return JSONResponse(
        {"runs": [run_view(r) for r in runs], "next": cursor, "next_link": next_link}
    )


async def run_state(request: Request) -> JSONResponse:
    run_id = request.path_params["run_id"]
    authorize(request, Need.READ, run_id)
    control = control_of(request)
    state = await control.state(run_id)
    record = await control.get(run_id)
    return JSONResponse(
        {"run_id": run_id, "workflow": record.workflow, "status": record.status, "state": state}
    )


async def send_signal(request: Request) -> JSONResponse:
    run_id = request.path_params["run_id"]
    name = request.path_params["name"]
    authorize(request, Need.CONTROL, run_id)
    payload = await read_json(request)
    if payload is not None and not isinstance(payload, dict):
        raise InvalidInput(
            "a signal payload must be a JSON object",
            errors=[{"loc": ["body"], "msg": "expected an object", "type": "dict_type"}],
        )
    event = await control_of(request).signal(run_id, name, payload)
    return JSONResponse(
        {
            "run_id": run_id,
            "signal": name,
            "accepted": True,
            "event": event.model_dump(mode="json"),
        },
        status_code=202,
    )


routes: list[BaseRoute] = [
    Route("/api/workflows", list_workflows, methods=["GET"]),
    Route("/api/runs", start_run, methods=["POST"]),
    Route("/api/runs", list_runs, methods=["GET"]),
    Route("/api/runs/{run_id}/state", run_state, methods=["GET"]),
    Route("/api/runs/{run_id}/signals/{name}", send_signal, methods=["POST"]),
]
