"""Routes of the streaming side: run event streams and pages, the run-list stream, the run record
with its viewer count, health, readiness and metrics.

`/api/runs/events` is listed before `/api/runs/{run_id}` so "events" is never taken for a run id.
Content negotiation on `/api/runs/{id}/events`: `text/event-stream` (or no preference) streams;
`application/json` without `text/event-stream` returns one page of the log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tidings import codec
from tidings.keys import check_run_id
from tidings.runs import RunRecord

from .access import Need, Principal, authorize
from .context import gateway
from .cursors import LifecycleCursor, format_id
from .errors import BadRequest, error_response
from .metrics import CONTENT_TYPE, render
from .multiplex import streams
from .run_routes import run_view
from .streaming import event_stream, request_cursor, stream_run

__all__ = ["lane", "routes"]

log = logging.getLogger(__name__)

_MAX_PAGE = 1000
_DEFAULT_PAGE = 100


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return codec.dumps(content)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and "text/event-stream" not in accept


def _page_limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return _DEFAULT_PAGE
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= _MAX_PAGE:
        raise BadRequest(f"limit must be an integer from 1 to {_MAX_PAGE}, not {raw[:32]!r}")
    return limit


async def run_events(request: Request) -> Response:
    """The run's events: an SSE stream (resumable), or with `Accept: application/json` a page
    `{"events": [...], "next": "<last id in the page or null>", "gap": bool, "run": {...}}`
    where `gap` says the log was trimmed past the cursor (events before `events[0]` are gone)."""
    run_id = check_run_id(request.path_params["run_id"])
    principal = authorize(request, Need.READ, run_id)
    after = request_cursor(request)
    if not _wants_json(request):
        return await stream_run(request, run_id, after=after)
    limit = _page_limit(request)
    ctx = gateway(request)
    cursor = after or (0, 0)
    record = _shown(await ctx.store.get(run_id), principal)
    page, info = await ctx.bus.read_page(run_id, cursor, limit, ctx.settings.page_max_bytes)
    nxt = b'"' + format_id(page[-1][0]).encode() + b'"' if page else b"null"
    # The stored events are already JSON: the page is spliced, never decoded and re-encoded.
    body = b"".join(
        (
            b'{"events":[',
            b",".join(raw for _, raw in page),
            b'],"next":',
            nxt,
            b',"gap":',
            b"true" if info.has_gap_after(cursor) else b"false",
            b',"run":',
            record.model_dump_json().encode(),
            b"}",
        )
    )
    return Response(body, media_type="application/json")


def _shown(record: RunRecord, principal: Principal) -> RunRecord:
    """The record as `principal` may see it: a share token's holder is not told who started
    the run (an address, a token's fingerprint)."""
    return record.model_copy(update={"owner": ""}) if principal.role == "share" else record


async def run_record(request: Request) -> Response:
    """The run record plus `viewers`: live viewer leases of this run on every gateway (the
    registry in Redis, `presence.py`)."""
    ctx = gateway(request)
    run_id = check_run_id(request.path_params["run_id"])
    principal = authorize(request, Need.READ, run_id)
    record = _shown(await ctx.store.get(run_id), principal)
    return _JSON({**run_view(record), "viewers": await ctx.presence.count(run_id)})


async def runs_events(request: Request) -> Response:
    """Lifecycle summaries of all runs: one `snapshot` of the most recent, then `run` events."""
    principal = authorize(request, Need.READ)
    ctx = gateway(request)
    lease = await ctx.presence.acquire(principal.client)
    return event_stream(ctx, [LifecycleCursor(ctx)], lease=lease, ends_when_done=False)


async def healthz(request: Request) -> Response:
    return _JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when Redis answers PING and the pub/sub connection is up."""
    ctx = gateway(request)
    try:
        async with asyncio.timeout(2.0):
            redis_ok = bool(await ctx.redis.ping())
    except (RedisError, OSError, TimeoutError):
        redis_ok = False
    checks = {"redis": redis_ok, "pubsub": ctx.hub.connected}
    if all(checks.values()):
        return _JSON({"status": "ready", **checks})
    return error_response(503, "not_ready", "not ready", details=checks)


async def metrics(request: Request) -> Response:
    authorize(request, Need.READ)
    return Response(render(gateway(request).registry), media_type=CONTENT_TYPE)


# Served by the streaming lane (`lane.py`) ahead of the middleware, and by the app after it.
lane: list[Route] = [
    Route("/api/streams", streams, methods=["GET"]),
    Route("/api/runs/events", runs_events, methods=["GET"]),
    Route("/api/runs/{run_id}/events", run_events, methods=["GET"]),
]

routes: list[BaseRoute] = [
    *lane,
    Route("/api/runs/{run_id}", run_record, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
