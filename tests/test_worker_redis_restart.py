"""A run survives a restart of Redis itself: workers reconnect, the run resumes from checkpoints."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tests.workflows_for_tests  # noqa: F401
from shared.bus import Bus
from shared.control import Control
from shared.embedded import EmbeddedValkey
from shared.events import EventType
from shared.keys import Keys
from shared.redis import connect
from shared.settings import Settings
from tests.engine_helpers import (
    TEST_WORKFLOWS,
    all_events,
    listening,
    of_type,
    until,
    wait_event,
)

pytestmark = pytest.mark.slow


@pytest.fixture
async def own_valkey(tmp_path: Path) -> AsyncIterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "valkey", persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_run_survives_a_redis_restart(own_valkey: EmbeddedValkey, processes: Any) -> None:
    keys = Keys("restart")
    env = {
        "REDIS_URL": own_valkey.url,
        "TIDINGS_NAMESPACE": keys.ns,
        "TIDINGS_LEASE_TTL_MS": "1000",
        "TIDINGS_LEASE_REFRESH_MS": "200",
        **TEST_WORKFLOWS,
    }
    worker = processes.python("services.worker", env=env, name="worker")
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
