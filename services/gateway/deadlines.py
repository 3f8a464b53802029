"""Deadlines for slow clients, at the HTTP protocol: the request head, then the request body.

uvicorn bounds a kept-alive connection's idle time between requests (`timeout_keep_alive`), and
nothing else: a client may open a connection and send nothing, or send a request head a byte a
minute, or stop halfway through a body, and hold a connection and its memory for ever
("slowloris"). `GuardedProtocol` is the gateway's uvicorn protocol (`fastpath.HttpToolsProtocol`)
with two deadlines, one timer per connection at a time:

- **Head** (`TIDINGS_HEADER_TIMEOUT_S`): from the connection's start, or from a later request's
  first byte (the idle time before it is keep-alive's), until its head is complete. A connection
  that sent nothing is closed; one that sent part of a request gets a 408 first.
- **Body** (`TIDINGS_BODY_TIMEOUT_S`): from the end of the head, a body that brings no bytes for
  this long is cut off: a 408 if no response has started, else the connection is just closed.
  Time when the gateway itself is not reading does not count: uvicorn's flow control pausing a
  body the app has not taken yet, a pipelined request waiting its turn, a client waiting for
  `100 Continue`.

The overrides are of the asyncio protocol's and the httptools parser's public callbacks
(`connection_made`/`connection_lost`, `on_message_begin`, `on_headers_complete`, `on_body`,
`on_message_complete`); the state read is uvicorn's per-connection state (`transport`, `flow`,
`cycle`, `loop`, `server_state`). `tests/test_gateway_slow_clients.py` checks those assumptions
against the installed uvicorn and the behaviour end to end. Only the timer is added on the
connection's path: nothing per byte, a clock read per body chunk.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from shared import codec
from shared.settings import Settings

from .errors import error_body
from .fastpath import HttpToolsProtocol

__all__ = ["GuardedProtocol", "guarded_protocol"]

_Phase = Literal["idle", "head", "body"]


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (with the fast path) plus head and body deadlines."""

    header_timeout: float = Settings.model_fields["header_timeout_s"].default
    body_timeout: float = Settings.model_fields["body_timeout_s"].default

    _phase: _Phase = "idle"
    _begun = False  # a byte of the current request has arrived
    _timer: asyncio.TimerHandle | None = None
    _body_at = 0.0  # loop time of the last body bytes (or of the head's end)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._begun = False
        self._await("head", self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._phase = "idle"
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        if self._phase == "idle":  # a later request on a kept-alive connection
            self._await("head", self.header_timeout)

    def on_headers_complete(self) -> None:
        self._cancel()
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is previous:  # handed over to another protocol (an upgrade)
            self._phase = "idle"
            return
        self._begun = False
        self._body_at = self.loop.time()
        self._await("body", self.body_timeout)

    def on_body(self, body: bytes) -> None:
        self._body_at = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel()
        self._phase = "idle"

    def _await(self, phase: _Phase, delay: float) -> None:
        self._cancel()
        self._phase = phase
        self._timer = self.loop.call_later(delay, self._expired)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # Not the client's doing: uvicorn stopped reading (a body the app has not taken, a
            # pipelined request queued). The clock starts again when reading does.
            self._body_at = self.loop.time()
            head = self._phase == "head"
            self._await(self._phase, self.header_timeout if head else self.body_timeout)
            return
        if self._phase == "head":
            # A 408 only where it cannot land inside an earlier request's response.
            earlier = self.cycle
            self._give_up(respond=self._begun and (earlier is None or earlier.response_complete))
        elif self._phase == "body":
            cycle = self.cycle
            if cycle.waiting_for_100_continue:  # the client waits for us
                self._body_at = self.loop.time()
                self._await("body", self.body_timeout)
                return
            left = self._body_at + self.body_timeout - self.loop.time()
            if left > 0:
                self._await("body", left)
                return
            self._give_up(respond=not cycle.response_started)

    def _give_up(self, *, respond: bool) -> None:
        """Close the connection, after a 408 when `respond`."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # As when the client disconnects: the app's `receive` says so, its `send` is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        if respond:
            self.transport.write(_response_408(self.server_state.default_headers))
        self._phase = "idle"
        self.transport.close()


def _response_408(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = codec.dumps(
        error_body("request_timeout", "the request was not received in time; closing")
    )
    head = [b"HTTP/1.1 408 Request Timeout\r\n"]
    head += [name + b": " + value + b"\r\n" for name, value in default_headers]
    head += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


def guarded_protocol(settings: Settings) -> type[GuardedProtocol]:
    """The protocol class uvicorn should run, with the deadlines of `settings`."""
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {"header_timeout": settings.header_timeout_s, "body_timeout": settings.body_timeout_s},
    )
