"""Redis stream IDs as cursors: parse, compare, validate."""

from __future__ import annotations

import re

from .errors import BadCursor

__all__ = ["StreamId", "just_before", "parse_cursor"]

_ID = re.compile(r"^([0-9]{1,20})(?:-([0-9]{1,20}))?$")
_MAX_PART = 2**64 - 1  # Redis stream ID parts are unsigned 64-bit

StreamId = tuple[int, int]


def parse_cursor(raw: str | bytes) -> StreamId:
    """`1732190000000-3` → (1732190000000, 3); `0` is the beginning. Anything else is BadCursor."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    match = _ID.match(text.strip())
    parts = (int(match.group(1)), int(match.group(2) or 0)) if match else None
    if parts is None or max(parts) > _MAX_PART:
        raise BadCursor(f"not a stream ID: {text[:64]!r} (expected like 1732190000000-0)")
    return parts


def just_before(sid: StreamId) -> StreamId:
    """The greatest id smaller than `sid`: replaying strictly after it starts at `sid`."""
    return (sid[0], sid[1] - 1) if sid[1] > 0 else (sid[0] - 1, _MAX_PART)
