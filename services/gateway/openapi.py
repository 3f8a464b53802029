"""`GET /openapi.json`: OpenAPI 3.1 for the primary API; every workflow's input is a named schema.

The workflows' input schemas come from the catalog in Redis (`tidings.catalog`), never from their
code: a schema is named by its `title` (pydantic's model name), its `$defs` become components of
their own, and a name two workflows use for different schemas gets the workflow's name in front.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse

from tidings.catalog import CatalogView
from tidings.control import SIGNAL_NAMES
from tidings.events import Event
from tidings.runs import RunRecord

from .run_routes import StartRun

__all__ = ["input_schemas", "openapi", "openapi_spec"]

_COMPONENTS = "#/components/schemas/"


def _rename_refs(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                value = _COMPONENTS + names.get(value[len("#/$defs/") :], value[8:])
            out[key] = _rename_refs(value, names)
        return out
    if isinstance(node, list):
        return [_rename_refs(item, names) for item in node]
    return node


def input_schemas(view: CatalogView, taken: dict[str, Any]) -> dict[str, Any]:
    """Each workflow's current input schema and its `$defs` as components, refs rewritten."""
    out: dict[str, Any] = {}

    def place(name: str, schema: dict[str, Any], workflow: str) -> str:
        for candidate in (name, f"{workflow}_{name}"):
            known = out.get(candidate, taken.get(candidate))
            if known is None or json.dumps(known, sort_keys=True) == json.dumps(
                schema, sort_keys=True
            ):
                out[candidate] = schema
                return candidate
        out[f"{workflow}_{name}_{len(out)}"] = schema
        return f"{workflow}_{name}_{len(out) - 1}"

    for entry in view.entries():
        schema = dict(entry.current.input_schema)
        defs: dict[str, Any] = schema.pop("$defs", {}) or {}
        names = {d: d for d in defs}
        # Definitions first (refs inside them may point at each other: names are kept when free).
        for d in defs:
            names[d] = d if d not in out and d not in taken else f"{entry.name}_{d}"
        for d, body in defs.items():
            out[names[d]] = _rename_refs(body, names)
        title = str(schema.get("title") or f"{entry.name}_input")
        place(title, _rename_refs(schema, names), entry.name)
    return out


def openapi_spec(view: CatalogView | None = None) -> dict[str, Any]:
    """OpenAPI 3.1 for the primary API; every workflow's input schema (from `view`) is named."""
    models: list[type[BaseModel]] = [StartRun, RunRecord, Event]
    _, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    if view is not None:
        schemas.update(input_schemas(view, schemas))
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
                    "summary": "Workflow catalog with input schemas, versions and workers",
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
    return JSONResponse(openapi_spec(await request.app.state.ctx.catalog.read()))
