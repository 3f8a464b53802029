"""A minimal HTTP/1.1 client over asyncio streams, so a viewer controls exactly when and how much
it reads: a slow viewer has a small socket receive buffer and a small stream buffer, reads a few
KB, then sleeps, and the gateway sees a client that really is slow.

One request per connection (`Connection: close` is not sent: the gateway must cope with viewers
that simply go away). Chunked bodies are decoded incrementally; others are read by
`Content-Length` or to the end of the connection.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

__all__ = ["Conn", "open_conn", "raw_exchange"]

_HEAD_LIMIT = 64 * 1024


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    ended: bool = False
    _chunked: bool = False
    _remaining: int = -1  # bytes left in the current chunk, or of a Content-Length body

    async def read(self, size: int = 65536) -> bytes | None:
        """Up to `size` bytes of the body as they come; None once it has ended. A connection
        that closes in the middle of a chunked body raises ConnectionError."""
        if self.ended:
            return None
        reader = self.reader
        try:
            if not self._chunked:
                if self._remaining == 0:
                    self.ended = True
                    return None
                want = size if self._remaining < 0 else min(size, self._remaining)
                data = await reader.read(want)
                if not data:
                    self.ended = True
                    if self._remaining > 0:
                        raise ConnectionError("closed before the end of the body")
                    return None
                if self._remaining > 0:
                    self._remaining -= len(data)
                return data
            if self._remaining <= 0:
                line = await reader.readuntil(b"\r\n")
                chunk_size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if chunk_size == 0:
                    await reader.readuntil(b"\r\n")  # the empty trailer
                    self.ended = True
                    return None
                self._remaining = chunk_size
            data = await reader.read(min(size, self._remaining))
            if not data:
                raise ConnectionError("closed in the middle of a chunk")
            self._remaining -= len(data)
            if self._remaining == 0:
                await reader.readexactly(2)
            return data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise ConnectionError(f"broken body: {exc}") from None

    async def body(self, limit: int = 4 * 1024 * 1024) -> bytes:
        parts: list[bytes] = []
        total = 0
        while (data := await self.read()) is not None:
            parts.append(data)
            total += len(data)
            if total > limit:
                break
        return b"".join(parts)

    def close(self) -> None:
        self.writer.transport.abort()


async def open_conn(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    rcvbuf: int | None = None,
    limit: int = 256 * 1024,
) -> Conn:
    """Connect, send one request, read the response head."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
    conn = Conn(reader, writer)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _HEAD_LIMIT:
            raise ConnectionError("response head too large")
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        conn.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            conn.headers[name.strip().lower()] = value.strip()
        conn._chunked = "chunked" in conn.headers.get("transfer-encoding", "").lower()
        if not conn._chunked:
            length = conn.headers.get("content-length")
            if length is not None:
                conn._remaining = int(length)
            elif conn.status in (204, 304) or method == "HEAD":
                conn._remaining = 0
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
        conn.close()
        raise ConnectionError(f"bad response head: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


async def raw_exchange(port: int, parts: list[tuple[bytes, float]], timeout: float) -> bytes:
    """Send each part then pause its delay; return what the server sent until it closed (or
    `timeout` passed: then b"" if it sent nothing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()
    try:
        async with asyncio.timeout(timeout):
            for data, pause in parts:
                try:
                    writer.write(data)
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(pause)
            while chunk := await reader.read(65536):
                received += chunk
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.transport.abort()
    return bytes(received)
