"""One soak: servers up, a warm-up, the baseline, the load with its faults and abuse, the checks.

The baseline is taken in the same processes after a warm-up that goes through every code path
the load will (each workflow through each route, every viewer kind, a slow viewer, one pass of
the abuse catalog to every gateway) and then brings each gateway to its viewer high-water mark
(as many viewers of one live run at once as the whole load has), so what is compared afterwards
is growth, not first use and not the allocator keeping its high-water mark.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import tempfile
import time
import uuid
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.redis import connect
from tidings.settings import Settings

from .abuse import Abuse
from .catalog import Item, catalog
from .checks import RunData, check_runs, check_viewers, read_runs
from .client import open_conn
from .faults import Faults
from .procs import Child, Stack, raised_limits
from .profile import Profile
from .report import Report
from .resources import settle, snapshot
from .workload import Load
from .world import World

__all__ = ["Report", "soak"]

log = logging.getLogger(__name__)

_WARMUP = Profile(
    name="warm-up",
    gateways=1,
    workers=1,
    runs=5,
    viewers=24,
    start_window_s=1.0,
    worker_kills=0,
    gateway_restarts=0,
    valkey_restarts=0,
    valkey_down_s=0.0,
    abuse_requests=0,
    random_signals=2,
    slow_share=0.1,
    token_delay_ms=0.0,
    deadline_s=45.0,
)


def _child_settings(profile: Profile) -> dict[str, object]:
    fields = Settings.model_fields
    settings: dict[str, object] = {
        "llm_token_delay_ms": profile.token_delay_ms,
    }
    settings.update(raised_limits(profile.viewers, profile.runs))
    for name in ("header_timeout_s", "body_timeout_s"):  # the slow-client abuse waits for them
        if name in fields:
            settings[name] = 2.0
    return settings


async def soak(profile: Profile, seed: int, workdir: Path | None = None) -> Report:
    """Run one soak. Call from the main thread (the Valkey's parent-death signal needs it)."""
    report = Report(profile.name, seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tidings-soak-") as tmp:
        root = workdir or Path(tmp)
        stack = Stack(root, f"soak{uuid.uuid4().hex[:8]}", _child_settings(profile))
        stack.start_valkey()
        try:
            await _soak(stack, profile, seed, report)
        finally:
            report.stack = stack.describe()
            stack.close()
    report.seconds = time.monotonic() - started
    return report


async def _soak(stack: Stack, profile: Profile, seed: int, report: Report) -> None:
    t_start = time.monotonic()
    await asyncio.gather(*(stack.start_gateway(i) for i in range(profile.gateways)))
    for i in range(profile.workers):
        await stack.start_worker(i)
    redis = connect(stack.valkey.url, retries=10, client_name="tidings-soak-driver")
    try:
        warm, warm_failures = await _warm_up(stack, redis, profile, seed)
        log.info("warm-up done after %.1f s", time.monotonic() - t_start)
        report.baseline = await snapshot(stack, redis)
        judged = {c.label: c.pid for c in stack.gateways + stack.workers}

        world = World(stack, profile, seed)
        load = Load(world)
        run_ids: list[str] = []
        seed_runs: list[str] = []
        abuse = Abuse(world, run_ids, seed_runs)
        faults = Faults(world, redis)
        window = profile.start_window_s + 10.0
        feeder = world.spawn(_feed_ids(load, run_ids, seed_runs, window), name="ids")

        async def timed(name: str, coro: Coroutine[Any, Any, None]) -> None:
            await coro
            log.info("%s done at %.1f s", name, world.now())

        results = await asyncio.gather(
            timed("load", load.run()),
            timed("abuse", abuse.run(profile.abuse_requests, window)),
            timed("faults", faults.run()),
            return_exceptions=True,
        )
        feeder.cancel()
        for what, result in zip(("load", "abuse", "faults"), results, strict=True):
            if isinstance(result, BaseException):
                world.fail(f"{what} crashed: {result!r}")
        log.info("load done after %.1f s", world.now())
        await _until_runs_end(world, redis)
        log.info("every run ended after %.1f s", world.now())
        report.faults = faults.done
        report.abuse_sent = sum(abuse.sent.values())
        report.abuse_answers = dict(abuse.answers)
        report.abuse_classes = dict(abuse.classes)
        report.abuse_unexpected = dict(abuse.unexpected)
        report.signals = dict(load.signals_sent)
        report.api_statuses = dict(world.statuses)
        await world.close()

        runs = await read_runs(redis, stack.keys)
        if log.isEnabledFor(logging.INFO):
            for run in sorted(runs.values(), key=_duration)[-5:]:
                log.info(
                    "slow run %s %s: %.1f s, %s",
                    run.workflow,
                    run.run_id,
                    _duration(run),
                    _longest_gap(run),
                )
        report.runs = check_runs(runs, warm.runs + load.runs)
        report.viewers = check_viewers(runs, load.viewers)
        report.load_runs = sum(r.run_id is not None for r in load.runs)
        report.warmup_runs = sum(r.run_id is not None for r in warm.runs) + len(stack.gateways)
        warm_viewers = check_viewers(runs, warm.viewers)
        report.failures += [f"warm-up: {p}" for p in warm_viewers.failures + warm_failures]
        for rec in load.runs:
            report.failures += [
                f"run #{rec.plan.index} ({rec.plan.workflow}): {p}" for p in rec.problems
            ]
        report.failures += world.failures + report.runs.failures + report.viewers.failures
        report.final = await settle(
            stack, redis, report.baseline, judged, report.failures, report.memory
        )
    finally:
        await redis.aclose()


def _duration(run: RunData) -> float:
    try:
        start = datetime.fromisoformat(run.record["created_at"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(run.record["finished_at"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 0.0
    return (end - start).total_seconds()


def _longest_gap(run: RunData) -> str:
    stamps = [datetime.fromisoformat(e["ts"].replace("Z", "+00:00")) for e in run.events]
    gaps = [((b - a).total_seconds(), i) for i, (a, b) in enumerate(itertools.pairwise(stamps))]
    if not gaps:
        return ""
    gap, i = max(gaps)
    before, after = run.events[i], run.events[i + 1]
    return (
        f"longest gap {gap:.1f} s between {before['type']} {before.get('message', '')[:40]!r} "
        f"and {after['type']} {after.get('message', '')[:60]!r}"
    )


async def _feed_ids(load: Load, run_ids: list[str], seed_runs: list[str], window: float) -> None:
    """Hands the abuse the ids of runs as they start (signals to real runs, real cursors)."""
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        for rec in load.runs:
            if rec.run_id and rec.run_id not in run_ids and rec.plan.workflow != "chat":
                run_ids.append(rec.run_id)
                if rec.plan.route == "seed000":
                    seed_runs.append(rec.run_id)
        await asyncio.sleep(0.5)


async def _warm_up(
    stack: Stack, redis: Redis, profile: Profile, seed: int
) -> tuple[Load, list[str]]:
    world = World(stack, _WARMUP, seed + 1)
    load = Load(world)
    abuse = Abuse(world, [], [])
    gate = asyncio.Semaphore(16)

    async def send(item: Item, gw: Child) -> None:
        async with gate:
            await abuse.send(item, gw)

    async def abuse_once() -> None:
        await asyncio.sleep(3.0)  # a few runs exist by then: real ids for the cursors
        recs = [r for r in load.runs if r.run_id]
        run = next((r.run_id for r in recs if r.plan.workflow != "chat"), "none")
        seed_run = next((r.run_id for r in recs if r.plan.route == "seed000"), None)
        items = catalog(run or "none", seed_run, abuse.max_body)
        await asyncio.gather(*(send(item, gw) for gw in stack.gateways for item in items))

    await asyncio.gather(load.run(), abuse_once())
    for gw in stack.gateways:
        await _crowd(world, gw, profile.viewers)
    await _until_runs_end(world, redis)
    await world.close()
    return load, world.failures + [p for r in load.runs for p in r.problems]


async def _crowd(world: World, gw: Child, n: int) -> None:
    """`n` viewers of one live run on one gateway at once, as many as the whole load has: the
    gateway's allocator reaches the high-water mark the load can bring it to, so the memory
    compared afterwards is growth, not the first crowd's."""
    monty = {
        "min_sleep_s": 0.5,
        "max_sleep_s": 0.5,
        "max_iterations": 6,
        "progress_interval_s": 0.1,
    }
    resp = await world.call_until(
        "start",
        "POST",
        "/api/runs",
        prefer=gw.slot,
        done={201},
        json={"workflow": "monty", "input": monty},
    )
    if resp is None or resp.status_code != 201:
        world.fail(f"warm-up crowd on {gw.label}: no run ({resp and resp.status_code})")
        return
    path = f"/api/runs/{resp.json()['run_id']}/events"

    async def view() -> None:
        conn = await open_conn(gw.port, "GET", path, headers={"Accept": "text/event-stream"})
        try:
            while await conn.read() is not None:
                pass
        finally:
            conn.close()

    async with asyncio.timeout(60):
        results = await asyncio.gather(*(view() for _ in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        world.fail(f"warm-up crowd on {gw.label}: {len(errors)} viewers failed: {errors[0]!r}")


async def _until_runs_end(world: World, redis: Redis) -> None:
    """Until no run of the namespace is unfinished (or the deadline)."""
    keys = world.stack.keys
    while not world.past_deadline():
        try:
            if await redis.zcard(keys.active) == 0:
                return
        except (OSError, RedisError):
            pass
        await asyncio.sleep(0.25)
