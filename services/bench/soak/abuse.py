"""Sending the abusive requests (`catalog.py`) while the load runs, spread over a window.

None may get a 5xx (a 503 while the Valkey is down excepted, as everywhere). Any other answer
than the ones a request should get, below 500, is *unexpected*: counted, and a failure. So is a
connection dropped without an answer while its gateway was not being restarted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tidings.settings import Settings

from .catalog import Item, catalog
from .client import raw_exchange
from .procs import Child
from .world import World

__all__ = ["Abuse"]


async def _chunks(total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = b"x" * min(65536, total - sent)
        sent += len(piece)
        yield piece


class Abuse:
    """Sends `profile.abuse_requests` requests drawn from the catalog, spread over a window."""

    def __init__(self, world: World, run_ids: list[str], seed_runs: list[str]) -> None:
        self.world = world
        self.run_ids = run_ids  # filled in by the load as runs start
        self.seed_runs = seed_runs
        self.sent: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()  # "<item> <status>"
        self.classes: Counter[str] = Counter()  # 4xx, 2xx, … as the report shows them
        self.unexpected: Counter[str] = Counter()
        self.max_body = int(Settings().max_body_bytes)

    async def run(self, count: int, window_s: float, concurrency: int = 4) -> None:
        rng = random.Random(self.world.seed * 31 + 7)
        for _ in range(100):  # real ids make the signals and cursors real; runs start at once
            if self.run_ids:
                break
            await asyncio.sleep(0.1)
        times = sorted(rng.uniform(0, window_s) for _ in range(count))
        queue: asyncio.Queue[float] = asyncio.Queue()
        for t in times:
            queue.put_nowait(t)

        async def sender() -> None:
            while not queue.empty():
                at = queue.get_nowait()
                await asyncio.sleep(max(0.0, at - self.world.now()))
                run = rng.choice(self.run_ids) if self.run_ids else "no-run-yet"
                seed_run = rng.choice(self.seed_runs) if self.seed_runs else None
                item = rng.choice(catalog(run, seed_run, self.max_body))
                await self.send(item)

        await asyncio.gather(*(sender() for _ in range(concurrency)))

    async def send(self, item: Item, gw: Child | None = None) -> None:
        world = self.world
        gw = gw or world.pick()
        if gw is None:
            return
        self.sent[item.name] += 1
        t0 = time.monotonic()
        status: int | None
        detail = ""
        if item.raw is not None:
            reply = await raw_exchange(gw.port, item.raw, timeout=12.0)
            status = _status_of(reply)
            detail = reply[:200].decode("latin-1")
        else:
            status, detail = await self._http(gw.url, item)
        t1 = time.monotonic()
        if status is None:  # the connection failed
            if world.restarting_during(gw.slot, t0, t1):
                self.classes["no answer: gateway restarting"] += 1
            else:
                self.answers[f"{item.name} dropped"] += 1
                self.unexpected[f"{item.name} dropped"] += 1
                self.classes["connection dropped"] += 1
                world.fail(f"abuse {item.name}: {gw.label} dropped the connection unanswered")
            return
        self.answers[f"{item.name} {status}"] += 1
        if status == 0:
            self.classes["closed without an answer"] += 1
        elif status == 503 and world.redis_down_during(t0, t1):
            self.classes["503 while the Valkey was down"] += 1
        else:
            self.classes[f"{str(status)[0]}xx"] += 1
        if status >= 500:
            if status == 503 and world.redis_down_during(t0, t1):
                return
            world.fail(
                f"abuse {item.name} got {status} from {gw.label}: "
                f"{item.method} {item.path[:120]}: {detail[:300]!r}"
            )
        elif status not in item.ok:
            self.unexpected[f"{item.name} {status}"] += 1
            world.fail(
                f"abuse {item.name} got {status} from {gw.label}, expected one of "
                f"{sorted(item.ok)}: {item.method} {item.path[:120]}: {detail[:300]!r}"
            )

    async def _http(self, base: str, item: Item) -> tuple[int | None, str]:
        kwargs: dict[str, Any] = {"headers": item.headers}
        if item.chunked:
            kwargs["content"] = _chunks(item.chunked)
        elif item.content is not None:
            kwargs["content"] = item.content
        elif item.json is not None or "Content-Type" in item.headers:
            kwargs["json"] = item.json
        try:
            async with self.world.client.stream(
                item.method, base + item.path, timeout=15.0, **kwargs
            ) as resp:
                body = b""
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > 4096:
                        break
                return resp.status_code, body[:300].decode(errors="replace")
        except httpx.TransportError:
            return None, ""


def _status_of(reply: bytes) -> int:
    """The status of a raw reply; 0 when the server closed without one."""
    if not reply.startswith(b"HTTP/"):
        return 0
    try:
        return int(reply.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0
