"""Idle viewers: what 10,000 connected viewers of a quiet run cost a server at rest.

Per server, freshly started: its RSS (whole process tree) before any viewer; 10,000 viewers
(quick: 1,000) connect to one run, which gets a `log` marker once a second (each one is fanned
out to every viewer already connected, so not faster) until every viewer has received one (all
confirmed subscribed), then nothing; once the server has settled, the RSS again, then the CPU
over a 10 s idle window (quick: 2 s). The figure is (RSS settled - RSS before) per viewer for
Tidings, the baseline the same for the sse-starlette hub.

The idle CPU is what a server spends beyond heartbeats: Tidings and sse-starlette send a comment
every 15 s by default, which for 10,000 viewers that connected over many seconds would spread
over any window; here both are started with a 600 s interval, so none falls in the measurement
(the crowd counts the `: ping` comments it receives in the window, to show it). The window
starts once the server has settled (under 5% of a core for half a second, at most 30 s after the
last viewer saw its marker): "idle" is after the connection work, not the tail of it.
The naive hub needs a Redis connection per viewer (two sockets per viewer, and Valkey's default
10,000 clients), so it is measured only for crowds it can hold.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from .cpu import CpuWindow, settle, tree_rss
from .crowd import Crowd, crowd_processes
from .harness import Result, Servers
from .hubs import FLOOR, LABELS, NAIVE, SSE_STARLETTE, TIDINGS, Hub, running
from .measure import bench_bus, create_runs
from .paced import publish_marker, publish_terminal
from .report import ratio
from .targets import Target

__all__ = ["bench_idle"]

_TARGET_KB = 16.0
_NAIVE_MAX_VIEWERS = 4_000
_HEARTBEAT_S = 600.0


async def _idle(srv: Servers, hub: Hub, viewers: int, idle_s: float) -> dict[str, Any]:
    async with bench_bus(srv) as bus:
        await asyncio.sleep(0.5)  # let start-up garbage settle before the first sample
        rss0 = tree_rss(hub.proc.pid)
        [run_id] = await create_runs(bus, srv, 1)
        markers = 0

        async def nudge() -> None:
            nonlocal markers
            markers += 1
            await publish_marker(bus, [run_id])

        async with Crowd([hub.events_url(run_id)] * viewers, timed=0, log_dir=srv.dir) as crowd:
            ready_s = await crowd.ready(nudge)
            settle_s = await settle(hub.proc.pid)
            rss1 = tree_rss(hub.proc.pid)
            cpu = CpuWindow({"server": [hub.proc.pid]})
            pings = (await crowd.count()).pings
            cpu.start()
            await asyncio.sleep(idle_s)
            usage = cpu.stop()
            pings = (await crowd.count()).pings - pings
            rss2 = tree_rss(hub.proc.pid)
            await publish_terminal(bus, [run_id])
            await crowd.wait_done(timeout=60)
            report = await crowd.report()
    return {
        "rss_before_mb": round(rss0 / 2**20, 1),
        "rss_connected_mb": round(rss1 / 2**20, 1),
        "rss_after_idle_mb": round(rss2 / 2**20, 1),
        "kb_per_viewer": round((rss1 - rss0) / viewers / 1024, 2),
        "idle_cpu_pct": round(usage.percent("server"), 2),
        "idle_cpu_s": round(usage.cpu_s["server"], 3),
        "heartbeats_in_window": pings,
        "connect_s": round(ready_s, 2),
        "markers": markers,
        "settle_s": round(settle_s, 2),
        "crowd": report.summary(),
    }


async def bench_idle(srv: Servers, quick: bool) -> Result:
    viewers, idle_s = (1_000, 2.0) if quick else (10_000, 10.0)
    keys = [TIDINGS, SSE_STARLETTE, FLOOR]
    notes = []
    if viewers <= _NAIVE_MAX_VIEWERS:
        keys.append(NAIVE)
    else:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        notes.append(
            f"naive hub not measured: {viewers:,} viewers need {viewers:,} Redis connections "
            f"and {2 * viewers:,} descriptors (limit {limit:,})"
        )
    servers: dict[str, dict[str, Any]] = {}
    for key in keys:
        try:
            with running(srv, key, heartbeat_s=_HEARTBEAT_S) as hub:
                servers[key] = await _idle(srv, hub, viewers, idle_s)
        except Exception as exc:
            if key == TIDINGS:
                raise
            servers[key] = {"error": f"{type(exc).__name__}: {exc}"}
    per_viewer = {k: s.get("kb_per_viewer") for k, s in servers.items()}
    for key, s in servers.items():
        notes.append(
            f"{key}: {s['error']}"
            if "error" in s
            else f"{key}: {s['kb_per_viewer']:.1f} KB/viewer ({s['rss_before_mb']:.0f} -> "
            f"{s['rss_connected_mb']:.0f} MB), idle {s['idle_cpu_pct']:.2f}% of a core "
            f"({s['heartbeats_in_window']} heartbeats in the window), "
            f"{viewers:,} connected in {s['connect_s']:.1f} s ({s['markers']} markers), "
            f"settled in {s['settle_s']:.1f} s, "
            f"{s['crowd']['failed']} failed"
        )
    figure, sse = per_viewer[TIDINGS], per_viewer.get(SSE_STARLETTE)
    return Result(
        name="idle",
        title=f"idle viewers ({viewers:,} on one run, RSS per viewer)",
        figure=figure,
        unit="KB/viewer",
        baseline=sse,
        baseline_label=LABELS[SSE_STARLETTE],
        ratio=ratio(sse, figure),
        targets=[Target("figure", "<=", _TARGET_KB, f"<= {_TARGET_KB:.0f} KB per viewer")],
        details={
            "viewers": viewers,
            "idle_s": idle_s,
            "heartbeat_s": _HEARTBEAT_S,
            "crowd_processes": crowd_processes(viewers),
            "kb_per_viewer": per_viewer,
            "idle_cpu_pct": {k: s.get("idle_cpu_pct") for k, s in servers.items()},
            "servers": servers,
        },
        notes=notes,
    )
