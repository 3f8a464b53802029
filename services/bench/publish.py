"""Publish throughput: events per second ONE WORKER publishes for a run.

Figure: a real worker process (`python -m tidings.services.worker`, default settings) runs
`bench_emit` (`tidings.services.bench.workflows`), a workflow that calls `run.emit` N times in a
loop and nothing else.
The rate is N over the time between the run's `running` and `completed` lifecycle messages, as a
subscriber of the lifecycle channel receives them; both are published by Redis inside the publish
script, so the span covers the whole run: the loop, the engine's pipelined flushes, and the
terminal event, which is only published once every event before it is in the log. The run's
`seq` must then equal N + 2 (started, N events, completed): nothing lost.

Baseline, side by side on the same server: the same N-event shape published from the bench
process the obvious way, one awaited `Bus.publish` round trip per event (same script, same fence
by attempt) — what a worker that awaits each publish does. Secondary lines: the hand-written
three-round-trip publish (XADD, HSET, PUBLISH, no checks), and `Bus.publish_many` driven directly
from the bench process (the bus's ceiling without the engine). The sequential baselines publish
fewer events than the worker: a rate needs no more than a few seconds of samples.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from tidings.bus import Bus
from tidings.control import Control
from tidings.events import Event, EventType, now_iso
from tidings.redis import connect
from tidings.runs import RunStore
from tidings.settings import Settings

from .harness import BenchError, Result, Servers
from .listen import next_matching, wait_workers
from .targets import Target
from .workflows import EMIT

__all__ = ["bench_publish"]

_TARGET = 20_000.0
_BATCH = 100
_ENDED = ("completed", "failed", "cancelled")


async def _drive(total: int, concurrency: int, one: Callable[[int], Awaitable[object]]) -> float:
    """Events/s for `total` calls of `one`, `concurrency` at a time."""

    async def publisher(start: int) -> None:
        for i in range(start, total, concurrency):
            await one(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(publisher(k) for k in range(concurrency)))
    return total / (time.perf_counter() - t0)


async def _worker_once(srv: Servers, control: Control, n: int) -> dict[str, Any]:
    """One `bench_emit` run of `n` events on the worker; its rate as a subscriber saw it."""
    run_id = uuid.uuid4().hex
    pubsub = control.redis.pubsub()
    await pubsub.subscribe(srv.keys.runs_channel)
    try:
        await control.start(EMIT, {"n": n}, run_id=run_id)
        began, _ = await next_matching(
            pubsub,
            lambda e: e.get("run_id") == run_id and e.get("status") == "running",
            30,
            "the emit run's start",
        )
        ended, last = await next_matching(
            pubsub,
            lambda e: e.get("run_id") == run_id and e.get("status") in _ENDED,
            60 + n / 1000,
            "the emit run's end",
        )
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    record = await control.get(run_id)
    if last["status"] != "completed":
        raise BenchError(f"emit run {last['status']}: {record.error}")
    if record.seq != n + 2:
        raise BenchError(f"emit run logged {record.seq} events, expected {n + 2}")
    loop_s = float(record.result["loop_s"]) if isinstance(record.result, dict) else 0.0
    return {"rate": n / (ended - began), "wall_s": ended - began, "loop_s": loop_s}


async def _worker(srv: Servers, n: int, warmup: int) -> dict[str, Any]:
    proc = srv.worker(test_workflows="tidings.services.bench.workflows")
    redis = connect(srv.redis_url)
    settings = Settings(redis_url=srv.redis_url, namespace=srv.namespace)
    control = Control(redis, srv.keys, Bus(redis, srv.keys), settings)
    try:
        await wait_workers(redis, srv.keys, 1)
        await _worker_once(srv, control, warmup)  # imports, script cache, pool connections
        return await _worker_once(srv, control, n)
    finally:
        await redis.aclose()
        srv.stop(proc)


async def _one_by_one(bus: Bus, run_id: str, total: int) -> float:
    """The baseline: each event published and awaited before the next, like the worker's."""

    async def one(i: int) -> None:
        await bus.publish(
            run_id, EventType.TASK_PROGRESS, f"step {i}", task="bench", data={"i": i}, attempt=1
        )

    return await _drive(total, 1, one)


async def _pipelined(bus: Bus, run_id: str, total: int, in_flight: int) -> float:
    """`Bus.publish_many` from this process: `_BATCH` script calls per round trip."""

    async def one(b: int) -> None:
        commands = [
            bus.command(
                run_id,
                EventType.TASK_PROGRESS,
                f"step {i}",
                task="bench",
                data={"i": i},
                attempt=1,
            )
            for i in range(b * _BATCH, min((b + 1) * _BATCH, total))
        ]
        for outcome in await bus.publish_many(commands):
            if isinstance(outcome, Exception):
                raise outcome

    batches = -(-total // _BATCH)
    return await _drive(batches, in_flight, one) * total / batches


async def _naive(redis: Redis, srv: Servers, run_id: str, total: int) -> float:
    """XADD, HSET, PUBLISH: three awaited round trips per event, no fence, no seq."""
    keys = srv.keys

    async def one(i: int) -> None:
        event = Event(
            run_id=run_id, type=EventType.TASK_PROGRESS, task="bench", message=f"step {i}"
        )
        body = event.model_dump_json()
        entry = await redis.xadd(keys.events(run_id), {"e": body}, maxlen=10_000, approximate=True)
        await redis.hset(  # type: ignore[misc]
            keys.run(run_id),
            mapping={"last_event_id": entry, "updated_at": now_iso(), "message": event.message},
        )
        await redis.publish(keys.run_channel(run_id), body)

    return await _drive(total, 1, one)


async def _from_here(srv: Servers, sequential: int, pipelined: int) -> dict[str, float]:
    redis = connect(srv.redis_url)
    try:
        store = RunStore(redis, srv.keys)
        bus = Bus(redis, srv.keys)
        runs = [(await store.create("bench", None)).run_id for _ in range(3)]
        # Warm up every path (script load, connections) before measuring.
        await _one_by_one(bus, runs[0], 300)
        await _naive(redis, srv, runs[1], 300)
        await _pipelined(bus, runs[2], 2_000, 4)
        return {
            "one_by_one": await _one_by_one(bus, runs[0], sequential),
            "naive": await _naive(redis, srv, runs[1], sequential // 2),
            "pipelined": await _pipelined(bus, runs[2], pipelined, 4),
        }
    finally:
        await redis.aclose()


async def bench_publish(srv: Servers, quick: bool) -> Result:
    n, warmup, sequential, pipelined = (
        (30_000, 2_000, 3_000, 10_000) if quick else (100_000, 5_000, 10_000, 40_000)
    )
    worker = await _worker(srv, n, warmup)
    here = await _from_here(srv, sequential, pipelined)
    figure, baseline = worker["rate"], here["one_by_one"]
    return Result(
        name="publish",
        title="publish: events/s of one worker (run.emit)",
        figure=figure,
        unit="events/s",
        baseline=baseline,
        baseline_label="Bus.publish, one awaited round trip each",
        ratio=figure / baseline,
        targets=[Target("figure", ">=", _TARGET, f">= {_TARGET:,.0f}/s")],
        details={
            "events": n,
            "worker_wall_s": worker["wall_s"],
            "worker_loop_s": worker["loop_s"],
            "one_by_one_events": sequential,
            "one_by_one_events_per_s": round(baseline),
            "naive_3rt_events_per_s": round(here["naive"]),
            "publish_many_events_per_s": round(here["pipelined"]),
            "publish_many_batch": _BATCH,
        },
        notes=[
            f"worker: {n:,} events, lifecycle running -> completed in {worker['wall_s']:.2f} s "
            f"(the workflow's emit loop itself: {worker['loop_s']:.2f} s); seq checked gapless",
            f"from the bench process: XADD+HSET+PUBLISH, 3 awaited round trips: "
            f"{here['naive']:,.0f}/s; Bus.publish_many, {_BATCH} per round trip, 4 in flight: "
            f"{here['pipelined']:,.0f}/s",
        ],
    )
