"""Shared pieces of the gateway tests (no tests here): a gateway child process on a free port, a
raw-socket SSE client that speaks HTTP/1.1 itself (so a test controls exactly when it reads),
and a /metrics reader."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import Processes
from tidings.catalog import CatalogWriter
from tidings.embedded import free_port
from tidings.redis import connect
from tidings.sdk import registry
from tidings.settings import Settings
from tidings.sse import SSEMessage, SSEParser

__all__ = ["Gateway", "GatewayFactory", "RawStream", "events_of", "start_gateway", "wait_for"]


GatewayFactory = Callable[..., Awaitable["Gateway"]]


@dataclass
class Gateway:
    port: int
    proc: subprocess.Popen[bytes]
    processes: Processes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kwargs)

    async def metrics(self) -> dict[str, float]:
        async with self.client() as client:
            resp = await client.get("/metrics")
        resp.raise_for_status()
        values: dict[str, float] = {}
        for line in resp.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def log(self) -> str:
        return self.processes.output(self.proc)

    async def stream(self, path: str, **kwargs: Any) -> RawStream:
        return await RawStream.open(self.port, path, **kwargs)


async def publish_catalog(redis_url: str, namespace: str, cluster: bool = False) -> None:
    """The workflows registered in this process (the shipped ones at least) in the namespace's
    catalog, as a worker serving them would leave it once stopped: known, served by nobody. A
    gateway knows workflows only from the catalog; a test without workers plays them here.
    `cluster`: `redis_url` names a node of a Redis Cluster."""
    import tidings.services.workflows  # noqa: F401  (registers the shipped workflows)

    settings = Settings(redis_url=redis_url, namespace=namespace, redis_cluster=cluster)
    client = connect(redis_url, cluster=cluster)
    try:
        writer = CatalogWriter(client, settings.keys(), "test-worker", registry.workflows.values())
        await writer.publish()
        await writer.withdraw()
    finally:
        await client.aclose()


async def start_gateway(
    processes: Processes,
    settings_env: Callable[..., dict[str, str]],
    redis_url: str | None = None,
    *,
    catalog: bool = True,
    **settings: object,
) -> Gateway:
    """A running gateway child process with these settings, on a free port, once ready; with
    `catalog`, the shipped workflows are in the catalog first (`publish_catalog`).

    Test modules wrap it in a `gateway_factory` fixture over `processes` and `settings_env`."""
    port = free_port()
    env = settings_env(port=port, log_level="warning", **settings)
    if redis_url:
        env["REDIS_URL"] = redis_url
    if catalog:
        cluster = env.get("TIDINGS_REDIS_CLUSTER", "").lower() == "true"
        await publish_catalog(env["REDIS_URL"], env["TIDINGS_NAMESPACE"], cluster)
    proc = processes.python("tidings.services.gateway", env=env, name="gateway")
    gw = Gateway(port, proc, processes)
    deadline = time.monotonic() + 20
    async with gw.client() as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{gw.log()}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return gw
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready:\n{gw.log()}")
            await asyncio.sleep(0.05)


async def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll `check` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class _Dechunker:
    """Undoes HTTP/1.1 chunked transfer coding, incrementally."""

    def __init__(self) -> None:
        self.buf = b""
        self.state = "size"
        self.remaining = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out: list[bytes] = []
        while not self.done:
            if self.state == "size":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    break
                size = int(self.buf[:end].split(b";")[0], 16)
                self.buf = self.buf[end + 2 :]
                if size == 0:
                    self.done = True
                else:
                    self.remaining, self.state = size, "data"
            elif self.state == "data":
                if not self.buf:
                    break
                take = self.buf[: self.remaining]
                out.append(take)
                self.buf = self.buf[len(take) :]
                self.remaining -= len(take)
                if self.remaining == 0:
                    self.state = "crlf"
            else:
                if len(self.buf) < 2:
                    break
                self.buf, self.state = self.buf[2:], "size"
        return b"".join(out)


@dataclass
class RawStream:
    """One SSE request over a plain non-blocking socket: it reads only when the test asks."""

    sock: socket.socket
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    parser: SSEParser = field(default_factory=SSEParser)
    ended: bool = False  # the response finished (last chunk) or the server closed
    eof: bool = False  # the server closed the connection
    _chunks: _Dechunker = field(default_factory=_Dechunker)
    _pending: list[SSEMessage] = field(default_factory=list)

    @classmethod
    async def open(
        cls,
        port: int,
        path: str,
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
    ) -> RawStream:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [
            f"{k}: {v}" for k, v in {"Accept": "text/event-stream", **(headers or {})}.items()
        ]
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        stream = cls(sock)
        head = b""
        while b"\r\n\r\n" not in head:
            data = await loop.sock_recv(sock, 4096)
            if not data:
                raise ConnectionError(f"closed before the response head: {head!r}")
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        stream.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            stream.headers[name.strip().lower()] = value.strip()
        stream._pending = stream.parser.feed(stream._chunks.feed(rest))
        return stream

    async def recv(self, size: int = 65536) -> list[SSEMessage]:
        """Read once (waits for bytes); the messages completed by them."""
        if self._pending:
            out, self._pending = self._pending, []
            return out
        if self.ended:
            return []
        data = await asyncio.get_running_loop().sock_recv(self.sock, size)
        if not data:
            self.ended = self.eof = True
            return []
        msgs = self.parser.feed(self._chunks.feed(data))
        if self._chunks.done:
            self.ended = True
        return msgs

    async def messages(self) -> AsyncIterator[SSEMessage]:
        while not self.ended or self._pending:
            for msg in await self.recv():
                yield msg

    async def take(self, n: int) -> list[SSEMessage]:
        """The next `n` messages (fewer if the stream ends first)."""
        out: list[SSEMessage] = []
        while len(out) < n and (not self.ended or self._pending):
            out += await self.recv()
        self._pending = out[n:] + self._pending
        return out[:n]

    async def read_to_end(self) -> list[SSEMessage]:
        return [msg async for msg in self.messages()]

    def close(self) -> None:
        self.sock.close()


def events_of(messages: list[SSEMessage]) -> list[dict[str, Any]]:
    """The run events among `messages` (resync and other gateway messages left out)."""
    out = []
    for msg in messages:
        if msg.event != "resync":
            body = json.loads(msg.data)
            assert body["id"] == msg.id, (body, msg)
            assert body["type"] == msg.event
            out.append(body)
    return out
