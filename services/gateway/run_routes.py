"""The run control API: catalog, start, history, query, signal.

Every handler goes through `request.app.state.ctx.control` (`shared.control.Control`), the same
code the CLI and the chat agent's tools use, and raises `shared.errors` exceptions that the
gateway's handlers render as `{"error": {...}}`. Bodies are parsed in two stages so the status
says what went wrong: bytes that are not JSON are a 400 (`MalformedBody`), JSON of the wrong
shape is a 422 with pydantic's field errors. A body must be sent as `application/json` (or
`application/*+json`): anything else is a 415, so a form or a `text/plain` body posted by a page
of another site is never taken for JSON. A request with no body needs no content type.

Bodies are parsed by pydantic-core, which refuses (400) what would otherwise fail later: nesting
deeper than its recursion limit, integers past Python's 4,300-digit conversion limit, lone UTF-16
surrogate escapes (`"\\ud800"`, which no UTF-8 encoder can write back), and the `NaN`/`Infinity`
literals; a float that overflows to infinity (`1e999`) is refused as well.

`GET /openapi.json` describes the primary API, with every workflow's input model as a schema.
`GET /api/runs/{id}` and `GET /api/runs/{id}/events` live with the streaming routes (they know
about viewers); the links in a run's representation point there.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeVar
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from pydantic_core import from_json
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from shared.control import SIGNAL_NAMES, Control
from shared.errors import InvalidInput, TidingsError
from shared.events import Event
from shared.runs import RunRecord
from shared.workflow import WORKFLOWS

from .access import Need, authorize
from .idempotency import start_once

__all__ = [
    "MalformedBody",
    "StartRun",
    "UnsupportedMediaType",
    "control_of",
    "openapi_spec",
    "parse_model",
    "read_json",
    "routes",
    "run_links",
    "run_view",
]

M = TypeVar("M", bound=BaseModel)


class MalformedBody(TidingsError):
    """The request body is not JSON (or not UTF-8)."""

    code = "malformed_json"
    status = 400


class UnsupportedMediaType(TidingsError):
    """A request body sent as something other than JSON."""

    code = "unsupported_media_type"
    status = 415


_JSON_MEDIA = re.compile(r"application/(?:[a-z0-9!#$&^_.-]+\+)?json", re.ASCII | re.IGNORECASE)


class StartRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=64)
    input: dict[str, Any] | None = None


def control_of(request: Request) -> Control:
    control: Control = request.app.state.ctx.control
    return control


async def read_json(request: Request, *, empty: Any = None) -> Any:
    """The body as JSON; `empty` when there is no body at all (whatever its content type).

    UnsupportedMediaType (415) for a body not sent as JSON, refused before it is read when its
    length is declared; MalformedBody (400) for one that is not a single JSON value."""
    content_type = request.headers.get("content-type", "")
    is_json = _JSON_MEDIA.fullmatch(content_type.partition(";")[0].strip()) is not None
    if not is_json and _declared_length(request) > 0:
        raise _unsupported(content_type)
    raw = await request.body()
    if not raw.strip():
        return empty
    if not is_json:
        raise _unsupported(content_type)
    try:
        value = from_json(raw.decode("utf-8"), allow_inf_nan=False)
    except UnicodeDecodeError:
        raise MalformedBody("the request body is not UTF-8") from None
    except ValueError as exc:
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from None
    if not _finite(value):
        raise MalformedBody("the request body has a number too large for a float")
    return value


def _declared_length(request: Request) -> int:
    try:
        return int(request.headers.get("content-length", "0"))
    except ValueError:
        return 0


def _unsupported(content_type: str) -> UnsupportedMediaType:
    sent = repr(content_type[:100]) if content_type else "no content type"
    return UnsupportedMediaType(f"send the request body as application/json, not {sent}")


def _finite(value: Any) -> bool:
    """No float in `value` overflowed to infinity (`1e999` parses; JSON has no infinity)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def parse_model(model: type[M], value: Any, what: str = "request body") -> M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise InvalidInput.from_validation(f"invalid {what}", exc) from None


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


def _catalog() -> list[dict[str, Any]]:
    import services.workflows  # noqa: F401  (registers the shipped workflows)

    return [
        {"name": d.name, "description": d.description, "input_schema": d.schema()}
        for d in sorted(WORKFLOWS.values(), key=lambda d: d.name)
    ]


async def list_workflows(request: Request) -> JSONResponse:
    authorize(request, Need.READ)
    return JSONResponse({"workflows": _catalog()})


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
    return JSONResponse(run_view(record), status_code=200 if replayed else 201, headers=headers)


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


def openapi_spec() -> dict[str, Any]:
    """OpenAPI 3.1 for the primary API; every workflow's input model is a named schema."""
    import services.workflows  # noqa: F401  (registers the shipped workflows)

    models: list[type[BaseModel]] = [StartRun, RunRecord, Event]
    models += [d.Input for d in sorted(WORKFLOWS.values(), key=lambda d: d.name)]
    _, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    schemas["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {},
                },
                "required": ["code", "message"],
            }
        },
    }

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    schemas["EventPage"] = {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": ref("Event")},
            "next": {"type": ["string", "null"], "description": "the last id in the page"},
            "gap": {"type": "boolean", "description": "the log was trimmed past the cursor"},
            "run": ref("RunRecord"),
        },
        "required": ["events", "next", "gap", "run"],
    }

    def reply(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"description": description}
        if schema is not None:
            body["content"] = {"application/json": {"schema": schema}}
        return body

    error = reply("error", ref("Error"))
    # What any route reading a JSON body may also answer.
    body_errors = {"400": error, "413": error, "415": error, "422": error}
    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
    # An event stream's format is SSE (see the README), not a JSON schema: tools that read a
    # `schema` here as the schema of each event would judge the frames against it.
    sse: dict[str, Any] = {"text/event-stream": {}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tidings", "version": "1"},
        "paths": {
            "/api/workflows": {
                "get": {
                    "summary": "Workflow catalog with input schemas",
                    "responses": {"200": reply("catalog")},
                }
            },
            "/api/runs": {
                "post": {
                    "summary": "Start a run",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "description": "1-200 printable characters; a retry with the same"
                            " key and body within 24 h returns the same run (200)",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                        }
                    ],
                    "requestBody": {"content": {"application/json": {"schema": ref("StartRun")}}},
                    "responses": {
                        "201": reply("the queued run", ref("RunRecord")),
                        "200": reply("the run this Idempotency-Key started", ref("RunRecord")),
                        "404": error,
                        "429": reply("over a per-client limit (see Retry-After)", ref("Error")),
                        **body_errors,
                    },
                },
                "get": {
                    "summary": "Run history, newest first",
                    "parameters": [
                        {"name": n, "in": "query", "schema": {"type": t}}
                        for n, t in (
                            ("workflow", "string"),
                            ("status", "string"),
                            ("limit", "integer"),
                            ("before", "string"),
                        )
                    ],
                    "responses": {
                        "200": reply("a page of runs and the next cursor"),
                        "400": error,
                        "422": error,
                    },
                },
            },
            "/api/runs/{run_id}": {
                "get": {
                    "summary": "One run",
                    "parameters": [run_id],
                    "responses": {"200": reply("run", ref("RunRecord")), "404": error},
                }
            },
            "/api/runs/{run_id}/events": {
                "get": {
                    "summary": "The run's events: SSE (replay + live) or a JSON page",
                    "parameters": [
                        run_id,
                        {"name": "after", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "the event stream, or with `Accept: application/json`"
                            " a page of the log",
                            "content": {**sse, "application/json": {"schema": ref("EventPage")}},
                        },
                        "400": error,
                        "404": error,
                    },
                }
            },
            "/api/runs/{run_id}/state": {
                "get": {
                    "summary": "Query the run's state",
                    "parameters": [run_id],
                    "responses": {"200": reply("state"), "404": error},
                }
            },
            "/api/runs/{run_id}/signals/{name}": {
                "post": {
                    "summary": "Send stop, pause, resume, cancel or message",
                    "parameters": [
                        run_id,
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"enum": list(SIGNAL_NAMES)},
                        },
                    ],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "202": reply("accepted"),
                        "404": error,
                        "409": error,
                        **body_errors,
                    },
                }
            },
            "/api/runs/events": {
                "get": {
                    "summary": "Lifecycle summaries of all runs (SSE)",
                    "responses": {"200": {"description": "stream", "content": sse}},
                }
            },
        },
        "components": {"schemas": schemas},
    }


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_spec())


routes: list[BaseRoute] = [
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/api/workflows", list_workflows, methods=["GET"]),
    Route("/api/runs", start_run, methods=["POST"]),
    Route("/api/runs", list_runs, methods=["GET"]),
    Route("/api/runs/{run_id}/state", run_state, methods=["GET"]),
    Route("/api/runs/{run_id}/signals/{name}", send_signal, methods=["POST"]),
]
