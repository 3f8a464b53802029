"""The raw-transport floor for SSE fan-out: what one Python process costs with nothing on top.

No framework, no ASGI, no per-viewer task or buffer: a uvloop `asyncio.Protocol` HTTP server
that parses a request head and answers, and one raw pub/sub connection read by `hiredis.Reader`.
Each pub/sub message is framed once as an SSE message (`id:`, `event:`, `data:`, exactly as
Tidings frames it) inside one HTTP chunk, and that same bytes object goes to every viewer of the
channel with `transport.write` in one loop. A terminal event also ends each response
(`0\\r\\n\\r\\n`). Channels are refcounted: the first viewer SUBSCRIBEs, the last UNSUBSCRIBEs.

It skips what a real gateway must do (replay from the log, bounded buffers, heartbeats, the
SUBSCRIBE confirmation before going live, reconnecting to Redis): it is the bar Tidings is held
to, not a server to deploy. A viewer whose unsent bytes pass 4 MiB is cut, so a stuck client
cannot eat the machine's memory during a benchmark.

    python -m tidings.services.bench.floor_hub --redis URL --namespace NS --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import cast
from urllib.parse import urlsplit

import hiredis
import uvloop

from tidings.events import TERMINAL_TYPES
from tidings.keys import Keys

__all__ = ["main"]

_EVENTS = re.compile(rb"^GET /api/runs/([A-Za-z0-9_-]{1,64})/events[ ?]")
_TYPE = re.compile(rb'"type":"([a-z_]{1,40})"')
_ID_PREFIX = b'{"id":"'
_TERMINAL = frozenset(t.value.encode() for t in TERMINAL_TYPES)
_END = b"0\r\n\r\n"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_OK = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n"
    b"connection: close\r\n\r\nok"
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_HIGH_WATER = 4 << 20


def _command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _PubSub(asyncio.Protocol):
    """The one Redis connection: SUBSCRIBE/UNSUBSCRIBE out, messages in, fanned out at once."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.reader = hiredis.Reader()
        self.channels: dict[bytes, set[_Viewer]] = {}
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def join(self, run_id: bytes, viewer: _Viewer) -> bytes:
        channel = self.keys.run_channel(run_id.decode()).encode()
        subs = self.channels.get(channel)
        if subs is None:
            subs = self.channels[channel] = set()
            assert self.transport is not None
            self.transport.write(_command(b"SUBSCRIBE", channel))
        subs.add(viewer)
        return channel

    def leave(self, channel: bytes, viewer: _Viewer) -> None:
        subs = self.channels.get(channel)
        if subs is None:
            return
        subs.discard(viewer)
        if not subs:
            del self.channels[channel]
            if self.transport is not None:
                self.transport.write(_command(b"UNSUBSCRIBE", channel))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                self.deliver(reply[1], reply[2])

    def deliver(self, channel: bytes, raw: bytes) -> None:
        viewers = self.channels.get(channel)
        if not viewers:
            return
        match = _TYPE.search(raw)
        if not raw.startswith(_ID_PREFIX) or match is None or b"\n" in raw:
            return  # never from Tidings' publisher; the floor does not handle the general case
        eid = raw[len(_ID_PREFIX) : raw.find(b'"', len(_ID_PREFIX))]
        etype = match.group(1)
        message = b"id: " + eid + b"\nevent: " + etype + b"\ndata: " + raw + b"\n\n"
        chunk = b"%x\r\n" % len(message) + message + b"\r\n"
        if etype not in _TERMINAL:
            for viewer in viewers:
                viewer.transport.write(chunk)
            return
        chunk += _END
        for viewer in list(viewers):
            viewer.transport.write(chunk)
            viewer.transport.close()  # flushes first


class _Viewer(asyncio.Protocol):
    """One HTTP connection: a request head in, then an endless chunked response out."""

    transport: asyncio.Transport

    def __init__(self, hub: _PubSub) -> None:
        self.hub = hub
        self.head = b""
        self.channel: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self.channel is not None:
            return  # the request body of a GET, or pipelining: ignored
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > 16_384:
                self.transport.close()
            return
        match = _EVENTS.match(self.head)
        if match:
            self.transport.write(_SSE_HEAD)
            self.channel = self.hub.join(match.group(1), self)
        elif self.head.startswith(b"GET /readyz "):
            self.transport.write(_OK)
            self.transport.close()
        else:
            self.transport.write(_NOT_FOUND)
            self.transport.close()

    def pause_writing(self) -> None:
        self.transport.abort()  # a viewer this far behind is dropped

    def connection_lost(self, exc: Exception | None) -> None:
        if self.channel is not None:
            self.hub.leave(self.channel, self)


async def _serve(redis_url: str, keys: Keys, port: int) -> None:
    loop = asyncio.get_running_loop()
    parts = urlsplit(redis_url)
    _, hub = await loop.create_connection(
        lambda: _PubSub(keys), parts.hostname or "127.0.0.1", parts.port or 6379
    )
    server = await loop.create_server(lambda: _Viewer(hub), "127.0.0.1", port, backlog=4096)
    async with server:
        await hub.lost  # nothing to reconnect to in a benchmark: exit with the connection


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tidings.services.bench.floor_hub")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(_serve(args.redis, Keys(args.namespace), args.port))


if __name__ == "__main__":
    main()
