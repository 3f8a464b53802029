"""Streaming a run's events to one viewer: replay from the log, then live, never a gap or a dup.

`stream_run` is the one primitive every SSE route of a run uses (the native
`/api/runs/{id}/events` and the seeds' compatibility streams, which pass their own `render`).

The protocol, per viewer: subscribe first (the hub buffers live events), replay the log after the
viewer's cursor in pages, then drain the buffer dropping ids the replay already sent. A viewer
whose buffer overflowed, or whose channel was resubscribed after a Redis outage, is *lagging* and
goes through the same replay from its own cursor. A cursor older than the trimmed log gets an
explicit `resync` event (run record + state snapshot) and continues from the oldest entry left.
Log reads that fail because Redis is unreachable are retried until it is back.

The response is a small ASGI class rather than `StreamingResponse` so that every `send` is bounded
by `send_timeout_s` (a viewer that accepts no bytes that long is dropped) and a client disconnect,
seen on `receive`, stops the producer at once. ASGI has no "abort": a dropped viewer's response is
left unfinished, which makes uvicorn close the connection (and log "ASGI callable returned without
completing response"). Everything the gateway held for that viewer (subscription, tasks, buffer)
is released at once; only the bytes already in the socket buffers wait for the peer or for TCP to
give up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from functools import partial
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from shared import codec, sse
from shared.bus import LogInfo
from shared.errors import NotFound
from shared.events import TERMINAL_STATUSES, TERMINAL_TYPES
from shared.keys import check_run_id
from shared.streamid import StreamId, just_before, parse_cursor

from .context import Gateway, gateway
from .fanout import REDIS_DOWN, Subscription
from .messages import Message, Render, describe, frame
from .metrics import Stats

__all__ = [
    "HEARTBEAT",
    "EventStreamResponse",
    "Sink",
    "SlowViewer",
    "Stop",
    "event_stream",
    "format_id",
    "request_cursor",
    "retry_redis",
    "stream_run",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

HEARTBEAT = b": ping\n\n"
_TERMINAL = frozenset(t.value.encode() for t in TERMINAL_TYPES)
_TERMINAL_STATUS = frozenset(s.value.encode() for s in TERMINAL_STATUSES)
SSE_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}


class SlowViewer(Exception):
    """The viewer accepted no bytes within the send timeout."""


class Stop(Exception):
    """The viewer's subscription was closed (gateway shutting down)."""


class Sink:
    """The body side of an event stream: every write is bounded by the send timeout."""

    __slots__ = ("_send", "_timeout", "heartbeat", "last_write", "stats")

    def __init__(self, send: Send, timeout: float, stats: Stats, heartbeat: float) -> None:
        self._send = send
        self._timeout = timeout
        self.stats = stats
        self.heartbeat = heartbeat
        self.last_write = time.monotonic()

    async def _bounded(self, message: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._send(message)
        except TimeoutError:
            raise SlowViewer(f"no bytes accepted for {self._timeout}s") from None
        self.last_write = time.monotonic()

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._bounded({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes, messages: int = 0) -> None:
        await self._bounded({"type": "http.response.body", "body": data, "more_body": True})
        self.stats.sse_bytes += len(data)
        self.stats.sse_messages += messages

    async def finish(self) -> None:
        await self._bounded({"type": "http.response.body", "body": b"", "more_body": False})


Body = Callable[[Sink], Coroutine[Any, Any, None]]


class EventStreamResponse(Response):
    """`text/event-stream` whose body is produced by `body(sink)`; ends when it returns."""

    media_type = "text/event-stream"

    def __init__(
        self,
        body: Body,
        *,
        send_timeout: float,
        heartbeat: float,
        stats: Stats,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self._body = body
        self._send_timeout = send_timeout
        self._heartbeat = heartbeat
        self._stats = stats
        self.init_headers({**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sink = Sink(send, self._send_timeout, self._stats, self._heartbeat)
        try:
            await sink.start(self.status_code, self.raw_headers)
        except SlowViewer:
            self._stats.slow_disconnects += 1
            return
        producer = asyncio.create_task(self._body(sink))
        watcher = asyncio.create_task(_until_disconnect(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            producer.cancel()
            watcher.cancel()
            await asyncio.wait({producer, watcher})
        if producer.cancelled():  # the client went away first
            return
        exc = producer.exception()
        if isinstance(exc, SlowViewer):
            # Returning without finishing the response makes the server close the connection.
            self._stats.slow_disconnects += 1
            log.info("disconnecting a viewer of %s: %s", scope.get("path"), exc)
            return
        if exc is not None:
            raise exc
        try:
            await sink.finish()
        except SlowViewer:
            self._stats.slow_disconnects += 1


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


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
) -> Response:
    """An SSE response following one run until its terminal event.

    `after`: the cursor to resume from; None means the request's `Last-Event-ID` header if it has
    one, else the beginning of the run. `render` turns one published event's JSON into SSE bytes
    (None skips the event); default: the native `id:`/`event:`/`data:` encoding shared by all
    viewers. `preamble` is written first (before the `retry:` hint). A cursor that fell off the
    trimmed log gets the native `event: resync` message whatever the render. Raises NotFound (404)
    for an unknown run and BadCursor (400) for a malformed `Last-Event-ID`.
    """
    ctx = gateway(request)
    check_run_id(run_id)
    if after is None:
        header = request.headers.get("last-event-id")
        after = parse_cursor(header) if header else None
    if not await ctx.store.exists(run_id):
        raise NotFound(f"no run {run_id!r}")
    follower = _RunFollower(ctx, run_id, after or (0, 0), render)
    return event_stream(ctx, partial(follower.follow, preamble))


def event_stream(ctx: Gateway, body: Body) -> EventStreamResponse:
    """An `EventStreamResponse` configured from the gateway's settings."""
    settings = ctx.settings
    return EventStreamResponse(
        body,
        send_timeout=settings.send_timeout_s,
        heartbeat=settings.sse_heartbeat_s,
        stats=ctx.hub.stats,
    )


class _RunFollower:
    def __init__(self, ctx: Gateway, run_id: str, cursor: StreamId, render: Render | None) -> None:
        self.ctx = ctx
        self.run_id = run_id
        self.last = cursor
        self.render = render
        self.stats = ctx.hub.stats

    async def follow(self, preamble: bytes, sink: Sink) -> None:
        settings = self.ctx.settings
        await sink.write(preamble + b"retry: %d\n\n" % settings.sse_retry_ms)
        with self.ctx.hub.subscribe(self.ctx.keys.run_channel(self.run_id)) as sub:
            try:
                await self._loop(sub, sink)
            except Stop:
                return

    async def _loop(self, sub: Subscription, sink: Sink) -> None:
        while not sub.closed:
            if sub.lagging and sub.ready:
                sub.restart()
                if await self._catch_up(sub, sink):
                    return
            elif items := sub.take():
                if await self._live(items, sink):
                    return
            elif not await sub.wait(sink.heartbeat):
                await sink.write(HEARTBEAT)

    async def _live(self, items: list[Message], sink: Sink) -> bool:
        last, render, parts, done = self.last, self.render, [], False
        for msg in items:
            if msg.id is None or msg.id <= last:
                continue  # the replay already sent it
            last = msg.id
            data = msg.sse if render is None else msg.rendered(render)
            if data:
                parts.append(data)
            if msg.terminal:
                done = True
                break
        self.last = last
        if parts:
            await sink.write(b"".join(parts), len(parts))
        return done

    async def _catch_up(self, sub: Subscription, sink: Sink) -> bool:
        """Replay the log after the cursor; True when the run's stream is over."""
        ctx, run_id, page_size = self.ctx, self.run_id, self.ctx.settings.replay_page
        self.stats.catchups += 1
        while True:
            # Each page comes with the log's shape from the same snapshot: a trim that overtakes
            # the cursor, before or between pages, is always seen and answered with a resync.
            page, info = await retry_redis(
                sub, sink, ctx.bus.read_page, run_id, self.last, page_size
            )
            if info.has_gap_after(self.last):
                await self._resync(sub, sink, info)
                continue
            parts, done = [], False
            for sid, raw in page:
                eid, etype = describe(raw)
                self.last = sid
                data = frame(eid, etype, raw) if self.render is None else self.render(raw)
                if data:
                    parts.append(data)
                if etype in _TERMINAL:
                    done = True
                    break
            self.stats.replayed_events += len(parts)
            if parts:
                await sink.write(b"".join(parts), len(parts))
            if done:
                return True
            if len(page) < page_size:
                break
        # The log has nothing after the cursor. A run that already ended says nothing more
        # (e.g. a viewer resuming from the terminal event's id): end the stream now.
        status, last_id = await retry_redis(sub, sink, self._run_status)
        if status is None:
            return True
        return status in _TERMINAL_STATUS and (not last_id or parse_cursor(last_id) <= self.last)

    async def _run_status(self) -> list[bytes | None]:
        key = self.ctx.keys.run(self.run_id)
        fields: list[bytes | None] = await self.ctx.redis.hmget(key, ["status", "last_event_id"])  # type: ignore[misc]
        return fields

    async def _resync(self, sub: Subscription, sink: Sink, info: LogInfo) -> None:
        assert info.first_id is not None
        store = self.ctx.store
        record = await retry_redis(sub, sink, store.get, self.run_id)
        state = await retry_redis(sub, sink, store.state, self.run_id)
        first = format_id(info.first_id)
        body = codec.dumps({"run": record.model_dump(mode="json"), "state": state, "from": first})
        await sink.write(sse.encode(body, event="resync"), 1)
        self.stats.resyncs += 1
        self.last = just_before(info.first_id)


async def retry_redis(
    sub: Subscription, sink: Sink, fn: Callable[..., Awaitable[T]], *args: Any
) -> T:
    """`await fn(*args)`, retried with backoff while Redis is unreachable (heartbeats go on).

    Raises `Stop` when the viewer's subscription is closed meanwhile.
    """
    delay = 0.05
    while True:
        try:
            async with sub.reads:
                return await fn(*args)
        except REDIS_DOWN as exc:
            sink.stats.redis_retries += 1
            log.debug("redis unreachable (%s); retrying in %.2fs", exc, delay)
        if sub.closed:
            raise Stop
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
        if time.monotonic() - sink.last_write > sink.heartbeat:
            await sink.write(HEARTBEAT)
