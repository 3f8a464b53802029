"""Deadlines for slow clients, at the HTTP protocol: the request head, then the request body.

uvicorn bounds a kept-alive connection's idle time between requests (`timeout_keep_alive`), and
nothing else: a client may open a connection and send nothing, or send a request head a byte a
minute, or stop halfway through a body, and hold a connection and its memory for ever
("slowloris"). `GuardedProtocol` is the gateway's uvicorn protocol (`fastpath.HttpToolsProtocol`)
with two deadlines, one per connection at a time:

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
against the installed uvicorn and the behaviour end to end. On the connection's path only a dict
entry is added (swept every tick, at most 0.5 s, so a deadline may be that much late): nothing
per byte, a clock read per body chunk.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from tidings import codec
from tidings.settings import Settings

from .errors import error_body
from .fastpath import HttpToolsProtocol

__all__ = ["GuardedProtocol", "guarded_protocol"]

_Phase = Literal["idle", "head", "body", "closing"]
# After an answer that ends the connection, what the client still sends is read and dropped for
# up to this long: closing a socket with unread bytes makes the kernel reset the connection, and
# a client still writing would then never read the answer.
_LINGER_S = 2.0


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (with the fast path) plus head and body deadlines."""

    header_timeout: float = Settings.model_fields["header_timeout_s"].default
    body_timeout: float = Settings.model_fields["body_timeout_s"].default
    max_head_bytes: int = Settings.model_fields["max_header_bytes"].default

    # Slots, not instance attributes: uvicorn's protocol already has so many that three more
    # would grow every connection's attribute dict to its next size (1.5 KB a connection).
    __slots__ = ("_begun", "_body_at", "_head_bytes", "_head_parsed", "_phase")
    _phase: _Phase
    _begun: bool  # a byte of the current request has arrived
    _body_at: float  # loop time of the last body bytes (or of the head's end)
    _head_bytes: int  # bytes received since the current request head began
    _head_parsed: int  # bytes of request line and headers the parser has handed over

    # The connections with a deadline, and when it falls (loop time). One sweep per tick looks
    # them over, rather than a timer per connection: a cancelled timer stays in the loop's heap
    # until it would have fired, which in a connection storm is most of a stream's memory.
    _deadlines: dict[GuardedProtocol, float] = {}
    _sweep: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._begun = False
        self._body_at = 0.0
        self._head_bytes = 0
        self._head_parsed = 0
        self._await("head", self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._phase = "idle"
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._head_parsed = 0
        super().on_message_begin()
        self._begun = True
        if self._phase == "idle":  # a later request on a kept-alive connection
            self._await("head", self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._phase == "closing":
            return  # answered already: the rest is dropped (see `_LINGER_S`)
        # Two counts bound a head. The bytes received refuse a head still incomplete after the
        # limit, before the parser buffers more of it (a read that completes a head carries its
        # body's first bytes too, so it is not judged by its size: a head completed meanwhile
        # set this count back to 0). What the parser hands over (`on_url`, `on_header`) refuses
        # a big head that came whole in one read.
        counting = self._phase != "body"
        if counting:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            counting
            and not self._answered()
            and self._head_bytes > self.max_head_bytes
            and not self.transport.is_closing()
        ):
            self._give_up(respond=True, answer=_HEAD_TOO_LARGE)

    def _answered(self) -> bool:
        """Has an answer that ends the connection gone out (the phase is read anew)?"""
        return self._phase == "closing"

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_parsed += size
        if self._head_parsed > self.max_head_bytes:
            # The parser turns this into an HttpParserError, which uvicorn answers with
            # `send_400_response`: that answers 431 instead (below).
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        if self._head_parsed > self.max_head_bytes:
            self._give_up(respond=True, answer=_HEAD_TOO_LARGE)
            return
        super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self._head_bytes = 0
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
        self._head_bytes = 0

    def _await(self, phase: _Phase, delay: float) -> None:
        self._phase = phase
        cls = type(self)
        cls._deadlines[self] = self.loop.time() + delay
        if cls._sweep is None:
            cls._sweep = self.loop.call_later(cls._tick(), cls._sweep_due, self.loop)

    def _cancel(self) -> None:
        type(self)._deadlines.pop(self, None)

    @classmethod
    def _tick(cls) -> float:
        return min(0.5, cls.header_timeout / 4, cls.body_timeout / 4)

    @classmethod
    def _sweep_due(cls, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        due = [conn for conn, deadline in cls._deadlines.items() if deadline <= now]
        for conn in due:
            del cls._deadlines[conn]
            conn._expired()
        cls._sweep = loop.call_later(cls._tick(), cls._sweep_due, loop) if cls._deadlines else None

    def _expired(self) -> None:
        if self.transport.is_closing():
            return
        if self._phase == "closing":
            self.transport.close()
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

    def _give_up(self, *, respond: bool, answer: tuple[bytes, str, str] | None = None) -> None:
        """Close the connection, after `answer` (a 408 by default) when `respond`."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # As when the client disconnects: the app's `receive` says so, its `send` is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        if respond and self.transport.can_write_eof():
            # Answer, end our side, and read what the client still sends until it closes its
            # side or the linger time is over: it reads the answer rather than a reset.
            self.transport.write(_answer(self.server_state.default_headers, answer or _TIMEOUT))
            self.transport.write_eof()
            self.flow.resume_reading()
            self._await("closing", _LINGER_S)
            return
        if respond:
            self.transport.write(_answer(self.server_state.default_headers, answer or _TIMEOUT))
        self._phase = "idle"
        self.transport.close()


class _HeadTooLarge(Exception):
    """Raised inside the parser's callbacks when a request head passes its limit."""


_TIMEOUT = (
    b"408 Request Timeout",
    "request_timeout",
    "the request was not received in time; closing",
)
_HEAD_TOO_LARGE = (
    b"431 Request Header Fields Too Large",
    "headers_too_large",
    "the request line and headers are too large (TIDINGS_MAX_HEADER_BYTES); closing",
)


def _answer(default_headers: list[tuple[bytes, bytes]], answer: tuple[bytes, str, str]) -> bytes:
    status, code, message = answer
    body = codec.dumps(error_body(code, message))
    head = [b"HTTP/1.1 " + status + b"\r\n"]
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
        {
            "header_timeout": settings.header_timeout_s,
            "body_timeout": settings.body_timeout_s,
            "max_head_bytes": settings.max_header_bytes,
            "_deadlines": {},
            "_sweep": None,
        },
    )
