"""Workers ride out Redis outages.

A restart of Redis itself (persistent, as deployed) that is over before anyone could take the
runs over costs nothing: every in-flight run carries on as the same attempt, no step and no model
call runs twice. A worker cut off from Redis for longer, while another worker can reach it, is
taken over as before, and when it comes back it is fenced: it writes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import tests.workflows_for_tests  # noqa: F401
from tests.engine_helpers import (
    TEST_WORKFLOWS,
    all_events,
    listening,
    of_type,
    pid_of,
    until,
    wait_event,
    wait_terminal,
)
from tidings.bus import Bus
from tidings.control import Control
from tidings.embedded import EmbeddedValkey
from tidings.events import TERMINAL_STATUSES, Event, EventType, RunStatus
from tidings.keys import Keys
from tidings.redis import connect
from tidings.settings import Settings

pytestmark = pytest.mark.slow

# Leases far shorter than the outages below: every lease lapses while Redis is away.
_LEASES = {"TIDINGS_LEASE_TTL_MS": "1000", "TIDINGS_LEASE_REFRESH_MS": "200"}


@pytest.fixture
async def own_valkey(tmp_path: Path) -> AsyncIterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "valkey", persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _env(url: str, keys: Keys, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": url, "TIDINGS_NAMESPACE": keys.ns, **_LEASES, **TEST_WORKFLOWS, **extra}


def _executions(log: Path) -> Counter[str]:
    """What ran, and how often, from the lines the test workflow leaves in its file."""
    text = log.read_text() if log.exists() else ""
    return Counter(line for line in text.splitlines() if line)


async def test_a_run_survives_a_redis_restart(own_valkey: EmbeddedValkey, processes: Any) -> None:
    keys = Keys("restart")
    worker = processes.python(
        "tidings.services.worker", env=_env(own_valkey.url, keys), name="worker"
    )
    redis = connect(own_valkey.url, retries=10)
    try:
        await until(lambda: listening(redis, keys, 1), what="the worker", procs=[worker])
        bus = Bus(redis, keys)
        settings = Settings(redis_url=own_valkey.url, namespace=keys.ns)
        control = Control(redis, keys, bus, settings)
        n = 20
        rec = await control.start("t_steps", {"n": n, "sleep_s": 0.15})
        await wait_event(
            bus, rec.run_id, lambda e: e.type is EventType.TASK_COMPLETED and e.task == "s#3", "3"
        )
        own_valkey.stop()
        own_valkey.start()

        async def finished() -> bool:
            return (await control.get(rec.run_id)).status.value == "completed"

        await until(finished, what="the run to complete", procs=[worker])
        events = await all_events(bus, rec.run_id)
        completed = Counter(e.task for e in of_type(events, EventType.TASK_COMPLETED))
        assert sorted(completed.values()) == [1] * n
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
    finally:
        await redis.aclose()


async def test_a_redis_restart_longer_than_the_lease_leaves_every_run_on_its_first_attempt(
    own_valkey: EmbeddedValkey, processes: Any, tmp_path: Path
) -> None:
    keys = Keys("outage")
    env = _env(own_valkey.url, keys, TIDINGS_LLM_TOKEN_DELAY_MS="40")
    procs = [
        processes.python("tidings.services.worker", env=env, name=f"worker{i}") for i in range(2)
    ]
    redis = connect(own_valkey.url, retries=10)
    try:
        await until(lambda: listening(redis, keys, 2), what="two workers", procs=procs)
        bus = Bus(redis, keys)
        control = Control(redis, keys, bus, Settings(redis_url=own_valkey.url, namespace=keys.ns))
        n, fan, runs = 8, 2, 6
        logs = [tmp_path / f"run{i}.log" for i in range(runs)]
        ids = []
        for log in logs:  # staggered: the outage finds them in steps, in model calls, starting
            spec = {"log": str(log), "n": n, "sleep_s": 0.25, "fan": fan, "max_tokens": 40}
            ids.append((await control.start("t_counted", spec)).run_id)
            await asyncio.sleep(0.3)
        await wait_event(
            bus, ids[0], lambda e: e.type is EventType.TOKEN, "the first run's model calls"
        )
        for run_id in ids:
            assert (await control.get(run_id)).status not in TERMINAL_STATUSES
        own_valkey.stop()
        await asyncio.sleep(1.5)  # the leases (1 s) lapse while Redis is away
        own_valkey.start()

        for run_id in ids:
            end = await wait_terminal(bus, run_id, timeout=60)
            assert end.type is EventType.WORKFLOW_COMPLETED, end.message
        for run_id, log in zip(ids, logs, strict=True):
            record = await control.get(run_id)
            assert record.status is RunStatus.COMPLETED and record.attempt == 1
            events = await all_events(bus, run_id)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert not of_type(events, EventType.WORKER_LOST)
            assert not of_type(events, EventType.TASK_RETRYING)
            assert {e.attempt for e in events} == {1}
            assert len(of_type(events, EventType.WORKFLOW_STARTED)) == 1
            completed = Counter(e.task_id for e in of_type(events, EventType.TASK_COMPLETED))
            expected = ["s"] + [f"s#{i}" for i in range(2, n + 1)]
            assert completed == Counter(expected + [f"p1.{i}" for i in range(fan)])
            once = [f"step {i}" for i in range(n)] + [f"model {i}" for i in range(fan)]
            assert _executions(log) == Counter(once)
        assert all(proc.poll() is None for proc in procs)
    finally:
        await redis.aclose()


class _Cuttable:
    """A TCP forwarder to a server that the test can cut (every connection through it closed,
    new ones refused) and mend again: a network partition between one process and Redis."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


def _after(events: list[Event], lost: Event) -> list[Event]:
    return [e for e in events if e.seq > lost.seq]


async def test_a_worker_cut_off_longer_than_its_lease_is_taken_over_and_fenced(
    own_valkey: EmbeddedValkey, processes: Any, tmp_path: Path
) -> None:
    keys = Keys("partition")
    proxy = _Cuttable(own_valkey.port)
    await proxy.open()
    redis: Redis = connect(own_valkey.url, retries=10)
    behind = processes.python(
        "tidings.services.worker",
        env=_env(f"redis://127.0.0.1:{proxy.port}/0", keys),
        name="behind",
    )
    try:
        await until(lambda: listening(redis, keys, 1), what="the first worker", procs=[behind])
        bus = Bus(redis, keys)
        control = Control(redis, keys, bus, Settings(redis_url=own_valkey.url, namespace=keys.ns))
        n, log = 10, tmp_path / "run.log"
        rec = await control.start("t_counted", {"log": str(log), "n": n, "sleep_s": 0.3, "fan": 0})
        run_id = rec.run_id
        await wait_event(
            bus, run_id, lambda e: e.type is EventType.TASK_STARTED and e.task == "s#3", "step 3"
        )
        direct = processes.python(
            "tidings.services.worker", env=_env(own_valkey.url, keys), name="direct"
        )
        await until(lambda: listening(redis, keys, 2), what="the second worker", procs=[direct])
        before = await redis.hgetall(keys.steps(run_id))
        proxy.cut()  # the run's worker loses Redis; the other one still has it
        lost = await wait_event(bus, run_id, lambda e: e.type is EventType.WORKER_LOST, "takeover")
        await wait_event(
            bus, run_id, lambda e: e.type is EventType.WORKFLOW_STARTED and e.attempt == 2, "2"
        )
        await proxy.open()  # the cut-off worker reaches Redis again, as a zombie
        end = await wait_terminal(bus, run_id, timeout=60)
        assert end.type is EventType.WORKFLOW_COMPLETED, end.message
        # Give the zombie time to try whatever it still had queued: all of it is refused.
        await asyncio.sleep(1.0)
        events = await all_events(bus, run_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert lost.data is not None and lost.data["previous_attempt"] == 1
        assert pid_of(lost.data["worker"]) == behind.pid
        assert all(e.attempt == 2 for e in _after(events, lost))
        completed = Counter(e.task for e in of_type(events, EventType.TASK_COMPLETED))
        assert completed == Counter(["s"] + [f"s#{i}" for i in range(2, n + 1)])
        after = await redis.hgetall(keys.steps(run_id))
        assert all(after[k] == v for k, v in before.items())
        record = await control.get(run_id)
        assert record.attempt == 2
        assert {s["pid"] for s in record.result["steps"][len(before) + 1 :]} == {direct.pid}
        # Only the step in flight at the cut may have run on both workers.
        ran = _executions(log)
        assert set(ran) == {f"step {i}" for i in range(n)}
        assert sum(ran.values()) - n <= 1
        assert behind.poll() is None  # fenced, not crashed: it still serves
        behind.send_signal(signal.SIGTERM)  # and stops cleanly (through the proxy: no blocking)
        await until(lambda: behind.poll() is not None, what="the fenced worker to stop")
        assert behind.returncode == 0
    finally:
        proxy.cut()
        await redis.aclose()
