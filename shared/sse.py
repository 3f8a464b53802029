"""Server-Sent Events: the encoder the gateway uses and a parser that follows the WHATWG spec.

The encoder splits data on every line break the spec knows (CRLF, LF, CR) into several `data:`
lines, so any string survives the trip. The parser is incremental (feed it bytes as they arrive)
and is what the CLI and the tests read streams with.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["SSEMessage", "SSEParser", "comment", "encode"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def encode(
    data: str | bytes,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """One SSE message as bytes, ending with the blank line that dispatches it."""
    if isinstance(data, bytes):
        data = data.decode()
    parts: list[str] = []
    if id is not None:
        if _LINE_BREAK.search(id) or "\0" in id:
            raise ValueError("an SSE id cannot contain a line break or NUL")
        parts.append(f"id: {id}\n")
    if event is not None:
        if _LINE_BREAK.search(event):
            raise ValueError("an SSE event name cannot contain a line break")
        parts.append(f"event: {event}\n")
    if retry is not None:
        parts.append(f"retry: {int(retry)}\n")
    for line in _LINE_BREAK.split(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode()


def comment(text: str = "") -> bytes:
    """A comment line: ignored by clients, keeps proxies and idle timers from closing the stream."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


@dataclass(slots=True)
class SSEMessage:
    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None


@dataclass
class SSEParser:
    """Incremental parser. `feed()` returns the messages completed by the new bytes."""

    last_event_id: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    _pending: str = ""
    _started: bool = False
    _data: list[str] = field(default_factory=list)
    _has_data: bool = False
    _event: str = ""

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        text = self._decoder.decode(chunk)
        if not self._started and (text or self._pending):
            text = (self._pending + text).removeprefix("\ufeff")
            self._pending = ""
            self._started = True
        else:
            text = self._pending + text
            self._pending = ""
        return list(self._lines(text))

    def _lines(self, text: str) -> Iterator[SSEMessage]:
        pos = 0
        for match in _LINE_BREAK.finditer(text):
            # A CR at the very end may be the first half of a CRLF still in flight.
            if match.group() == "\r" and match.end() == len(text):
                break
            msg = self._line(text[pos : match.start()])
            pos = match.end()
            if msg is not None:
                yield msg
        self._pending = text[pos:]

    def _line(self, line: str) -> SSEMessage | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return None
        name, sep, value = line.partition(":")
        if sep:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEMessage | None:
        has_data, data, event = self._has_data, "\n".join(self._data), self._event
        self._data, self._has_data, self._event = [], False, ""
        if not has_data:
            return None
        return SSEMessage(
            event=event or "message", data=data, id=self.last_event_id, retry=self.retry
        )
