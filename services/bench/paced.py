"""The publisher of the fan-out benchmarks: events at a steady pace, as a live run produces them.

A paced load gives every run `rate` events per second for `seconds`, and staggers the runs evenly
over each period, so 1,000 runs at 5 ev/s are 5,000 evenly spaced events a second, not 1,000
events five times a second. Events due at the same instant go out in one pipelined
`publish_raw` (one script call per run), a lone event as one round trip: one run at 40 ev/s is
40 separate publishes. A late tick catches up at once rather than shifting the schedule.

Each `task_progress` carries `data: {"t": time.monotonic() when sent, "w": load tag}`: the timed
viewers subtract `t` from their arrival time (CLOCK_MONOTONIC is shared across processes) and
file the sample under `w`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from tidings.bus import Bus, PublishCommand
from tidings.events import EventType

__all__ = ["publish_burst", "publish_marker", "publish_paced", "publish_terminal"]

_BATCH = 500


async def _send(bus: Bus, commands: Sequence[PublishCommand]) -> None:
    for start in range(0, len(commands), _BATCH):
        for outcome in await bus.publish_raw(commands[start : start + _BATCH]):
            if isinstance(outcome, Exception):
                raise outcome


def _progress(bus: Bus, run_id: str, j: int, tag: str) -> PublishCommand:
    return bus.command(
        run_id,
        EventType.TASK_PROGRESS,
        f"step {j}",
        task="bench",
        data={"t": time.monotonic(), "w": tag},
    )


async def publish_paced(
    bus: Bus, run_ids: Sequence[str], rate: float, seconds: float, tag: str
) -> int:
    """`rate` events/s to each run for `seconds`; returns the number of events per run."""
    per_run = max(1, round(rate * seconds))
    runs = len(run_ids)
    slots = per_run * runs
    step = 1.0 / (rate * runs)  # slot s is due at t0 + s * step: run s % runs, its event s // runs
    t0 = time.monotonic()
    sent = 0
    while sent < slots:
        wait = t0 + sent * step - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        due = min(slots, int((time.monotonic() - t0) / step) + 1)
        commands = [_progress(bus, run_ids[s % runs], s // runs, tag) for s in range(sent, due)]
        await _send(bus, commands)
        sent = due
    return per_run


async def publish_burst(bus: Bus, run_ids: Sequence[str], events: int, tag: str) -> int:
    """`events` events to each run as fast as pipelined batches go; returns `events`."""
    slots = [(run_id, j) for j in range(events) for run_id in run_ids]
    for start in range(0, len(slots), 100):
        batch = slots[start : start + 100]
        await _send(bus, [_progress(bus, run_id, j, tag) for run_id, j in batch])
    return events


async def publish_marker(bus: Bus, run_ids: Sequence[str]) -> None:
    """A `log` event to every run: what tells a freshly connected viewer it is subscribed."""
    await _send(bus, [bus.command(run_id, EventType.LOG, "marker") for run_id in run_ids])


async def publish_terminal(bus: Bus, run_ids: Sequence[str]) -> None:
    """`workflow_completed` to every run: every viewer's stream ends."""
    await _send(
        bus,
        [bus.command(r, EventType.WORKFLOW_COMPLETED, "done", progress=100) for r in run_ids],
    )
