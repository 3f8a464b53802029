"""The core's scripts on a real Valkey Cluster, whatever `TIDINGS_TEST_CLUSTER` says.

Every script call below is refused by the cluster client (or by the node) if its keys span
slots, so running the path at all checks that each one stays in its run's slot. Channels are
not checked by the server (an SPUBLISH to another slot's channel goes nowhere useful), so each
message is read the way a gateway or worker reads it: SSUBSCRIBEd on the node that owns the
channel's slot.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

import tests.workflows_for_tests  # noqa: F401  (registers the test workflows)
from tests.conftest import delete_namespace
from tests.test_cluster_core_support import listening
from tidings.bus import Bus
from tidings.catalog import RegistryWorkflows
from tidings.control import Control
from tidings.events import EventType
from tidings.jobs import job_key, queue_of, run_job_id, signal_doorbell, workers_listening
from tidings.keys import SCHEMA_VERSION, Keys
from tidings.migrate import SchemaMismatch, migrate
from tidings.redis import connect
from tidings.retention import prune
from tidings.sdk import registry
from tidings.settings import Settings


@pytest.fixture
async def client(cluster_settings: Settings) -> AsyncIterator[Redis]:
    redis = connect(cluster_settings.redis_url or "", cluster=True)
    try:
        yield redis
    finally:
        await delete_namespace(redis, cluster_settings.namespace)
        await redis.aclose()


def _control(redis: Redis, keys: Keys, settings: Settings, bus: Bus) -> Control:
    return Control(redis, keys, bus, settings, RegistryWorkflows(registry))


def _ids_over_buckets(keys: Keys, n: int) -> list[str]:
    """`n` run ids, the first two in different buckets."""
    ids = [f"run-{i}" for i in range(n)]
    assert keys.bucket(ids[0]) != keys.bucket(ids[1])
    return ids


async def test_a_runs_life_stays_in_its_slot_and_history_spans_the_buckets(
    client: Redis, cluster_settings: Settings
) -> None:
    keys = cluster_settings.keys()
    assert keys.clustered
    bus = Bus(client, keys, retention_ms=3_600_000)
    control = _control(client, keys, cluster_settings, bus)
    ids = _ids_over_buckets(keys, 12)
    assert len({keys.bucket(rid) for rid in ids}) > 2
    first = ids[0]

    # Creation: record, indexes, first job and its doorbell, lifecycle summary: one script.
    async with (
        listening(client, keys.runs_channel_of(first)) as lifecycle,
        listening(client, keys.wake_channel_of(first)) as wake,
    ):
        records = [await control.start("t_steps", {"n": 1}, run_id=rid) for rid in ids]
        created = await lifecycle.next(timeout=5)
        doorbell = await wake.next(timeout=5)
    assert created is not None and json.loads(created)["run_id"] == first
    assert json.loads(created)["status"] == "queued"
    job_id = run_job_id(first, 1, keys.run_tag(first))
    queue = queue_of(keys, records[0])
    assert queue == keys.queue_for("t_steps", "1", keys.bucket(first))
    assert doorbell == f"job {queue.removeprefix(keys.queue_prefix)} {job_id}".encode()
    assert await client.zscore(queue, job_id) is not None
    assert await client.exists(job_key(job_id)) == 1
    for rid in ids:
        assert await client.zscore(keys.active_of(rid), rid) is not None

    # A batch of several runs, interleaved: each run's events in order, its own seq.
    cmds = [
        bus.command(rid, kind, progress=p, attempt=1)
        for kind, p in ((EventType.WORKFLOW_STARTED, 0.0), (EventType.TASK_PROGRESS, 50.0))
        for rid in ids
    ]
    async with listening(client, keys.run_channel(first)) as channel:
        events = await bus.publish_many(cmds)
        live = [await channel.next(timeout=5) for _ in range(2)]
    assert all(not isinstance(e, Exception) for e in events), events
    for rid in ids:
        logged = await bus.events(rid)
        assert [(e.type, e.seq) for e in logged] == [
            (EventType.WORKFLOW_STARTED, 1),
            (EventType.TASK_PROGRESS, 2),
        ]
    assert [json.loads(m or b"{}")["seq"] for m in live] == [1, 2]

    # A signal: its list and the doorbell of the run's bucket.
    async with listening(client, keys.wake_channel_of(first)) as wake:
        await control.signal(first, "message", {"text": "hi"})
        assert await wake.next(timeout=5) == signal_doorbell(first).encode()
    assert await client.llen(keys.signals(first)) == 1

    # Terminal events: the run leaves its bucket's active index, enters its expiring one.
    done = ids[:6]
    async with listening(client, keys.runs_channel_of(first)) as lifecycle:
        for rid in done:
            await bus.publish(rid, EventType.WORKFLOW_COMPLETED, progress=100, attempt=1)
        summary = await lifecycle.next(timeout=5)
    assert summary is not None and json.loads(summary)["status"] == "completed"
    for rid in done:
        assert await client.zscore(keys.active_of(rid), rid) is None
        assert await client.zscore(keys.expiring_of(rid), rid) is not None
        assert 0 < await client.pttl(keys.run(rid)) <= 3_600_000

    # History: every bucket's runs, newest first, paged by cursor without a gap or repeat.
    scores = {rid: await client.zscore(keys.runs_of(rid), rid) for rid in ids}
    expected = sorted(ids, key=lambda rid: (scores[rid], rid), reverse=True)
    listed: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await control.list_runs(limit=5, before=cursor)
        listed += [r.run_id for r in page]
        if cursor is None:
            break
    assert listed == expected
    only_done, _ = await control.list_runs(status="completed", limit=50)
    assert {r.run_id for r in only_done} == set(done)

    # Prune: the old finished runs go with all their keys and index entries; a stale entry in
    # another bucket goes too; the rest stays.
    old = done[:3]
    long_ago = (datetime.now(UTC) - timedelta(days=3)).isoformat().replace("+00:00", "Z")
    for rid in old:
        await client.hset(keys.run(rid), "finished_at", long_ago)
    ghost = next(f"ghost-{i}" for i in range(99) if keys.bucket(f"ghost-{i}") != keys.bucket(first))
    await client.zadd(keys.runs_of(ghost), {ghost: 1})
    report = await prune(client, keys, older_than_s=86_400)
    assert set(report.runs) == set(old) and report.stale_entries == 1
    for rid in old:
        assert await client.exists(*keys.run_keys(rid)) == 0
        assert await client.zscore(keys.runs_of(rid), rid) is None
        assert await client.zscore(keys.expiring_of(rid), rid) is None
    assert await client.zscore(keys.runs_of(ghost), ghost) is None
    left, _ = await control.list_runs(limit=50)
    assert [r.run_id for r in left] == [rid for rid in expected if rid not in old]


async def test_a_cancelled_queued_run_leaves_its_bucket_queue(
    client: Redis, cluster_settings: Settings
) -> None:
    keys = cluster_settings.keys()
    bus = Bus(client, keys)
    control = _control(client, keys, cluster_settings, bus)
    rec = await control.start("t_loop", {}, run_id="to-cancel")
    assert await client.zcard(queue_of(keys, rec)) == 1
    await control.signal(rec.run_id, "pause")
    await control.signal(rec.run_id, "resume")
    await control.signal(rec.run_id, "cancel")
    assert (await control.get(rec.run_id)).status == "cancelled"
    assert await client.zcard(queue_of(keys, rec)) == 0
    assert await client.exists(job_key(run_job_id(rec.run_id, 1, keys.run_tag(rec.run_id)))) == 0


async def test_workers_are_counted_on_the_wake_channel_of_bucket_zero(
    client: Redis, cluster_settings: Settings
) -> None:
    keys = cluster_settings.keys()
    assert await workers_listening(client, keys) == 0
    async with listening(client, keys.wake_channel_in(0)):
        assert await workers_listening(client, keys) == 1
    async with listening(client, keys.wake_channel_in(1)):  # another bucket's: not counted
        assert await workers_listening(client, keys) == 0


async def test_migrate_on_a_cluster_finds_it_current_or_refuses_an_older_schema(
    client: Redis, cluster_settings: Settings
) -> None:
    keys = cluster_settings.keys()
    assert (await migrate(client, keys)).current  # empty
    await client.set(keys.schema, SCHEMA_VERSION)
    assert (await migrate(client, keys)).current
    await client.set(keys.schema, SCHEMA_VERSION - 1)
    with pytest.raises(SchemaMismatch, match="on a Redis Cluster"):
        await migrate(client, keys)
    assert int(await client.get(keys.schema) or 0) == SCHEMA_VERSION - 1  # nothing written
