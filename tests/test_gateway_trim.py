"""Freed memory is given back once the last viewer leaves (`services/gateway/trim.py`)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.test_gateway_support import GatewayFactory, wait_for
from tidings.bus import Bus
from tidings.events import EventType
from tidings.runs import RunStore
from tidings.services.gateway.metrics import Stats
from tidings.services.gateway.trim import Trimmer, malloc_trim


def test_trims_once_each_time_the_last_viewer_leaves() -> None:
    viewers = [0]
    calls: list[int] = []
    stats = Stats()
    trimmer = Trimmer(lambda: viewers[0], lambda: _record(calls), stats)
    trimmer.check()
    assert calls == []  # never busy: nothing to give back
    for count in (3, 5, 1, 0, 0, 0):
        viewers[0] = count
        trimmer.check()
    assert len(calls) == 1 and stats.memory_trims == 1
    for count in (2, 0, 4, 0):
        viewers[0] = count
        trimmer.check()
    assert len(calls) == 3 and stats.memory_trims == 3


def test_without_malloc_trim_nothing_is_called() -> None:
    trimmer = Trimmer(lambda: 0, None, Stats())
    trimmer.check()  # no error, nothing to call


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_trim_resolves_and_runs_on_glibc() -> None:
    trim = malloc_trim()
    if trim is None:
        pytest.skip("no glibc malloc_trim here (musl?)")
    assert trim() in (0, 1)


@pytest.mark.skipif(malloc_trim() is None, reason="no glibc malloc_trim here")
async def test_a_gateway_trims_after_its_last_viewer_leaves(
    gateway_factory: GatewayFactory, store: RunStore, bus: Bus
) -> None:
    gw = await gateway_factory()
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    viewers = [await gw.stream(f"/api/runs/{run.run_id}/events") for _ in range(3)]
    for viewer in viewers:
        await viewer.take(1)

    async def trims() -> float:
        return (await gw.metrics())["tidings_gateway_memory_trims_total"]

    assert await trims() == 0  # viewers connected: nothing given back yet
    viewers.pop().close()
    await asyncio.sleep(1.5)
    assert await trims() == 0  # two are still there
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    for viewer in viewers:
        await viewer.read_to_end()
        viewer.close()
    await wait_for(trims, "a trim after the last viewer left", timeout=10)
    await asyncio.sleep(1.5)
    assert await trims() == 1  # once per busy period


def _record(calls: list[int]) -> int:
    calls.append(1)
    return 1
