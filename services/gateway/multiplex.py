"""`GET /api/streams`: one SSE response carrying several runs and, optionally, the run-list feed.

    GET /api/streams?run=ID[/CURSOR]&run=ID2[/CURSOR]&feed=runs

This is what lets a browser hold one connection for all its tabs. Decisions worth knowing:

- A run event's SSE `id` is `<run id>/<stream id>`, the same bytes for every multiplexed viewer
  of that run, so the hub frames it once per event (cached on the message) and writes it straight
  to every quiet viewer, as for single-run streams.
- Cursors travel in the URL: `run=ID/CURSOR`, in the same form as the ids. A client that changes
  its set of runs reconnects with the new set and the last id it has of each run; with several
  gateway processes behind one port, the reconnect may land anywhere, and nothing is kept on the
  server between connections. A browser's automatic reconnect sends `Last-Event-ID`, which names
  one run: that run resumes from it, the others from the URL (older, so a client may see events
  again, never miss one; events carry `seq` to drop repeats).
- Each run behaves as on its own stream: replay from its cursor, then live; `resync` (its data
  names the run) when the cursor fell off the trimmed log; nothing after its terminal event.
  A run that does not exist gets one `event: missing` with `{"run_id"}`.
- The feed (`feed=runs`) is the same `snapshot` + `run` events as `/api/runs/events`.
- The stream ends once every run has ended, unless it carries the feed.
- The stream counts as one viewer of each run it carries, and holds one viewer lease
  (`presence.py`): one of its client's `TIDINGS_VIEWERS_PER_CLIENT`.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from tidings import codec, sse
from tidings.keys import check_run_id
from tidings.streamid import StreamId, parse_cursor

from .access import Need, authenticate, permit
from .context import gateway
from .cursors import LifecycleCursor, RunCursor
from .errors import BadRequest
from .messages import describe
from .streaming import event_stream
from .viewer import Cursor

__all__ = ["mux_render", "parse_runs", "streams"]

_RUN_ID = re.compile(rb'"run_id":"([A-Za-z0-9_-]{1,64})"')


def mux_render(raw: bytes) -> bytes | None:
    """A run event as a multiplexed stream frames it: `id: <run id>/<stream id>`."""
    eid, etype = describe(raw)
    match = _RUN_ID.search(raw)
    if match is None:
        return None
    data = raw.replace(b"\n", b"\\n")  # never in compact JSON; keep one data line regardless
    return (
        b"id: " + match.group(1) + b"/" + eid + b"\nevent: " + etype + b"\ndata: " + data + b"\n\n"
    )


def _parse_one(value: str) -> tuple[str, StreamId]:
    run_id, _, cursor = value.partition("/")
    try:
        check_run_id(run_id)
    except Exception:
        raise BadRequest(f"not a run id: {run_id[:80]!r}") from None
    return run_id, parse_cursor(cursor) if cursor else (0, 0)


def parse_runs(request: Request, limit: int) -> dict[str, StreamId]:
    """The runs asked for and where each resumes (the later of the URL's and Last-Event-ID's)."""
    runs: dict[str, StreamId] = {}
    values = request.query_params.getlist("run")
    if len(values) > limit:
        raise BadRequest(f"at most {limit} runs per stream (TIDINGS_STREAM_MAX_RUNS)")
    for value in values:
        run_id, cursor = _parse_one(value)
        runs[run_id] = max(cursor, runs.get(run_id, (0, 0)))
    header = request.headers.get("last-event-id")
    if header and "/" in header:
        run_id, cursor = _parse_one(header)
        if run_id in runs:
            runs[run_id] = max(cursor, runs[run_id])
    return runs


async def streams(request: Request) -> Response:
    """Several runs' events and optionally the lifecycle feed, in one SSE response."""
    ctx = gateway(request)
    principal = authenticate(request)  # who first: a caller without credentials learns nothing
    runs = parse_runs(request, ctx.settings.stream_max_runs)
    feeds = request.query_params.getlist("feed")
    if any(f != "runs" for f in feeds):
        raise BadRequest("the only feed is `runs`")
    if not runs and not feeds:
        raise BadRequest("name at least one `run=ID[/CURSOR]` or `feed=runs`")
    if feeds:
        permit(principal, Need.READ)
    for run_id in runs:
        permit(principal, Need.READ, run_id)
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for run_id in runs:
            pipe.exists(ctx.keys.run(run_id))
        found: list[int] = await pipe.execute()
    cursors: list[Cursor] = [LifecycleCursor(ctx)] if feeds else []
    runs_followed: list[RunCursor] = []
    missing = b""
    for (run_id, cursor), exists in zip(runs.items(), found, strict=True):
        if exists:
            runs_followed.append(RunCursor(ctx, run_id, cursor, mux_render))
        else:
            missing += sse.encode(codec.dumps({"run_id": run_id}), event="missing")
    cursors += runs_followed
    lease = await ctx.presence.acquire(principal.client, [c.run_id for c in runs_followed])
    return event_stream(ctx, cursors, lease=lease, preamble=missing, ends_when_done=not feeds)
