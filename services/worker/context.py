"""What one worker process shares between its jobs: connections, names, and what it is running.

`Engine.runs` and `Engine.tasks` are the executions this process holds a lease for; the lease
loop renews them all in one pipeline, the doorbell listener routes signals to them, and SIGTERM
hands them back. Background tasks are owned here (`spawn`) and cancelled with a bound on close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from tidings.bus import Bus
from tidings.control import Control
from tidings.jobs import JobQueue
from tidings.keys import Keys
from tidings.redis import connect
from tidings.settings import Settings

from .leases import Leases

if TYPE_CHECKING:
    from .llm import LLM
    from .run import RunHandle
    from .tasks import TaskExecution

__all__ = [
    "Engine",
    "EngineViews",
    "connect_worker",
    "worker_name",
]

logger = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def connect_worker(settings: Settings, client_name: str) -> Redis:
    """The worker's client: a cluster's (`settings.redis_cluster`) follows the slot map; every
    connection it opens, to any node, carries `client_name` (`liveness`)."""
    assert settings.redis_url, "a worker needs REDIS_URL"
    return connect(settings.redis_url, cluster=settings.redis_cluster, client_name=client_name)


@dataclass(eq=False)
class Engine:
    settings: Settings
    keys: Keys
    redis: Redis
    bus: Bus
    queue: JobQueue
    leases: Leases
    control: Control
    name: str
    runs: dict[str, RunHandle] = field(default_factory=dict)
    tasks: dict[str, TaskExecution] = field(default_factory=dict)
    closing: bool = False
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    _llm: LLM | None = None

    @classmethod
    def build(cls, settings: Settings, redis: Redis, name: str | None = None) -> Engine:
        keys = settings.keys()
        bus = Bus.from_settings(redis, keys, settings, wait_for_storage=True)
        name = name or worker_name()
        return cls(
            settings=settings,
            keys=keys,
            redis=redis,
            bus=bus,
            queue=JobQueue(redis, keys),
            leases=Leases(redis, keys, name, settings.lease_ttl_ms),
            control=Control(redis, keys, bus, settings),
            name=name,
        )

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            from .llm import make_llm

            self._llm = make_llm(self.settings)
        return self._llm

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self, timeout: float = 2.0) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel("worker closing")
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


class EngineViews:
    """What a run handle and a task context both show their code of the worker's engine."""

    engine: Engine

    @property
    def settings(self) -> Settings:
        return self.engine.settings

    @property
    def model(self) -> LLM:
        """`Run.model` / `TaskContext.model`."""
        return self.engine.llm

    @property
    def control(self) -> Control:
        return self.engine.control

    @property
    def runs(self) -> Control:
        """`Run.runs`: other runs, through the same `Control` as the HTTP API."""
        return self.engine.control
