"""Redis stream IDs as cursors: parse, compare, validate, and read after.

A cursor is `<ms>-<seq>` (or `<ms>`, meaning `<ms>-0`), each part an unsigned 64-bit integer as
Redis allows; anything else, at any length and in any script, is `BadCursor` (a 400), checked
before a stream is opened. The greatest ID is a valid cursor after which nothing can follow:
Redis refuses the exclusive range `(<max>` instead of returning nothing, so `xrange_after` gives
an empty interval for it.
"""

from __future__ import annotations

import re

from .errors import BadCursor

__all__ = ["MAX_ID", "StreamId", "just_before", "parse_cursor", "xrange_after"]

_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_MAX_PART = 2**64 - 1  # Redis stream ID parts are unsigned 64-bit

StreamId = tuple[int, int]

MAX_ID: StreamId = (_MAX_PART, _MAX_PART)


def parse_cursor(raw: str | bytes) -> StreamId:
    """`1732190000000-3` → (1732190000000, 3); `0` is the beginning. Anything else is BadCursor."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    match = _ID.fullmatch(text.strip())
    parts = (int(match.group(1)), int(match.group(2) or 0)) if match else None
    if parts is None or max(parts) > _MAX_PART:
        raise BadCursor(f"not a stream ID: {text[:64]!r} (expected like 1732190000000-0)")
    return parts


def just_before(sid: StreamId) -> StreamId:
    """The greatest id smaller than `sid`: replaying strictly after it starts at `sid`."""
    return (sid[0], sid[1] - 1) if sid[1] > 0 else (sid[0] - 1, _MAX_PART)


def xrange_after(sid: StreamId) -> tuple[str, str]:
    """XRANGE's (start, end) for the entries strictly after `sid`."""
    if sid == MAX_ID:
        return "+", "-"  # start after end: an empty range, where `(<max>` would be an error
    return f"({sid[0]}-{sid[1]}", "+"
