"""One event as viewers receive it: parsed once, encoded to SSE bytes once, shared by all.

The published JSON is `{"id":"…","seq":…,"progress":…,"run_id":"…","type":"…",…}`, so the id and
type are found without a full decode; anything unexpected falls back to `json`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from tidings import sse
from tidings.errors import BadCursor
from tidings.events import TERMINAL_TYPES
from tidings.streamid import StreamId, parse_cursor

__all__ = ["Message", "Render", "chunk", "describe", "event_message", "frame", "summary_message"]

log = logging.getLogger(__name__)

Render = Callable[[bytes], bytes | None]

# The published JSON is `{"id":"…","seq":…,"progress":…,"run_id":"…","type":"…",…}`: the first
# `"type"` key is the event's own (run ids cannot contain quotes), so a regex finds it without a
# full decode. Anything unexpected falls back to json.
_TYPE = re.compile(rb'"type":"([a-z_]{1,40})"')
_ID_PREFIX = b'{"id":"'
# The hot path's one match: stream id parts and the type, as the publish script writes them.
_HEAD = re.compile(rb'\{"id":"(([0-9]{1,20})-([0-9]{1,20}))".*?"type":"([a-z_]{1,40})"')
_TERMINAL = frozenset(t.value.encode() for t in TERMINAL_TYPES)
_MAX_RENDER_CACHE = 8


def describe(raw: bytes) -> tuple[bytes, bytes]:
    """(id, type) of one published event JSON, both as bytes."""
    match = _TYPE.search(raw)
    if raw.startswith(_ID_PREFIX) and match:
        end = raw.find(b'"', len(_ID_PREFIX))
        return raw[len(_ID_PREFIX) : end], match.group(1)
    obj: Any = json.loads(raw)
    etype = str(obj.get("type", "message"))
    if not re.fullmatch(r"[a-z_]{1,40}", etype):
        etype = "message"
    return str(obj.get("id", "")).encode(), etype.encode()


def frame(eid: bytes, etype: bytes, raw: bytes) -> bytes:
    """The native SSE encoding of one event: `id:`, `event:`, `data:`."""
    if b"\n" in raw or b"\r" in raw:  # never from a JSON encoder, but stay correct
        return sse.encode(raw, event=etype.decode(), id=eid.decode())
    return b"id: " + eid + b"\nevent: " + etype + b"\ndata: " + raw + b"\n\n"


def chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk (the framing of a `transfer-encoding: chunked` body)."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


class Message:
    """One event as every viewer receives it: parsed and encoded once.

    `sse` is the native SSE encoding; `chunk` is the same bytes framed as one HTTP chunk, what
    the hub writes straight to every live viewer's transport (see `viewer.py`).
    """

    __slots__ = ("_cache", "chunk", "id", "raw", "sse", "terminal")

    def __init__(self, id: StreamId | None, raw: bytes, sse: bytes, terminal: bool) -> None:
        self.id = id
        self.raw = raw
        self.sse = sse
        self.chunk = chunk(sse)
        self.terminal = terminal
        self._cache: dict[Render, tuple[bytes | None, bytes]] | None = None

    def _render(self, render: Render) -> tuple[bytes | None, bytes]:
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        try:
            return cache[render]
        except KeyError:
            out = render(self.raw)
            both = (out, chunk(out) if out else b"")
            if len(cache) < _MAX_RENDER_CACHE:
                cache[render] = both
            return both

    def rendered(self, render: Render) -> bytes | None:
        """`render(raw)`, computed once per distinct render function (a few are cached)."""
        return self._render(render)[0]

    def rendered_chunk(self, render: Render) -> bytes:
        """`rendered(render)` framed as one HTTP chunk; empty when the render skips the event."""
        return self._render(render)[1]


def event_message(data: bytes) -> Message | None:
    head = _HEAD.match(data)
    if head is not None and b"\n" not in data and b"\r" not in data:  # else `frame` splits it
        eid, etype = head.group(1, 4)
        sid = (int(head.group(2)), int(head.group(3)))
        sse_bytes = b"id: " + eid + b"\nevent: " + etype + b"\ndata: " + data + b"\n\n"
        return Message(sid, data, sse_bytes, etype in _TERMINAL)
    try:
        eid, etype = describe(data)
        sid = parse_cursor(eid)
    except (ValueError, BadCursor, AttributeError):
        log.warning("ignoring a malformed event on a run channel: %.200r", data)
        return None
    return Message(sid, data, frame(eid, etype, data), etype in _TERMINAL)


def summary_message(data: bytes) -> Message:
    if b"\n" in data or b"\r" in data:
        return Message(None, data, sse.encode(data, event="run"), False)
    return Message(None, data, b"event: run\ndata: " + data + b"\n\n", False)
