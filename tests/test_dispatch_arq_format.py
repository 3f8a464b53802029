"""Our dispatcher speaks arq's job format: this fails loudly if an arq upgrade changes what we
rely on (key prefixes, the payload's shape, `enqueue_job` producing a job our workers run)."""

from __future__ import annotations

import json
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import deserialize_job, serialize_job
from redis.asyncio import Redis, RedisCluster

import tests.workflows_for_tests  # noqa: F401
from tests.engine_helpers import wait_terminal
from tidings.bus import Bus
from tidings.events import EventType
from tidings.jobs import RUN_JOB, JobQueue, dumps_job, job_key, loads_job, run_job_id
from tidings.keys import Keys
from tidings.runs import RunStore


def test_arq_key_prefixes_are_the_ones_we_use() -> None:
    assert job_key_prefix == "arq:job:" and job_key("run:r:1") == "arq:job:run:r:1"
    assert in_progress_key_prefix == "arq:in-progress:"


def test_a_json_job_round_trips_through_arqs_serializer() -> None:
    raw = serialize_job(RUN_JOB, ("r1", 2), {"k": 1}, None, 1_700_000_000_000, serializer=dumps_job)
    assert json.loads(raw) == {"t": None, "f": RUN_JOB, "a": ["r1", 2], "k": {"k": 1}, "et": 1.7e12}
    job = deserialize_job(raw, deserializer=loads_job)
    assert (job.function, list(job.args), job.kwargs) == (RUN_JOB, ["r1", 2], {"k": 1})


async def test_our_enqueue_writes_what_arq_reads(redis: Redis, keys: Keys) -> None:
    queue = keys.queue_for("t_steps", "1", keys.bucket("r1"))
    assert await JobQueue(redis, keys).enqueue_run(queue, "r1", 1)
    job_id = run_job_id("r1", 1, keys.run_tag("r1"))
    job = deserialize_job(await redis.get(job_key(job_id)), deserializer=loads_job)
    assert (job.function, list(job.args)) == (RUN_JOB, ["r1", 1])
    assert await redis.zscore(queue, job_id) is not None


async def test_a_job_enqueued_by_arq_itself_runs_on_our_worker_and_leaves_no_keys(
    redis: Redis, keys: Keys, bus: Bus, workers: Any
) -> None:
    rec = await RunStore(redis, keys).create("t_steps", {"n": 2})  # the record, no job yet
    rid = rec.run_id
    job_id = run_job_id(rid, 1, keys.run_tag(rid))
    queue = keys.queue_for("t_steps", "1", keys.bucket(rid))
    pool = await _arq_for(redis, queue)
    try:
        job = await pool.enqueue_job(RUN_JOB, rec.run_id, 1, _job_id=job_id, _queue_name=queue)
    finally:
        await pool.aclose()
    assert job is not None
    await workers(1)  # no doorbell rang: the worker's poll finds the job
    end = await wait_terminal(bus, rec.run_id)
    assert end.type is EventType.WORKFLOW_COMPLETED, end.message
    assert not await redis.exists(job_key(job_id))
    assert not await redis.exists(in_progress_key_prefix + job_id)
    assert await redis.zcard(queue) == 0


async def _arq_for(redis: Redis, queue: str) -> ArqRedis:
    """arq's client for `queue`: on the same server, or in a cluster on the primary owning the
    queue's slot (arq speaks to one server; the job id's tag keeps its keys in that slot)."""
    serializers: dict[str, Any] = {"job_serializer": dumps_job, "job_deserializer": loads_job}
    if not isinstance(redis, RedisCluster):
        return ArqRedis(pool_or_conn=redis.connection_pool, **serializers)
    await redis.initialize()
    node = redis.get_node_from_key(queue)
    assert node is not None
    return ArqRedis(host=node.host, port=node.port, **serializers)
