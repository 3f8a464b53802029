"""Plain arq, as the baselines of the dispatch and recovery benchmarks.

A stock `arq.worker.Worker` with arq's defaults (poll_delay 0.5 s, job_timeout 300 s unless
`--job-timeout` is given) and two jobs that announce on a pub/sub channel that they started:
`started` returns at once, `hang` then sleeps for an hour (to be killed). Only the serializer
differs from the defaults: JSON instead of pickle, which changes nothing measured here.

    python -m tidings.services.bench.arq_baseline --redis URL --queue NAME [--job-timeout S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker

__all__ = ["announce", "connect_pool", "main"]


async def announce(ctx: dict[str, Any], channel: str, tag: str) -> None:
    payload = {"tag": tag, "pid": os.getpid(), "try": ctx.get("job_try", 1)}
    await ctx["redis"].publish(channel, json.dumps(payload))


async def started(ctx: dict[str, Any], channel: str, tag: str) -> None:
    await announce(ctx, channel, tag)


async def hang(ctx: dict[str, Any], channel: str, tag: str) -> None:
    await announce(ctx, channel, tag)
    await asyncio.sleep(3600)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _loads(raw: bytes) -> Any:
    return json.loads(raw)


async def connect_pool(redis_url: str) -> ArqRedis:
    """The enqueueing side, with the workers' serializer."""
    pool: ArqRedis = await create_pool(
        RedisSettings.from_dsn(redis_url), job_serializer=_dumps, job_deserializer=_loads
    )
    return pool


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tidings.services.bench.arq_baseline")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--job-timeout", type=float, default=300.0)
    args = parser.parse_args()
    worker = Worker(
        functions=[started, hang],
        queue_name=args.queue,
        redis_settings=RedisSettings.from_dsn(args.redis),
        job_timeout=args.job_timeout,
        job_serializer=_dumps,
        job_deserializer=_loads,
    )
    worker.run()


if __name__ == "__main__":
    main()
