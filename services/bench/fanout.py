"""Fan-out burst: events per second one gateway process delivers to N SSE viewers of one run.

Setup, identical for the gateway and for the naive hub (`naive_hub.py`, same uvicorn): a run,
N viewers in a separate process (`viewers.py`), a marker event published every 50 ms until every
viewer has received one (so all are subscribed), then E `task_progress` events published as fast
as `Bus.publish_many` goes, then `workflow_completed`. The figure is N x E over the time from the
first publish to the last viewer's terminal event; every viewer must have received all E events.
A burst lets the server batch many events into one write; the paced shapes a live run produces
are measured by `fanout_paced.py`, `fanout_manyruns.py` and `fanout_idle.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from tidings.bus import Bus
from tidings.embedded import die_with_parent, free_port
from tidings.events import EventType
from tidings.redis import connect
from tidings.runs import RunStore

from .harness import BenchError, Result, Servers
from .targets import Target

__all__ = ["bench_fanout"]

_TARGET = 100_000.0


async def _measure(srv: Servers, bus: Bus, base_url: str, viewers: int, events: int) -> float:
    """Delivered events/s to `viewers` viewers of a fresh run on the server at `base_url`."""
    run_id = (await RunStore(bus.redis, srv.keys).create("bench", None)).run_id
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings.services.bench.viewers",
        f"{base_url}/api/runs/{run_id}/events",
        str(viewers),
        "--timeout",
        "90",
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    assert proc.stdout is not None
    try:
        ready = asyncio.create_task(proc.stdout.readline())
        markers = 0
        while not ready.done():
            await bus.publish(run_id, EventType.LOG, f"marker {markers}")
            markers += 1
            await asyncio.wait([ready], timeout=0.05)
        if ready.result().strip() != b"ready":
            raise BenchError(f"viewers did not get ready: {ready.result()!r}")
        t0 = time.monotonic()
        await _publish_burst(bus, run_id, events)
        await bus.publish(run_id, EventType.WORKFLOW_COMPLETED, "done", progress=100)
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        report: dict[str, Any] = json.loads(line)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
    counts: list[int] = report["counts"]
    done = [t for t in report["done"] if t is not None]
    if report["errors"] or len(done) < viewers or min(counts) != events:
        raise BenchError(
            f"at {base_url}: {len(done)}/{viewers} viewers finished, events per viewer "
            f"{min(counts)}..{max(counts)} of {events}; errors: {report['errors']}"
        )
    return float(sum(counts) / (max(done) - t0))


async def _publish_burst(bus: Bus, run_id: str, events: int, batch: int = 100) -> None:
    """As fast as one process can: pipelined batches, so the server under test is the limit."""
    for start in range(0, events, batch):
        commands = [
            bus.command(
                run_id,
                EventType.TASK_PROGRESS,
                f"step {i}",
                task="bench",
                progress=i * 100 / events,
                data={"i": i},
            )
            for i in range(start, min(start + batch, events))
        ]
        for outcome in await bus.publish_many(commands):
            if isinstance(outcome, Exception):
                raise outcome


async def bench_fanout(srv: Servers, quick: bool) -> Result:
    viewers, events = (50, 1_000) if quick else (100, 2_000)
    redis = connect(srv.redis_url, max_connections=32)
    bus = Bus(redis, srv.keys)
    try:
        port = free_port()
        hub = srv.python(
            "tidings.services.bench.naive_hub",
            "--redis",
            srv.redis_url,
            "--namespace",
            srv.namespace,
            "--port",
            str(port),
            name="naive-hub",
        )
        hub_url = f"http://127.0.0.1:{port}"
        srv.wait_http(hub, hub_url + "/readyz")
        baseline = await _measure(srv, bus, hub_url, viewers, events)
        srv.stop(hub)
        _, url = srv.gateway()
        figure = await _measure(srv, bus, url, viewers, events)
    finally:
        await redis.aclose()
    return Result(
        name="fanout",
        title=f"fan-out burst ({viewers} viewers x {events:,} events)",
        figure=figure,
        unit="events/s",
        baseline=baseline,
        baseline_label="naive hub: connection + re-encode per viewer",
        ratio=figure / baseline,
        targets=[Target("figure", ">=", _TARGET, f">= {_TARGET:,.0f}/s")],
        details={"viewers": viewers, "events": events},
        notes=["one gateway process; viewers in another process; publisher in this one"],
    )
