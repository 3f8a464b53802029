"""What every part of a soak shares: the stack, the seeded random generator, the fault windows,
the failures found, and one way to call the API as a client would.

A 5xx is a failure with one exception: a 503 while the soak's own Valkey is stopped (and until
the gateways are ready again, plus a short grace) is the documented answer to "Redis
unreachable". Connection errors while a gateway is being restarted are what clients of a restarted
gateway see; they retry on another one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from .procs import Child, Stack
from .profile import Profile

__all__ = ["World"]

log = logging.getLogger(__name__)

_GRACE_S = 1.0


@dataclass
class _Window:
    start: float
    end: float = math.inf


@dataclass
class World:
    stack: Stack
    profile: Profile
    seed: int
    rng: random.Random = field(init=False)
    failures: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # "<route kind> <status>"
    t0: float = field(default_factory=time.monotonic)
    _outages: list[_Window] = field(default_factory=list)
    _restarts: dict[int, list[_Window]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _client: httpx.AsyncClient | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- time and fault windows -----------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    @property
    def deadline(self) -> float:
        return self.t0 + self.profile.deadline_s

    def past_deadline(self) -> bool:
        return time.monotonic() > self.deadline

    def outage_begins(self) -> None:
        self._outages.append(_Window(time.monotonic()))

    def outage_ends(self) -> None:
        self._outages[-1].end = time.monotonic() + _GRACE_S

    def restart_begins(self, slot: int) -> None:
        self._restarts.setdefault(slot, []).append(_Window(time.monotonic()))

    def restart_ends(self, slot: int) -> None:
        self._restarts[slot][-1].end = time.monotonic() + _GRACE_S

    def redis_down_during(self, t0: float, t1: float) -> bool:
        return any(w.start <= t1 and t0 <= w.end for w in self._outages)

    def restarting_during(self, slot: int, t0: float, t1: float) -> bool:
        return any(w.start <= t1 and t0 <= w.end for w in self._restarts.get(slot, []))

    def fail(self, what: str) -> None:
        log.warning("soak failure: %s", what)
        self.failures.append(what)

    # -- gateways -------------------------------------------------------------------------------

    def pick(self, prefer: int | None = None) -> Child | None:
        """A gateway accepting requests: `prefer`'s slot if it is up, else any, at random."""
        ups = self.stack.up_gateways()
        if not ups:
            return None
        for g in ups:
            if g.slot == prefer:
                return g
        return self.rng.choice(ups)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(30.0, connect=5.0),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
        return self._client

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.fail(f"task {task.get_name()} crashed: {task.exception()!r}")

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        prefer: int | None = None,
        timeout: float = 30.0,
        **kwargs: Any,
    ) -> httpx.Response | None:
        """One request to an up gateway. A 5xx is recorded as a failure unless it is a 503 during
        a Valkey outage. None: no gateway, or the connection failed (the caller may retry)."""
        gw = self.pick(prefer)
        if gw is None:
            return None
        t0 = time.monotonic()
        try:
            resp = await self.client.request(method, gw.url + path, timeout=timeout, **kwargs)
        except httpx.TransportError as exc:
            if not self.restarting_during(gw.slot, t0, time.monotonic()):
                self.statuses[f"{kind} transport-error"] += 1
                log.info("%s %s on %s: %r", method, path, gw.label, exc)
            return None
        self.statuses[f"{kind} {resp.status_code}"] += 1
        if resp.status_code >= 500:
            if resp.status_code == 503 and self.redis_down_during(t0, time.monotonic()):
                return resp
            self.fail(
                f"{resp.status_code} from {gw.label}: {method} {path[:200]} "
                f"{_describe(kwargs)} -> {resp.text[:300]!r}"
            )
        return resp

    async def call_until(
        self, kind: str, method: str, path: str, *, done: set[int], **kwargs: Any
    ) -> httpx.Response | None:
        """`call` until the status is in `done` (or any 4xx), retrying connection errors and
        503s during outages, until the soak's deadline."""
        delay = 0.1
        while not self.past_deadline():
            resp = await self.call(kind, method, path, **kwargs)
            if resp is not None and (resp.status_code in done or 400 <= resp.status_code < 500):
                return resp
            if resp is not None and resp.status_code >= 500 and resp.status_code != 503:
                return resp
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        return None


def _describe(kwargs: dict[str, Any]) -> str:
    parts = []
    if "headers" in kwargs:
        parts.append(f"headers={kwargs['headers']!r}"[:200])
    for key in ("json", "content"):
        if key in kwargs:
            body = kwargs[key]
            text = repr(body if not isinstance(body, bytes | str) else body[:200])
            parts.append(f"{key}={text[:200]}")
    return " ".join(parts)
