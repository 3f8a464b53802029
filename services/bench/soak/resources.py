"""What a soak measures in the processes and the Valkey before and after the load, and how it
judges the difference.

- **Memory**: RSS (psutil) of every gateway and worker, the median of three samples 0.3 s apart.
  A process that lived from the baseline to the end may be at most 10 % above its baseline; a
  replacement (a restarted gateway, a worker started after a `kill -9`) is reported, not judged.
- **Tasks**: each gateway's `tidings_gateway_tasks` (asyncio tasks) back to its slot's baseline
  (a replacement runs the same code), its viewer gauges at 0, and no viewer lease left live in
  Redis.
- **Connections** (`CLIENT LIST`, each attributed to its process by its local port): none held by
  a process that is not one of the soak's live ones; subscribed connections back to the
  baseline's exactly; command connections grown by at most a pool's working set (see
  `CONNECTION_GROWTH`).

Everything is polled for up to 20 s after the load has gone, until it holds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

import httpx
import psutil
from redis.asyncio import Redis

from .procs import Child, Stack

__all__ = ["MEMORY_TOLERANCE", "Snapshot", "settle", "snapshot"]

MEMORY_TOLERANCE = 0.10
# A redis-py pool keeps every connection a burst made it open (it never shrinks), so command
# connections may grow up to a pool's working set: the gateway's concurrent log reads (32) and
# request handlers, a worker's loops and jobs. A connection per viewer, run or request that is
# never closed grows past these with the load (100 viewers in the short profile, 1,000 long).
CONNECTION_GROWTH = {"gateway": 48, "worker": 16}
_COUNTERS = (
    "sse_messages",
    "catchups",
    "replayed_events",
    "overflows",
    "slow_disconnects",
    "resyncs",
    "pubsub_reconnects",
    "redis_retries",
    "memory_trims",
)
_SETTLE_S = 20.0


@dataclass
class Snapshot:
    rss: dict[str, int] = field(default_factory=dict)  # process label -> bytes
    tasks: dict[str, int] = field(default_factory=dict)  # gateway label -> asyncio tasks
    viewers: dict[str, int] = field(default_factory=dict)  # gateway label -> viewers gauges
    clients: int = 0  # Valkey connections, the soak's own excluded
    clients_by: dict[str, int] = field(default_factory=dict)  # "<label>[/pubsub]" -> count
    counters: dict[str, int] = field(default_factory=dict)  # gateway counters, summed
    leases: int = 0  # live viewer leases in Redis (per client and per run)


async def _gateway_gauges(child: Child) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=child.url, timeout=5.0) as client:
        resp = await client.get("/metrics")
    resp.raise_for_status()
    values: dict[str, float] = {}
    for line in resp.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def snapshot(stack: Stack, redis: Redis) -> Snapshot:
    snap = Snapshot()
    samples: dict[str, list[int]] = {}
    for _ in range(3):
        for child in stack.gateways + stack.workers:
            samples.setdefault(child.label, []).append(child.rss())
        await asyncio.sleep(0.3)
    snap.rss = {label: int(statistics.median(v)) for label, v in samples.items()}
    for gw in stack.gateways:
        gauges = await _gateway_gauges(gw)
        for name in _COUNTERS:
            value = int(gauges.get(f"tidings_gateway_{name}_total", 0))
            snap.counters[name] = snap.counters.get(name, 0) + value
        snap.tasks[gw.label] = int(gauges.get("tidings_gateway_tasks", -1))
        snap.viewers[gw.label] = int(
            gauges.get("tidings_gateway_viewers", 0)
            + gauges.get("tidings_gateway_lifecycle_viewers", 0)
        )
    clients = [c for c in await redis.client_list() if c.get("name") != "tidings-soak-driver"]
    snap.clients = len(clients)
    snap.leases = await _live_leases(redis, stack)
    owners = _owners(stack)
    by: dict[str, int] = {}
    for c in clients:
        port = int(c.get("addr", ":0").rsplit(":", 1)[1])
        who = owners.get(port, "unknown")
        flags = "P" if "P" in c.get("flags", "") else ""
        key = f"{who}{'/pubsub' if flags else ''}"
        by[key] = by.get(key, 0) + 1
    snap.clients_by = dict(sorted(by.items()))
    return snap


async def settle(
    stack: Stack,
    redis: Redis,
    base: Snapshot,
    judged: dict[str, int],
    failures: list[str],
    memory: dict[str, str],
) -> Snapshot:
    """Poll until every gauge is back where it was (or the settle time is over), then judge."""
    for child in stack.gateways + stack.workers:
        if child.proc.poll() is not None:
            failures.append(
                f"{child.label} (pid {child.pid}) exited with {child.proc.returncode}:\n"
                + child.tail(30)
            )
    if any(c.proc.poll() is not None for c in stack.gateways + stack.workers):
        return Snapshot()
    deadline = time.monotonic() + _SETTLE_S
    await asyncio.sleep(1.0)
    while True:
        snap = await snapshot(stack, redis)
        problems = _compare(stack, base, snap, judged)
        if not problems or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    failures += problems
    for label, pid in judged.items():
        live = next((c for c in stack.gateways + stack.workers if c.label == label), None)
        if live is None or live.pid != pid:
            memory[label] = f"{base.rss[label] / 2**20:.1f} MiB at baseline; replaced"
            continue
        before, after = base.rss[label], snap.rss[label]
        change = (after / before - 1) * 100
        memory[label] = f"{before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB ({change:+.1f} %)"
    for child in stack.gateways + stack.workers:
        if child.label not in judged:
            memory[child.label] = f"{snap.rss[child.label] / 2**20:.1f} MiB (replacement)"
    return snap


async def _live_leases(redis: Redis, stack: Stack) -> int:
    """Viewer leases not yet lapsed, in every client's and every run's lease set."""
    now_ms = int(time.time() * 1000)
    total = 0
    for pattern in ("client:*:viewers", "run:*:viewers"):
        async for key in redis.scan_iter(match=f"{stack.keys.ns}:{pattern}", count=1000):
            total += int(await redis.zcount(key, now_ms, "+inf"))
    return total


def _owners(stack: Stack) -> dict[int, str]:
    """Local port -> the label of the child holding that connection to the Valkey."""
    owners: dict[int, str] = {}
    for child in stack.gateways + stack.workers:
        try:
            conns = psutil.Process(child.pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        for conn in conns:
            if conn.raddr and conn.raddr.port == stack.valkey.port:
                owners[conn.laddr.port] = child.label
    return owners


def _compare(stack: Stack, base: Snapshot, snap: Snapshot, judged: dict[str, int]) -> list[str]:
    problems = []
    for child in stack.gateways + stack.workers:
        if judged.get(child.label) != child.pid:
            continue
        before, after = base.rss[child.label], snap.rss[child.label]
        if after > before * (1 + MEMORY_TOLERANCE):
            problems.append(
                f"{child.label} RSS {after / 2**20:.1f} MiB, baseline {before / 2**20:.1f} MiB "
                f"(over +{MEMORY_TOLERANCE:.0%})"
            )
    for gw in stack.gateways:
        # A replacement gateway runs the same code: its idle task count is the slot's baseline.
        slot_base = next(v for k, v in base.tasks.items() if k.startswith(f"gateway{gw.slot}."))
        if snap.tasks.get(gw.label, 0) > slot_base:
            problems.append(
                f"{gw.label}: {snap.tasks[gw.label]} asyncio tasks, baseline {slot_base}"
            )
        if snap.viewers.get(gw.label, 0):
            problems.append(f"{gw.label}: {snap.viewers[gw.label]} viewers still counted")
    if snap.leases:
        problems.append(f"{snap.leases} viewer leases still live in Redis")
    problems += _compare_connections(stack, base, snap)
    return problems


def _compare_connections(stack: Stack, base: Snapshot, snap: Snapshot) -> list[str]:
    """Every connection belongs to a live soak process; subscriptions are back to the
    baseline's exactly; command connections grew no more than a pool's working set."""
    problems = []
    if snap.clients_by.get("unknown"):
        problems.append(f"{snap.clients_by['unknown']} Valkey connections held by no soak process")
    for child in stack.gateways + stack.workers:
        first = f"{child.role}{child.slot}.0"  # the slot's baseline: same code, same settings
        for suffix in ("", "/pubsub"):
            before = base.clients_by.get(first + suffix, 0)
            after = snap.clients_by.get(child.label + suffix, 0)
            allowed = before + (CONNECTION_GROWTH[child.role] if not suffix else 0)
            if after > allowed:
                what = "subscribed connections" if suffix else "connections"
                problems.append(f"{child.label}: {after} {what} to the Valkey, baseline {before}")
    return problems
