"""Redis at its memory cap: the embedded Valkey has one (noeviction), a full server refuses a
new run whole (503 `storage_full`), and a running run fails cleanly instead of hanging.

Every test here runs its own Valkey and lowers `maxmemory` on it, never on a shared server.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

import tests.workflows_for_tests  # noqa: F401  (registers the test workflows)
from tests.conftest import Processes
from tests.engine_helpers import until
from tests.test_api_helpers import running_stack
from tidings.bus import Bus
from tidings.catalog import RegistryWorkflows
from tidings.control import Control
from tidings.embedded import EmbeddedValkey, free_port
from tidings.errors import StorageFull
from tidings.events import EventType
from tidings.keys import Keys
from tidings.sdk import registry
from tidings.settings import Settings

FULL = "1"  # bytes: any server is over it


async def _everything(redis: Redis) -> set[bytes]:
    return {key async for key in redis.scan_iter(count=1000)}


async def test_a_full_server_refuses_a_new_run_whole_and_a_publish_as_storage_full(
    own_redis: Redis,
) -> None:
    keys = Keys("full")
    settings = Settings(redis_url="redis://unused", namespace=keys.ns)
    bus = Bus(own_redis, keys, retention_ms=60_000)
    control = Control(own_redis, keys, bus, settings, RegistryWorkflows(registry))
    running = await control.start("t_steps", {})
    await bus.publish(running.run_id, EventType.WORKFLOW_STARTED, attempt=1)
    before = await _everything(own_redis)
    events = await own_redis.xlen(keys.events(running.run_id))

    await own_redis.config_set("maxmemory", FULL)
    with pytest.raises(StorageFull) as info:
        await control.start("t_steps", {})
    assert info.value.status == 503 and info.value.code == "storage_full"
    with pytest.raises(StorageFull):
        await bus.publish(running.run_id, EventType.LOG, "refused", attempt=1)
    with pytest.raises(StorageFull):
        await control.signal(running.run_id, "stop")
    assert await _everything(own_redis) == before  # nothing half-written
    assert await own_redis.xlen(keys.events(running.run_id)) == events

    # The one write allowed past the cap: the event that ends a run, with its retention.
    await bus.publish(running.run_id, EventType.WORKFLOW_FAILED, "full", attempt=1, allow_oom=True)
    assert (await control.get(running.run_id)).status == "failed"
    assert 0 < await own_redis.pttl(keys.run(running.run_id)) <= 60_000

    await own_redis.config_set("maxmemory", "0")
    assert (await control.start("t_steps", {})).status == "queued"


async def test_a_publish_waits_for_memory_for_a_bounded_time(own_redis: Redis) -> None:
    keys = Keys("wait")
    bus = Bus(own_redis, keys, storage_wait_s=30.0)
    settings = Settings(redis_url="redis://unused")
    control = Control(own_redis, keys, bus, settings, RegistryWorkflows(registry))
    run_id = (await control.start("t_steps", {})).run_id
    await own_redis.config_set("maxmemory", FULL)
    publish = asyncio.create_task(bus.publish(run_id, EventType.LOG, "patient", attempt=1))
    await asyncio.sleep(0.3)
    assert not publish.done()  # refused, and waiting
    await own_redis.config_set("maxmemory", "0")  # memory comes back (runs expired, pruned)
    event = await asyncio.wait_for(publish, 10)
    assert event.seq == 1

    short = Bus(own_redis, keys, storage_wait_s=0.2)
    await own_redis.config_set("maxmemory", FULL)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StorageFull):
        await short.publish(run_id, EventType.LOG, "gives up", attempt=1)
    assert 0.2 <= loop.time() - started < 5


async def test_the_gateway_answers_503_storage_full_and_a_running_run_fails_cleanly(
    own_valkey: EmbeddedValkey,
    own_redis: Redis,
    processes: Processes,
    settings_env: Callable[..., dict[str, str]],
) -> None:
    def env(**extra: object) -> dict[str, str]:
        # The test's own single server, whichever keyspace the suite runs on.
        base = {k: v for k, v in settings_env(**extra).items() if k != "TIDINGS_REDIS_CLUSTER"}
        return {**base, "REDIS_URL": own_valkey.url, "TIDINGS_NAMESPACE": "oom"}

    keys = Keys("oom")
    endless = {"min_sleep_s": 60, "max_sleep_s": 60, "progress_interval_s": 0.05}
    async with running_stack(processes, env, storage_full_wait_s=0.5) as stack:
        run_id = (await stack.start("monty", endless))["run_id"]
        await stack.wait_status(run_id, "running")
        runs = await own_redis.zcard(keys.runs)
        jobs = [k async for k in own_redis.scan_iter(match="arq:job:*")]

        await own_redis.config_set("maxmemory", FULL)
        resp = await stack.client.post("/api/runs", json={"workflow": "monty", "input": endless})
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "storage_full"
        assert int(resp.headers["retry-after"]) > 0
        resp = await stack.client.post(f"/api/runs/{run_id}/signals/stop")
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "storage_full"
        assert await own_redis.zcard(keys.runs) == runs
        assert [k async for k in own_redis.scan_iter(match="arq:job:*")] == jobs
        assert await own_redis.zcard(keys.queue_for("monty", "1")) == 0

        # The run's progress events are refused; it waits 0.5 s, then fails, and says why.
        async def failed() -> bool:
            return await own_redis.hget(keys.run(run_id), "status") == b"failed"

        await until(failed, what="the run failed", timeout=30)
        record = (await stack.client.get(f"/api/runs/{run_id}")).json()
        assert record["error"].startswith("storage full"), record
        [(_, last)] = await own_redis.xrevrange(keys.events(run_id), count=1)
        assert b'"type":"workflow_failed"' in last[b"e"]
        assert await own_redis.pttl(keys.run(run_id)) > 0  # it expires like any finished run

        await own_redis.config_set("maxmemory", "0")
        resp = await stack.client.post("/api/runs", json={"workflow": "monty", "input": endless})
        assert resp.status_code == 201, resp.text


def test_the_embedded_valkey_never_evicts_and_has_the_configured_cap(tmp_path: Path) -> None:
    from redis import Redis as SyncRedis

    with EmbeddedValkey(tmp_path / "v", persistent=False, maxmemory="48mb") as server:
        client = SyncRedis.from_url(server.url)
        try:
            assert client.config_get("maxmemory") == {"maxmemory": str(48 * 1024 * 1024)}
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        finally:
            client.close()


@pytest.mark.slow
def test_tidings_up_gives_its_valkey_the_maxmemory_setting(
    processes: Processes, tmp_path: Path
) -> None:
    from redis import Redis as SyncRedis

    from tests.test_cli_up import CLI, _stop, _up_env, _wait_ready

    port = free_port()
    env = {**_up_env(tmp_path / "data", port), "TIDINGS_VALKEY_MAXMEMORY": "40mb"}
    proc = processes.start([*CLI, "up", "--workers", "0"], env=env, name="up")
    _wait_ready(proc, processes, port)
    url = (tmp_path / "data" / "redis.url").read_text().strip()
    client = SyncRedis.from_url(url)
    try:
        assert client.config_get("maxmemory") == {"maxmemory": str(40 * 1024 * 1024)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()
    assert _stop(proc, signal.SIGINT, processes) == 0
