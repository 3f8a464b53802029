"""Fair claiming: a burst of runs spreads over idle workers instead of piling onto the one that
hears the doorbell first (regression: 12 runs on 3 workers went 10/1/1)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from redis.asyncio import Redis

import tests.workflows_for_tests  # noqa: F401
from tests.engine_helpers import listening, until, wait_terminal
from tidings.bus import Bus
from tidings.control import Control
from tidings.keys import Keys

pytestmark = pytest.mark.slow

_WORKERS = 3
_RUNS = 60
_MIN_SHARE = 0.2  # each worker's least share of the burst (a third is perfectly even)
_BUSY_WITH = 16
_NEW = 6


async def _holders(redis: Redis, keys: Keys, run_ids: list[str]) -> list[str] | None:
    """The worker that started each run, once every run has started."""
    async with redis.pipeline(transaction=False) as pipe:
        for rid in run_ids:
            pipe.hget(keys.run(rid), "worker")
        names = await pipe.execute()
    return [name.decode() for name in names] if all(names) else None


async def test_a_burst_of_runs_spreads_over_the_workers(
    control: Control, bus: Bus, redis: Redis, keys: Keys, workers: Any
) -> None:
    await workers(_WORKERS)

    # Warm every worker up first: a worker's first run pays for imports and connections, which
    # would weigh on this measure for reasons that are not the claiming policy.
    async def all_warm() -> bool:
        recs = await asyncio.gather(
            *(control.start("t_steps", {"n": 1, "sleep_s": 0.2}) for _ in range(_WORKERS * 2))
        )
        for rec in recs:
            await wait_terminal(bus, rec.run_id)
        names = await _holders(redis, keys, [rec.run_id for rec in recs])
        return names is not None and len(set(names)) == _WORKERS

    await until(all_warm, what="every worker warmed up")

    # Runs that hold their slot well past the burst: each worker's count only grows meanwhile.
    burst = await asyncio.gather(
        *(control.start("t_steps", {"n": 1, "sleep_s": 30}) for _ in range(_RUNS))
    )
    run_ids = [rec.run_id for rec in burst]
    names = await until(lambda: _holders(redis, keys, run_ids), what="every run started")
    shares = Counter(names)
    assert len(shares) == _WORKERS, shares
    assert min(shares.values()) >= _MIN_SHARE * _RUNS, sorted(shares.values())
    for rid in run_ids:
        await control.signal(rid, "cancel")
    for rid in run_ids:
        await wait_terminal(bus, rid)


async def test_idle_workers_take_new_runs_before_a_busy_one(
    control: Control, bus: Bus, redis: Redis, keys: Keys, workers: Any
) -> None:
    # The busy worker comes first, so it is also the first to hear every doorbell.
    await workers(1)
    held = await asyncio.gather(
        *(control.start("t_steps", {"n": 1, "sleep_s": 30}) for _ in range(_BUSY_WITH))
    )
    await until(lambda: _holders(redis, keys, [r.run_id for r in held]), what="the busy worker")
    await workers(2)
    await until(lambda: listening(redis, keys, 3), what="two idle workers listening")
    busy_name = (await _holders(redis, keys, [held[0].run_id]) or [""])[0]

    async def idle_warm() -> bool:  # (see above) each idle worker has run something
        recs = await asyncio.gather(*(control.start("t_steps", {"n": 1}) for _ in range(4)))
        for rec in recs:
            await wait_terminal(bus, rec.run_id)
        names = set(await _holders(redis, keys, [rec.run_id for rec in recs]) or [])
        return len(names - {busy_name}) == 2

    await until(idle_warm, what="the idle workers warmed up")
    new = await asyncio.gather(
        *(control.start("t_steps", {"n": 1, "sleep_s": 30}) for _ in range(_NEW))
    )
    names = await until(lambda: _holders(redis, keys, [r.run_id for r in new]), what="new runs")
    shares = Counter(names)
    assert shares[busy_name] <= 1, shares
    for rec in [*held, *new]:
        await control.signal(rec.run_id, "cancel")
    for rec in [*held, *new]:
        await wait_terminal(bus, rec.run_id)
