"""Streaming runs to viewers: replay from the log, then live, never a gap or a duplicate.

`stream_run` is the one primitive every SSE route of a run uses (the native
`/api/runs/{id}/events` and the seeds' compatibility streams, which pass their own `render`).

The protocol, per cursor: subscribe first (the hub buffers live events), replay the log after
the cursor in pages, then drain the buffer dropping ids the replay already sent. A cursor whose
viewer overflowed its buffer, or whose channel was resubscribed after a Redis outage, is
*lagging* and goes through the same replay from its own position. A cursor older than the trimmed
log gets an explicit `resync` event (run record + state snapshot) and continues from the oldest
entry left. Log reads that fail because Redis is unreachable are retried until it is back.

The response is a small ASGI class: it sends the head, hands the connection to the hub as a
`Viewer` (see `viewer.py` for the fast path that writes straight to the transport) and waits for
the client to go away or the stream to end. A viewer that accepts no bytes within
`send_timeout_s` is aborted; a client disconnect releases everything the gateway held for it at
once, its viewer lease included.

Every stream holds a viewer lease (`presence.py`), acquired by its route before the response
starts, so a client over `TIDINGS_VIEWERS_PER_CLIENT` gets a JSON 429 and no stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tidings.errors import NotFound
from tidings.keys import check_run_id
from tidings.streamid import StreamId, parse_cursor

from .access import principal_of
from .context import Gateway, gateway
from .cursors import RunCursor
from .fanout import Hub
from .fastpath import stream_transport
from .messages import Render
from .presence import Lease
from .viewer import Cursor, Viewer

__all__ = [
    "SSE_HEADERS",
    "EventStreamResponse",
    "event_stream",
    "request_cursor",
    "stream_run",
]

log = logging.getLogger(__name__)

SSE_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}


class EventStreamResponse(Response):
    """`text/event-stream` following `cursors` until the viewer is done or gone."""

    media_type = "text/event-stream"

    def __init__(
        self,
        hub: Hub,
        cursors: list[Cursor],
        *,
        preamble: bytes = b"",
        ends_when_done: bool = True,
        headers: Mapping[str, str] | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self._hub = hub
        self._lease = lease
        self._cursors = cursors
        self._preamble = preamble
        self._ends_when_done = ends_when_done
        self.init_headers({**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(scope, receive, send)
        finally:
            if self._lease is not None:
                self._lease.release()

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self._hub
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        try:
            async with asyncio.timeout(hub.limits.send_timeout):
                await send(start)
        except TimeoutError:
            hub.stats.slow_disconnects += 1
            return
        if scope.get("method") == "HEAD":  # headers only: a live stream would never end
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        viewer = Viewer(
            hub,
            send,
            stream_transport(scope),
            self._cursors,
            preamble=self._preamble,
            ends_when_done=self._ends_when_done,
        )
        with hub.attach(viewer):
            await viewer.serve()  # the first catch-up, in this task: no task of its own
            await viewer.wait(receive)


def event_stream(
    ctx: Gateway,
    cursors: list[Cursor],
    *,
    lease: Lease,
    preamble: bytes = b"",
    ends_when_done: bool = True,
) -> EventStreamResponse:
    """An event stream of `cursors`, starting with `preamble` and the `retry:` hint; `lease` is
    released when the response is over."""
    retry = b"retry: %d\n\n" % ctx.settings.sse_retry_ms
    return EventStreamResponse(
        ctx.hub, cursors, preamble=preamble + retry, ends_when_done=ends_when_done, lease=lease
    )


def request_cursor(request: Request) -> StreamId | None:
    """The viewer's cursor: the `Last-Event-ID` header, else `?after=`; None when neither.

    The header wins: an EventSource opened on `…?after=X` reconnects to the same URL with a newer
    `Last-Event-ID`, and resuming from X again would repeat events.
    """
    raw = request.headers.get("last-event-id") or request.query_params.get("after")
    return parse_cursor(raw) if raw else None


async def stream_run(
    request: Request,
    run_id: str,
    *,
    after: StreamId | None = None,
    render: Render | None = None,
    preamble: bytes = b"",
    lease: Lease | None = None,
) -> Response:
    """An SSE response following one run until its terminal event.

    `after`: the cursor to resume from; None means the request's `Last-Event-ID` header if it has
    one, else the beginning of the run. `render` turns one published event's JSON into SSE bytes
    (None skips the event); default: the native `id:`/`event:`/`data:` encoding shared by all
    viewers. `preamble` is written first (before the `retry:` hint). A cursor that fell off the
    trimmed log gets the native `event: resync` message whatever the render. `lease`: the
    viewer lease the caller acquired already (released here if the stream cannot start); None
    acquires one for the authorized caller. Raises NotFound (404) for an unknown run, BadCursor
    (400) for a malformed `Last-Event-ID` and TooManyViewers (429).
    """
    ctx = gateway(request)
    try:
        check_run_id(run_id)
        if after is None:
            header = request.headers.get("last-event-id")
            after = parse_cursor(header) if header else None
        if not await ctx.store.exists(run_id):
            raise NotFound(f"no run {run_id!r}")
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    if lease is None:
        lease = await ctx.presence.acquire(principal_of(request).client, [run_id])
    cursor = RunCursor(ctx, run_id, after or (0, 0), render)
    return event_stream(ctx, [cursor], lease=lease, preamble=preamble)
