"""arq jobs as Tidings uses them: names, JSON payloads, deterministic ids, queues, enqueue + wake.

- The format is arq's (pinned in pyproject; `tests/test_dispatch_arq_format.py` fails loudly if an
  upgrade changes it): the job key `arq:job:<id>` holds `arq.jobs.serialize_job`'s payload, the
  queue is a zset (member job id, score ms), `arq:in-progress:<id>` marks a claimed job. So
  `ArqRedis.enqueue_job(RUN_JOB, ..., _job_id=..., _queue_name=queue_for(...))` produces a job our
  workers run; the loop that runs them is ours (`tidings.services.worker.dispatch`).
- Payloads are JSON (`dumps_job` / `loads_job`), never pickle: whoever can write to Redis must not
  be able to run code on the workers.
- Each workflow version has its own queue (`Keys.queue_for`); a run's jobs, its tasks' included,
  go to its queue (`queue_of`), and a worker serves the queues of the versions it loaded.
- Job ids are deterministic (`run:{ID}:{attempt}`, `task:{ID}:{TID}:{attempt}.{try}`), so
  enqueueing the same job twice is a no-op (`SET NX` on arq's job key, in one script with the
  ZADD), and a stale job (older attempt) is recognised by the worker and dropped.
- The wake channel is the pool's doorbell, one per bucket (`Keys.wake_channel_in`; a single
  Redis has one). Messages are `job <queue name> <job id>`, the queue's name without the
  namespace's queue prefix (`<workflow>:<version>`; a cluster's starts with the bucket's tag:
  `{3.12}:<workflow>:<version>`): something was enqueued on that queue, a worker serving it
  claims the job at once; and `signal <run id>` (a control signal arrived: the worker running
  that run reads it at once). Publishing the doorbell is part of the same script as the
  enqueue, one round trip.
- Cluster: a run's queue (`queue_of`: its version's queue in the run's bucket), its jobs' keys
  (job ids carry the bucket's tag: `run_job_id(..., tag)`) and its bucket's wake channel share
  one slot, so the enqueue script is single-slot and SPUBLISHes the doorbell there
  (`publish_command`). Workers subscribe every bucket's wake channel; `workers_listening` counts
  the subscribers of bucket 0's on the node that owns it (PUBSUB SHARDNUMSUB).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis, RedisCluster

from .events import now_ms
from .keys import Keys
from .publishing import publish_command

__all__ = [
    "DEFAULT_VERSION",
    "JOB_TTL_MS",
    "RUN_JOB",
    "RUN_JOB_PREFIX",
    "TASK_JOB",
    "TASK_JOB_PREFIX",
    "JobQueue",
    "dumps_job",
    "enqueue_call",
    "job_doorbell",
    "job_key",
    "loads_job",
    "queue_of",
    "queue_of_fields",
    "run_job_id",
    "signal_doorbell",
    "task_job_id",
    "workers_listening",
]

RUN_JOB = "tidings_run"
TASK_JOB = "tidings_task"
# An unclaimed job key lives this long; the sweeper re-enqueues a run whose job vanished.
JOB_TTL_MS = 86_400_000
# The version of a run recorded before runs had one.
DEFAULT_VERSION = "1"

# enqueue(k, a): KEYS[k] job key, KEYS[k + 1] queue zset; ARGV[a..a + 6]: payload, ttl ms,
# score, job id, wake channel, doorbell message, publish command (`enqueue_call` builds them).
# 1 when enqueued, 0 when the job exists. A script that enqueues defines it with this text.
ENQUEUE_FUNCTION = """
local function enqueue(k, a)
  if redis.call('SET', KEYS[k], ARGV[a], 'NX', 'PX', ARGV[a + 1]) then
    redis.call('ZADD', KEYS[k + 1], ARGV[a + 2], ARGV[a + 3])
    redis.call(ARGV[a + 6], ARGV[a + 4], ARGV[a + 5])
    return 1
  end
  return 0
end
"""
_ENQUEUE = ENQUEUE_FUNCTION + "return enqueue(1, 1)\n"


class Routed(Protocol):
    """What routes a run's jobs: a run record, a run handle."""

    @property
    def run_id(self) -> str: ...

    @property
    def workflow(self) -> str: ...

    @property
    def version(self) -> str: ...


def queue_of(keys: Keys, run: Routed) -> str:
    """The queue of `run`'s jobs, its own and its tasks': its workflow's at its version, in the
    run's bucket."""
    return keys.queue_for(run.workflow, run.version, keys.bucket(run.run_id))


def queue_of_fields(
    keys: Keys, workflow: bytes, version: bytes | None, run_id: str | None = None
) -> str:
    """`queue_of` from a run record's raw `workflow` and `version` fields (an HMGET's reply); a
    record written before runs had versions is at `DEFAULT_VERSION`. `run_id` picks the
    bucket; a cluster keyspace needs it (AssertionError without)."""
    if run_id is None and keys.clustered:
        raise AssertionError("a cluster keyspace's queue is the run's bucket's: pass run_id")
    bucket = 0 if run_id is None else keys.bucket(run_id)
    return keys.queue_for(workflow.decode(), (version or b"").decode() or DEFAULT_VERSION, bucket)


def dumps_job(obj: Any) -> bytes:
    """arq's serializer. `default=str` so a failed job's exception is stored as its text."""
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


def loads_job(raw: bytes) -> Any:
    return json.loads(raw)


RUN_JOB_PREFIX = "run:"
TASK_JOB_PREFIX = "task:"


def run_job_id(run_id: str, attempt: int, tag: str = "") -> str:
    """A run attempt's job id; `tag` is the run's bucket tag in a cluster (`Keys.run_tag`), so
    arq's job keys share their queue's slot."""
    return f"{RUN_JOB_PREFIX}{tag}{run_id}:{attempt}"


def task_job_id(run_id: str, task_id: str, attempt: int, try_: int, tag: str = "") -> str:
    return f"{TASK_JOB_PREFIX}{tag}{run_id}:{task_id}:{attempt}.{try_}"


def signal_doorbell(run_id: str) -> str:
    """The wake-channel message that tells the worker running `run_id` to read its signals."""
    return f"signal {run_id}"


def job_doorbell(keys: Keys, queue: str, job_id: str) -> str:
    """The wake-channel message that tells the workers serving `queue` of job `job_id`."""
    return f"job {queue.removeprefix(keys.queue_prefix)} {job_id}"


async def workers_listening(redis: Redis, keys: Keys) -> int:
    """How many workers are ready: each subscribes to the doorbell (every bucket's, in a
    cluster) once it serves its queues. A cluster counts the sharded subscribers of bucket 0's
    wake channel on the node that owns its slot."""
    channel = keys.wake_channel_in(0)
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # the slot map, should no command have read it yet
        node = redis.get_node_from_key(channel)
        reply = await redis.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node)
        return int(_numsub_count(reply))
    [(_, count)] = await redis.pubsub_numsub(channel)
    return int(count)


def _numsub_count(reply: Any) -> Any:
    """The count of a one-channel (SHARD)NUMSUB reply, flat `[channel, n]` or `[(channel, n)]`."""
    first = reply[0]
    return first[1] if isinstance(first, tuple | list) else reply[1]


def job_key(job_id: str) -> str:
    return job_key_prefix + job_id


def enqueue_call(
    keys: Keys, function: str, job_id: str, *args: Any, queue: str, defer_ms: int = 0
) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV of `ENQUEUE_FUNCTION`'s `enqueue` for `function(*args)` as `job_id` on
    `queue` (a `Keys.queue_for` key): the doorbell goes on the wake channel of the queue's
    bucket, in the queue's slot."""
    now = now_ms()
    payload = serialize_job(function, args, {}, None, now, serializer=dumps_job)
    return [job_key(job_id), queue], [
        payload,
        JOB_TTL_MS,
        now + defer_ms,
        job_id,
        keys.wake_channel_in(_bucket_of_queue(keys, queue)),
        job_doorbell(keys, queue, job_id),
        publish_command(keys),
    ]


def _bucket_of_queue(keys: Keys, queue: str) -> int:
    """The bucket of a `Keys.queue_for` key: a cluster's names its tag first (0 otherwise)."""
    if not keys.clustered:
        return 0
    tag = queue.removeprefix(keys.queue_prefix).partition(":")[0]
    for bucket in keys.bucket_ids:
        if keys.tag(bucket) == tag:
            return bucket
    raise ValueError(f"{queue!r} is no queue of a bucket of namespace {keys.ns!r}")


class JobQueue:
    """Enqueues arq jobs on the namespace's queues. One per process."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._enqueue = redis.register_script(_ENQUEUE)

    def job_id(self, run_id: str, attempt: int) -> str:
        """`run_job_id` of a run attempt, with the run's bucket tag."""
        return run_job_id(run_id, attempt, self.keys.run_tag(run_id))

    def enqueue(
        self,
        function: str,
        job_id: str,
        *args: Any,
        queue: str,
        client: Any = None,
        defer_ms: int = 0,
    ) -> Any:
        """Enqueue `function(*args)` as `job_id` on `queue` (a `Keys.queue_for` key) unless that
        job exists; rings the doorbell of `queue`'s bucket for the workers serving `queue`. In
        a cluster `job_id` carries the queue's bucket tag (`run_job_id`, `task_job_id`).

        Returns the script call's awaitable, or queues it into `client` (a pipeline of a single
        Redis: a cluster client pipelines no scripts) when given.
        """
        keys, argv = enqueue_call(
            self.keys, function, job_id, *args, queue=queue, defer_ms=defer_ms
        )
        return self._enqueue(keys=keys, args=argv, client=client)

    async def enqueue_run(
        self, queue: str, run_id: str, attempt: int, *, defer_ms: int = 0
    ) -> bool:
        job_id = self.job_id(run_id, attempt)
        return bool(
            await self.enqueue(RUN_JOB, job_id, run_id, attempt, queue=queue, defer_ms=defer_ms)
        )

    def enqueue_run_in(self, pipe: Any, queue: str, run_id: str, attempt: int) -> Any:
        """Queue the run's job into `pipe` (a single Redis's); await the result to finish
        queueing it."""
        job_id = self.job_id(run_id, attempt)
        return self.enqueue(RUN_JOB, job_id, run_id, attempt, queue=queue, client=pipe)
