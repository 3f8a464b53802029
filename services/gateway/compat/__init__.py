"""The seeds' own routes, so their clients work unchanged, mapped onto Tidings runs.

- `seed000`:
- `seed003`:

Each module's docstring details its mapping.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from .seed000 import create_definition, execute_definition, get_seed_workflow, stream_seed_workflow
from .seed003 import (
    chat,
    monty_stream,
    workflow_history,
    workflow_query,
    workflow_status,
    workflow_stop,
)

__all__ = ["routes"]

routes: list[BaseRoute] = [
    Route("/api/v1/workflows/", create_definition, methods=["POST"]),
    Route("/api/v1/workflows", create_definition, methods=["POST"]),
    Route("/api/v1/workflows/{id}", get_seed_workflow, methods=["GET"]),
    Route("/api/v1/workflows/{id}/execute", execute_definition, methods=["POST"]),
    Route("/api/v1/workflows/{id}/stream", stream_seed_workflow, methods=["GET"]),
    Route("/monty/stream", monty_stream, methods=["GET", "POST"]),
    Route("/workflow/{id}/signal/stop", workflow_stop, methods=["POST"]),
    Route("/workflow/{id}/status", workflow_status, methods=["GET"]),
    Route("/workflow/{id}/query", workflow_query, methods=["GET"]),
    Route("/workflow/{id}/history", workflow_history, methods=["GET"]),
    Route("/chat", chat, methods=["POST"]),
]
