"""The baseline most deployments look like: sse-starlette over one shared Redis subscription.

The shape of the tutorials and of encode/broadcaster's Redis backend, served by the same uvicorn
as the gateway: one `redis.asyncio` `PubSub` per process read by one task, which decodes each
message once and puts it into the `asyncio.Queue(maxsize=1000)` of every viewer of the channel;
per viewer, `sse_starlette.EventSourceResponse` over an async generator yielding each event as a
dict (`id`, `event`, `data`), which sse-starlette encodes per viewer, with its defaults (15 s
ping, `\\r\\n` line separator). Channels are refcounted: SUBSCRIBE on the first viewer,
UNSUBSCRIBE after the last. A full queue drops the event (and counts it), as `put_nowait`
code does; the benchmark sees the loss as deliveries not received.

No replay from the log: a viewer gets what is published after its subscription, which is all
the benchmarks ask of it.

    python -m tidings.services.bench.sse_starlette_hub --redis URL --namespace NS --port PORT \
        [--ping S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from redis.asyncio import Redis
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tidings.events import TERMINAL_TYPES
from tidings.keys import Keys

__all__ = ["create_app", "main"]

log = logging.getLogger(__name__)

_TERMINAL = {t.value for t in TERMINAL_TYPES}
Item = dict[str, str]


class _Hub:
    def __init__(self, redis: Redis) -> None:
        self.pubsub = redis.pubsub()
        self.viewers: dict[str, set[asyncio.Queue[Item]]] = {}
        self.subscribed = asyncio.Event()
        self.dropped = 0

    async def run(self) -> None:
        # PubSub.listen() returns at once while nothing is subscribed: wait for a first channel.
        while True:
            await self.subscribed.wait()
            async for message in self.pubsub.listen():
                if message["type"] != "message":
                    continue
                queues = self.viewers.get(message["channel"].decode())
                if not queues:
                    continue
                data = message["data"].decode()
                event: dict[str, Any] = json.loads(data)  # once per event, not per viewer
                item = {"id": event["id"], "event": event["type"], "data": data}
                for queue in queues:
                    try:
                        queue.put_nowait(item)
                    except asyncio.QueueFull:
                        self.dropped += 1
            self.subscribed.clear()

    async def join(self, channel: str, queue: asyncio.Queue[Item]) -> None:
        queues = self.viewers.setdefault(channel, set())
        queues.add(queue)
        if len(queues) == 1:
            await self.pubsub.subscribe(channel)
            self.subscribed.set()

    async def leave(self, channel: str, queue: asyncio.Queue[Item]) -> None:
        queues = self.viewers.get(channel)
        if queues is None:
            return
        queues.discard(queue)
        if not queues:
            del self.viewers[channel]
            await self.pubsub.unsubscribe(channel)


def create_app(redis_url: str, keys: Keys, *, ping: float | None = None) -> Starlette:
    hub: _Hub | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal hub
        redis = Redis.from_url(redis_url)
        hub = _Hub(redis)
        await hub.pubsub.connect()  # type: ignore[no-untyped-call]
        task = asyncio.create_task(hub.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await hub.pubsub.aclose()  # type: ignore[no-untyped-call]
            await redis.aclose()

    async def events(request: Request) -> Response:
        assert hub is not None
        channel = keys.run_channel(request.path_params["run_id"])
        queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=1000)
        await hub.join(channel, queue)

        async def stream() -> AsyncIterator[Item]:
            assert hub is not None
            try:
                while True:
                    item = await queue.get()
                    yield item
                    if item["event"] in _TERMINAL:
                        return
            finally:
                await hub.leave(channel, queue)

        return EventSourceResponse(stream(), ping=ping)

    async def ready(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[Route("/api/runs/{run_id}/events", events), Route("/readyz", ready)],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tidings.services.bench.sse_starlette_hub")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ping", type=float, default=None, help="seconds; sse-starlette's default")
    args = parser.parse_args()
    app = create_app(args.redis, Keys(args.namespace), ping=args.ping)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
