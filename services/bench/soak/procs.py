"""The soak's own servers: an embedded Valkey configured as `tidings up` runs it, N gateway
processes each on its own port, M worker processes. Everything is a child of the driver, and
only these children are ever signalled, by their own pid.

Each gateway and worker has a *slot*; a fault replaces the process in its slot (a restarted
gateway comes back on the same port). Processes that lived from the baseline to the end are the
ones whose memory is judged; a replacement is reported but has no baseline of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil
from redis.asyncio import Redis

from tidings.embedded import EmbeddedValkey, die_with_parent, free_port
from tidings.jobs import workers_listening
from tidings.keys import Keys
from tidings.redis import connect
from tidings.settings import Settings

__all__ = ["Child", "Stack", "StackError", "raised_limits"]

_ROOT = Path(__file__).resolve().parents[3]
_READY_S = 30.0

# Per-client limits a gateway may have: the soak is one client holding every viewer and starting
# every run, so each one that exists is raised (to its own maximum if it has one).
_LIMITS = ("runs_per_minute", "viewers_per_client", "active_runs_per_client")


class StackError(RuntimeError):
    """A server did not start or did not come back."""


def raised_limits(viewers: int, runs: int) -> dict[str, int]:
    """`TIDINGS_*` per-client limits, where this version of the settings has them, raised well
    above what the soak needs."""
    wanted = {
        "runs_per_minute": 100 * runs + 1_000,
        "viewers_per_client": 10 * viewers + 1_000,
        "active_runs_per_client": 100 * runs + 1_000,
    }
    out: dict[str, int] = {}
    for name in _LIMITS:
        info = Settings.model_fields.get(name)
        if info is None:
            continue
        value = wanted[name]
        for bound in info.metadata:
            le, lt = getattr(bound, "le", None), getattr(bound, "lt", None)
            if isinstance(le, int):
                value = min(value, le)
            if isinstance(lt, int):
                value = min(value, lt - 1)
        out[name] = value
    return out


@dataclass
class Child:
    role: Literal["gateway", "worker"]
    slot: int
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    generation: int = 0
    up: bool = False  # a gateway accepting requests (not being restarted)
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.role}{self.slot}.{self.generation}"

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Stack:
    def __init__(self, workdir: Path, namespace: str, settings: dict[str, object]) -> None:
        self.dir = workdir
        self.keys = Keys(namespace)
        # As `tidings up` runs it: AOF persistence, and its memory cap with no eviction.
        self.valkey = EmbeddedValkey(
            workdir / "valkey", persistent=True, maxmemory=Settings().valkey_maxmemory
        )
        self.settings = settings
        self.gateways: list[Child] = []
        self.workers: list[Child] = []
        self.retired: list[Child] = []
        self._spawned = 0

    # -- the Valkey -----------------------------------------------------------------------------

    def start_valkey(self) -> None:
        """Call from the main thread (the server's parent-death signal is tied to it)."""
        self.valkey.start()

    def redis(self) -> Redis:
        return connect(self.valkey.url, retries=10)

    async def restart_valkey(self, down_s: float) -> None:
        """Stop (Valkey writes its AOF and exits), stay down `down_s`, start on the same port and
        data directory, then wait for every gateway to say it is ready again. The start waits for
        the AOF to load in this thread (the main one: the parent-death signal is tied to it)."""
        await asyncio.to_thread(self.valkey.stop)
        await asyncio.sleep(down_s)
        self.valkey.start()
        await asyncio.gather(*(self._ready(g) for g in self.gateways if g.up))

    # -- children -------------------------------------------------------------------------------

    def env(self, **extra: object) -> dict[str, str]:
        # Inherited TIDINGS_* variables are dropped: the user's shell must not skew a soak.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            REDIS_URL=self.valkey.url,
            TIDINGS_NAMESPACE=self.keys.ns,
            TIDINGS_LOG_LEVEL="warning",
            PYTHONUNBUFFERED="1",
        )
        for name, value in {**self.settings, **extra}.items():
            env[f"TIDINGS_{name.upper()}"] = str(value)
        return env

    def _spawn(self, role: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        self._spawned += 1
        path = self.dir / f"{role}-{self._spawned}.log"
        with open(path, "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                # The installed name: `services.…` would load the package a second time under
                # another name (two copies of each module, whose classes are not each other's).
                [sys.executable, "-m", f"tidings.services.{role}"],
                env=env,
                cwd=_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        return proc, path

    async def start_gateway(self, slot: int, port: int = 0) -> Child:
        port = port or free_port()
        proc, log = self._spawn("gateway", self.env(port=port))
        gen = self.gateways[slot].generation + 1 if slot < len(self.gateways) else 0
        child = Child("gateway", slot, proc, log, port=port, generation=gen)
        if slot < len(self.gateways):
            self.gateways[slot] = child
        else:
            self.gateways.append(child)
        await self._ready(child)
        child.up = True
        return child

    async def _ready(self, child: Child) -> None:
        deadline = time.monotonic() + _READY_S
        async with httpx.AsyncClient(base_url=child.url, timeout=2.0) as client:
            while True:
                if child.proc.poll() is not None:
                    raise StackError(f"{child.label} exited:\n{child.tail()}")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(f"{child.label} not ready:\n{child.tail()}")
                await asyncio.sleep(0.05)

    async def start_worker(self, slot: int) -> Child:
        proc, log = self._spawn("worker", self.env())
        gen = self.workers[slot].generation + 1 if slot < len(self.workers) else 0
        child = Child("worker", slot, proc, log, generation=gen)
        if slot < len(self.workers):
            self.workers[slot] = child
        else:
            self.workers.append(child)
        await self.wait_workers()
        return child

    async def wait_workers(self) -> None:
        """Until every live worker listens on the doorbell."""
        redis = self.redis()
        try:
            deadline = time.monotonic() + _READY_S
            while await workers_listening(redis, self.keys) < len(self.workers):
                for w in self.workers:
                    if w.proc.poll() is not None:
                        raise StackError(f"{w.label} exited:\n{w.tail()}")
                if time.monotonic() > deadline:
                    raise StackError("workers not listening in time")
                await asyncio.sleep(0.05)
        finally:
            await redis.aclose()

    # -- faults ---------------------------------------------------------------------------------

    async def kill_worker(self, slot: int) -> Child:
        """`kill -9` the worker in `slot`, then start its replacement."""
        victim = self.workers[slot]
        os.kill(victim.pid, signal.SIGKILL)
        await _reap(victim.proc, 10.0)
        self.retired.append(victim)
        return await self.start_worker(slot)

    async def restart_gateway(self, slot: int) -> Child:
        """SIGTERM (its viewers get a clean end of stream and reconnect), then a new process on
        the same port."""
        old = self.gateways[slot]
        old.up = False
        old.proc.send_signal(signal.SIGTERM)
        await _reap(old.proc, 15.0)
        self.retired.append(old)
        return await self.start_gateway(slot, port=old.port)

    def up_gateways(self) -> list[Child]:
        return [g for g in self.gateways if g.up]

    def close(self) -> None:
        """Stop every live child by pid (SIGTERM, then SIGKILL after 10 s), then the Valkey."""
        live = [c for c in self.gateways + self.workers if c.proc.poll() is None]
        for child in live:
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in live:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        self.valkey.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "gateways": [g.label for g in self.gateways],
            "workers": [w.label for w in self.workers],
            "retired": [c.label for c in self.retired],
        }


async def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return
        await asyncio.sleep(0.02)
