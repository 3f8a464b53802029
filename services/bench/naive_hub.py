"""The fan-out baseline: the SSE endpoint most people write first, served by the same uvicorn.

Per viewer it opens its own Redis connection and SUBSCRIBE, and per event per viewer it decodes
the JSON and encodes it again into an SSE message. No replay, no bounded buffers. It exists only
so the fan-out benchmark can compare against it in the same run.

    python -m tidings.services.bench.naive_hub --redis URL --namespace NS --port PORT
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator

import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tidings.events import TERMINAL_TYPES
from tidings.keys import Keys

__all__ = ["create_app", "main"]

_TERMINAL = {t.value for t in TERMINAL_TYPES}


def create_app(redis_url: str, keys: Keys) -> Starlette:
    async def events(request: Request) -> Response:
        channel = keys.run_channel(request.path_params["run_id"])

        async def body() -> AsyncIterator[bytes]:
            redis = Redis.from_url(redis_url)  # one connection per viewer: the naive part
            pubsub = redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                yield b": subscribed\n\n"
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    event = json.loads(message["data"])  # per viewer, per event
                    data = json.dumps(event)
                    yield f"id: {event['id']}\nevent: {event['type']}\ndata: {data}\n\n".encode()
                    if event["type"] in _TERMINAL:
                        break
            finally:
                await pubsub.aclose()
                await redis.aclose()

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    async def ready(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/api/runs/{run_id}/events", events), Route("/readyz", ready)])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tidings.services.bench.naive_hub")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = create_app(args.redis, Keys(args.namespace))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
