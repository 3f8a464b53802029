"""One process of a viewer crowd (`crowd.py` runs several): raw-socket SSE viewers under uvloop.

    python -m tidings.services.bench.crowd_client   # spec as one JSON line on stdin, then commands

The spec: `{"urls": [...], "targets": [url index per viewer], "timed": [viewer indices],
"count": "task_progress", "until": "workflow_completed", "connect_concurrency": 100}`.

Each viewer is an `asyncio.Protocol`, so a received chunk costs one callback and no task wake-up.
A counting viewer only counts `event: <count>` in the raw bytes (a field line is split by neither
the chunked framing nor the `\\n` / `\\r\\n` separators, and no event type is a prefix of
another); a timed viewer also reads the `data:` lines of those events and records
`time.monotonic()` at arrival minus the publisher's `data.t` (CLOCK_MONOTONIC is shared by every
process on the machine), per window `data.w`. The arrival time is taken in `data_received`, so
the figure is the server's latency plus the kernel's, not this process's scheduling.

Protocol on stdout, one line each: `connected` once every viewer has its response head (or
failed), `ready` once each has received an event; then, per command read on stdin, `count` →
`count <counted> <done> <failed> <heartbeats>` and `report` → one JSON object, after which the
process exits. Heartbeats are the `: ping` comments Tidings and sse-starlette send.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any, cast
from urllib.parse import urlsplit

__all__ = ["main"]


class _Crowd:
    def __init__(self, n: int, count: bytes, until: bytes) -> None:
        self.n = n
        self.count = count
        self.until = until
        self.keep = max(len(count), len(until)) - 1
        self.viewers: list[_Viewer] = []
        self.heads = 0
        self.ready = 0
        self.done = 0
        self.failed = 0
        self.errors: list[str] = []
        self.latencies: dict[str, list[float]] = {}
        self.all_heads = asyncio.Event()
        self.all_ready = asyncio.Event()

    def fail(self, viewer: _Viewer, reason: str) -> None:
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(reason)
        if not viewer.headed:
            self.head(viewer)
        if not viewer.ready:
            self.mark_ready(viewer)

    def head(self, viewer: _Viewer) -> None:
        viewer.headed = True
        if not viewer.head_seen.done():
            viewer.head_seen.set_result(None)
        self.heads += 1
        if self.heads == self.n:
            self.all_heads.set()

    def mark_ready(self, viewer: _Viewer) -> None:
        viewer.ready = True
        self.ready += 1
        if self.ready == self.n:
            self.all_ready.set()

    def counted(self) -> int:
        return sum(v.n for v in self.viewers)

    def pings(self) -> int:
        return sum(v.pings for v in self.viewers)


class _Viewer(asyncio.Protocol):
    def __init__(self, crowd: _Crowd, request: bytes, timed: bool) -> None:
        self.crowd = crowd
        self.request = request
        self.timed = timed
        self.transport: asyncio.Transport | None = None
        self.head_seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.headed = self.ready = self.finished = False
        self.buf = b""  # the response head until it is complete, then the last few body bytes
        self.lines = b""  # timed viewers: an incomplete last line
        self.n = 0
        self.pings = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        crowd = self.crowd
        if not self.headed:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buf.split(b"\r\n", 1)[0]
            if b" 200 " not in status:
                self.end(status.decode(errors="replace"))
                return
            crowd.head(self)
            data, self.buf = self.buf[end + 4 :], b""
        tail = self.buf
        buf = tail + data
        # A match inside the kept tail was counted with the previous chunk; one that straddles
        # the tail and this chunk was not.
        self.n += buf.count(crowd.count) - tail.count(crowd.count)
        self.pings += buf.count(b": ping") - tail.count(b": ping")
        if not self.ready and b"event: " in buf:
            crowd.mark_ready(self)
        if self.timed:
            self._time(data, now)
        if crowd.until in buf:
            self.end(None)
            return
        self.buf = buf[-crowd.keep :]

    def _time(self, data: bytes, now: float) -> None:
        text = self.lines + data
        cut = text.rfind(b"\n") + 1
        self.lines = text[cut:]
        for line in text[:cut].split(b"\n"):
            if not line.startswith(b"data: "):
                continue
            event: dict[str, Any] = json.loads(line[6:])
            stamp = event.get("data") or {}
            if event.get("type") == "task_progress" and "t" in stamp:
                lat = self.crowd.latencies.setdefault(str(stamp.get("w", 0)), [])
                lat.append(round((now - stamp["t"]) * 1000, 3))

    def end(self, error: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        if error is None:
            self.crowd.done += 1
        else:
            self.crowd.fail(self, error)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self.end(f"connection lost: {exc or 'closed by server'}")


async def _connect(viewer: _Viewer, host: str, port: int, gate: asyncio.Semaphore) -> None:
    async with gate:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: viewer, host, port)
            await asyncio.wait_for(asyncio.shield(viewer.head_seen), 30)
        except (OSError, TimeoutError) as exc:
            viewer.end(f"connect: {type(exc).__name__}: {exc}")


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    spec: dict[str, Any] = json.loads(await stdin.readline())
    targets: list[int] = spec["targets"]
    timed = set(spec.get("timed", ()))
    count = b"event: " + spec.get("count", "task_progress").encode()
    crowd = _Crowd(
        len(targets), count, b"event: " + spec.get("until", "workflow_completed").encode()
    )
    gate = asyncio.Semaphore(int(spec.get("connect_concurrency", 100)))
    tasks = []
    for i, target in enumerate(targets):
        parts = urlsplit(spec["urls"][target])
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        request = (
            f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        viewer = _Viewer(crowd, request, i in timed)
        crowd.viewers.append(viewer)
        tasks.append(asyncio.create_task(_connect(viewer, host, port, gate)))
    await crowd.all_heads.wait()
    _emit("connected")
    await crowd.all_ready.wait()
    _emit("ready")
    while line := (await stdin.readline()).strip():
        if line == b"count":
            _emit(f"count {crowd.counted()} {crowd.done} {crowd.failed} {crowd.pings()}")
        elif line == b"report":
            break
    counts = [v.n for v in crowd.viewers]
    report = {
        "viewers": crowd.n,
        "counted": sum(counts),
        "min_count": min(counts, default=0),
        "max_count": max(counts, default=0),
        "done": crowd.done,
        "failed": crowd.failed,
        "errors": crowd.errors,
        "latencies": crowd.latencies,
    }
    for viewer in crowd.viewers:
        if viewer.transport is not None:
            viewer.transport.abort()
    await asyncio.gather(*tasks, return_exceptions=True)
    _emit(json.dumps(report))


def main() -> None:
    # Thousands of sockets in one process: take the whole allowance the hard limit grants.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(_main())


if __name__ == "__main__":
    main()
