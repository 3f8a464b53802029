"""A crowd of SSE viewers in one process, for the fan-out benchmark (run as a child process so
the gateway under test does not share its core with the clients).

    python -m tidings.services.bench.viewers URL COUNT --count-event task_progress \
        --until workflow_completed --timeout 60

Each viewer is a raw HTTP/1.1 connection; events are counted by their `event:` field line in the
byte stream, without parsing (a Python SSE parser would be the bottleneck, not the server).
Prints `ready` once every viewer has received at least one event, then one JSON line:
{"counts": [...], "done": [monotonic time the terminal event arrived, or null], "errors": [...]}.
`time.monotonic()` is CLOCK_MONOTONIC, shared by every process on the machine, so the parent
can subtract its own start time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from urllib.parse import urlsplit

__all__ = ["main"]


class _Crowd:
    def __init__(self, n: int) -> None:
        self.counts = [0] * n
        self.done: list[float | None] = [None] * n
        self.errors: list[str] = []
        self.ready = 0
        self.all_ready = asyncio.Event()
        self.n = n

    def mark_ready(self) -> None:
        self.ready += 1
        if self.ready == self.n:
            self.all_ready.set()


async def _viewer(url: str, i: int, crowd: _Crowd, count: bytes, until: bytes) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            crowd.errors.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            crowd.mark_ready()
            return
        ready = False
        tail = b""
        keep = max(len(count), len(until)) - 1
        n = 0
        while True:
            chunk = await reader.read(1 << 18)
            if not chunk:
                break
            buf = tail + chunk
            if not ready and b"event: " in buf:
                ready = True
                crowd.mark_ready()
            # `tail` is long enough for `until`, so a whole `count` can fit in it: a match inside
            # it was counted with the previous chunk, one straddling it and this chunk was not.
            n += buf.count(count) - tail.count(count)
            if until in buf:
                crowd.done[i] = time.monotonic()
                break
            tail = buf[-keep:]
        crowd.counts[i] = n
        if not ready:
            crowd.mark_ready()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _main(args: argparse.Namespace) -> None:
    crowd = _Crowd(args.viewers)
    count = b"event: " + args.count_event.encode() + b"\n"
    until = b"event: " + args.until.encode() + b"\n"

    async def guarded(i: int) -> None:
        try:
            await _viewer(args.url, i, crowd, count, until)
        except (OSError, asyncio.IncompleteReadError) as exc:
            crowd.errors.append(f"viewer {i}: {type(exc).__name__}: {exc}")
            crowd.mark_ready()

    tasks = [asyncio.create_task(guarded(i)) for i in range(args.viewers)]
    try:
        await asyncio.wait_for(crowd.all_ready.wait(), args.timeout)
        print("ready", flush=True)
        await asyncio.wait_for(asyncio.gather(*tasks), args.timeout)
    except TimeoutError:
        crowd.errors.append(f"timed out after {args.timeout}s")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"counts": crowd.counts, "done": crowd.done, "errors": crowd.errors[:5]}))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tidings.services.bench.viewers")
    parser.add_argument("url")
    parser.add_argument("viewers", type=int)
    parser.add_argument("--count-event", default="task_progress")
    parser.add_argument("--until", default="workflow_completed")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(_main(args))
    except ImportError:
        asyncio.run(_main(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
