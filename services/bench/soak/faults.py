"""Faults, injected one at a time while the load runs, evenly spaced and bounded in count:

- `worker`: `kill -9` of a worker (the one holding the most running runs), then a replacement;
- `gateway`: SIGTERM of a gateway (its viewers get a clean end of stream and reconnect), then a
  new process on the same port;
- `valkey`: the soak's own Valkey stopped (it writes its AOF), left down a few seconds, started
  again on the same port and data directory.

Slot 0's gateway and worker are never the target: they live from the baseline to the end, so
their memory can be judged.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .world import World

__all__ = ["Faults"]


@dataclass
class Faults:
    world: World
    redis: Redis
    done: list[dict[str, Any]] = field(default_factory=list)

    def schedule(self) -> list[tuple[float, str]]:
        p = self.world.profile
        kinds: list[str] = []
        counts = {
            "worker": p.worker_kills,
            "gateway": p.gateway_restarts,
            "valkey": p.valkey_restarts,
        }
        while any(counts.values()):
            for kind in ("worker", "gateway", "valkey"):
                if counts[kind]:
                    kinds.append(kind)
                    counts[kind] -= 1
        first, last = 3.0, p.start_window_s + 8.0
        step = (last - first) / max(1, len(kinds) - 1)
        return [(first + i * step, kind) for i, kind in enumerate(kinds)]

    async def run(self) -> None:
        for at, kind in self.schedule():
            await asyncio.sleep(max(0.0, at - self.world.now()))
            started = time.monotonic()
            target = await getattr(self, f"_{kind}")()
            self.done.append(
                {
                    "kind": kind,
                    "at_s": round(self.world.now(), 1),
                    "target": target,
                    "took_s": round(time.monotonic() - started, 2),
                }
            )

    async def _worker(self) -> str:
        stack = self.world.stack
        slots = [w.slot for w in stack.workers if w.slot > 0]
        if not slots:
            return "none (one worker)"
        load = await self._runs_per_pid()
        slot = max(slots, key=lambda s: (load.get(stack.workers[s].pid, 0), -s))
        victim = stack.workers[slot]
        label = f"{victim.label} (pid {victim.pid}, {load.get(victim.pid, 0)} runs)"
        await stack.kill_worker(slot)
        return label

    async def _runs_per_pid(self) -> dict[int, int]:
        keys = self.world.stack.keys
        counts: dict[int, int] = {}
        try:
            for run_id in await self.redis.zrange(keys.active, 0, -1):
                worker = await self.redis.hget(  # type: ignore[misc]
                    keys.run(run_id.decode()), "worker"
                )
                if worker:
                    pid = int(worker.decode().rsplit(":", 1)[-1])
                    counts[pid] = counts.get(pid, 0) + 1
        except (ValueError, OSError, RedisError):
            pass  # no target preference then
        return counts

    async def _gateway(self) -> str:
        world = self.world
        slots = [g.slot for g in world.stack.gateways if g.slot > 0]
        if not slots:
            return "none (one gateway)"
        slot = slots[len(self.done) % len(slots)]
        old = world.stack.gateways[slot]
        world.restart_begins(slot)
        try:
            await world.stack.restart_gateway(slot)
        finally:
            world.restart_ends(slot)
        return f"{old.label} (pid {old.pid}, port {old.port})"

    async def _valkey(self) -> str:
        world = self.world
        world.outage_begins()
        try:
            await world.stack.restart_valkey(world.profile.valkey_down_s)
        finally:
            world.outage_ends()
        return f"valkey port {world.stack.valkey.port}, down {world.profile.valkey_down_s} s"
