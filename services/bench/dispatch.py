"""Dispatch latency: enqueue → the run's `workflow_started` seen by a subscriber.

Ours: `Control.start` (what `POST /api/runs` calls) of a one-iteration `monty` run against one
idle Tidings worker, timed until `workflow_started` arrives on the run's channel (subscribed
before the start). Baseline: plain arq with its defaults, `enqueue_job` of a trivial job that
publishes on start, timed the same way. Samples are sequential with a short random pause, so each
one starts from an idle worker, as a user's click does; the pause between arq samples is spread
over its poll period so they do not phase-lock to its poll loop.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from tidings.bus import Bus
from tidings.control import Control
from tidings.redis import connect
from tidings.settings import Settings

from .arq_baseline import connect_pool
from .harness import Result, Servers, percentile
from .listen import next_matching, wait_workers
from .targets import Target

__all__ = ["bench_dispatch"]

_TARGET_MS = 5.0
_TRIVIAL = {"min_sleep_s": 0.01, "max_sleep_s": 0.01, "max_iterations": 1}


async def _ours(srv: Servers, samples: int) -> tuple[list[float], list[float]]:
    """(enqueue → workflow_started, time spent inside Control.start), in ms."""
    redis = connect(srv.redis_url)
    settings = Settings(redis_url=srv.redis_url, namespace=srv.namespace)
    control = Control(redis, srv.keys, Bus(redis, srv.keys), settings)
    await wait_workers(redis, srv.keys, 1)  # listening, so `monty` is in the catalog
    pubsub = redis.pubsub()
    out: list[float] = []
    in_start: list[float] = []
    try:
        for i in range(samples + 2):  # the first two warm up the worker's code paths
            run_id = uuid.uuid4().hex
            await pubsub.subscribe(srv.keys.run_channel(run_id))
            t0 = time.monotonic()
            await control.start("monty", _TRIVIAL, run_id=run_id)
            enqueued = time.monotonic()
            t1, _ = await next_matching(
                pubsub, lambda e: e.get("type") == "workflow_started", 30, "workflow_started"
            )
            await pubsub.unsubscribe(srv.keys.run_channel(run_id))
            if i >= 2:
                out.append((t1 - t0) * 1000)
                in_start.append((enqueued - t0) * 1000)
            await asyncio.sleep(random.uniform(0.02, 0.06))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()
    return out, in_start


def _tagged(tag: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("tag") == tag


async def _arq(srv: Servers, samples: int) -> list[float]:
    queue = f"{srv.namespace}:arq-dispatch"
    worker = srv.python(
        "tidings.services.bench.arq_baseline",
        "--redis",
        srv.redis_url,
        "--queue",
        queue,
        name="arq",
    )
    pool = await connect_pool(srv.redis_url)
    pubsub = pool.pubsub()
    channel = f"{srv.namespace}:arq-started"
    await pubsub.subscribe(channel)
    out: list[float] = []
    try:
        # Wait until the worker is up: the first job's latency includes its start-up.
        await pool.enqueue_job("started", channel, "warmup", _queue_name=queue)
        await next_matching(pubsub, lambda e: e.get("tag") == "warmup", 30, "arq warm-up job")
        for i in range(samples):
            tag = f"s{i}"
            t0 = time.monotonic()
            await pool.enqueue_job("started", channel, tag, _queue_name=queue)
            t1, _ = await next_matching(pubsub, _tagged(tag), 30, "arq job")
            out.append((t1 - t0) * 1000)
            # A pause spread over the whole poll period: a fixed one would phase-lock the
            # samples to arq's poll loop and always hit the same point of it.
            await asyncio.sleep(random.uniform(0.02, 0.52))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await pool.aclose()
        srv.stop(worker)
    return out


async def bench_dispatch(srv: Servers, quick: bool) -> Result:
    samples, arq_samples = (20, 8) if quick else (60, 20)
    worker = srv.worker()
    try:
        ours, in_start = await _ours(srv, samples)
    finally:
        srv.stop(worker)
    theirs = await _arq(srv, arq_samples)
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    b50, b99 = percentile(theirs, 50), percentile(theirs, 99)
    return Result(
        name="dispatch",
        title="dispatch latency p50 (enqueue -> workflow_started)",
        figure=p50,
        unit="ms",
        baseline=b50,
        baseline_label="plain arq, poll_delay 0.5 s",
        ratio=b50 / p50,
        targets=[Target("figure", "<=", _TARGET_MS, f"p50 <= {_TARGET_MS:.0f} ms")],
        details={
            "p50_ms": p50,
            "p99_ms": p99,
            "samples": len(ours),
            "control_start_p50_ms": percentile(in_start, 50),
            "arq_p50_ms": b50,
            "arq_p99_ms": b99,
            "arq_samples": len(theirs),
        },
        notes=[
            f"p99 {p99:.2f} ms (arq p99 {b99:.1f} ms); of the p50, Control.start itself "
            f"(validate, record, enqueue, doorbell) took {percentile(in_start, 50):.2f} ms",
        ],
    )
