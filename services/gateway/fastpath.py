"""The one piece of uvicorn the gateway owns: handing an event stream its transport.

`tidings gateway` runs uvicorn with `HttpToolsProtocol` below (through its subclass in
`deadlines.py`, which adds deadlines for slow clients), uvicorn's own httptools protocol plus one
thing: each request's scope carries the connection's transport under the extension
`tidings.transport`. An event stream that finds it (a GET over HTTP/1.1, whose body uvicorn frames
as `transfer-encoding: chunked`) lets the hub write once-framed chunks straight to the transport;
the head and the final chunk still go through the ASGI `send`, so uvicorn's view of the response
(started, complete, keep-alive) stays true. Without the extension (another server, uvicorn's h11
protocol, `uvicorn tidings.services.gateway.asgi:app`) streams use the ASGI path only.

The override is of a public parser callback (`on_message_begin`, which builds the scope), and
`tests/test_gateway_fastpath.py` checks the assumptions against the installed uvicorn: the scope
is built there, `transport` is set on the protocol by then, and the body framing is the one the
hub writes.
"""

from __future__ import annotations

import asyncio
from typing import cast

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _UvicornHttpTools

__all__ = ["EXTENSION", "HttpToolsProtocol", "stream_transport"]

EXTENSION = "tidings.transport"


class HttpToolsProtocol(_UvicornHttpTools):
    """uvicorn's httptools protocol, exposing the transport to event streams."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope.setdefault("extensions", {})[EXTENSION] = {"transport": self.transport}


def stream_transport(scope: Scope) -> asyncio.WriteTransport | None:
    """The transport an event stream may write chunks to directly, if this server offers it."""
    if scope.get("method") != "GET" or scope.get("http_version") != "1.1":
        return None
    ext = (scope.get("extensions") or {}).get(EXTENSION)
    if not ext:
        return None
    # uvloop's transports implement the interface without subclassing asyncio's classes.
    transport = cast(asyncio.WriteTransport, ext["transport"])
    return None if transport.is_closing() else transport
