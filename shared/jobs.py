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
- The wake channel is the pool's doorbell. Messages are `job <workflow>:<version> <job id>`
  (something was enqueued on that queue: a worker serving it claims the job at once) and
  `signal <run id>` (a control signal arrived: the worker running that run reads it at once).
  Publishing the doorbell is part of the same script as the enqueue, one round trip.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from .events import now_ms
from .keys import Keys

__all__ = [
    "DEFAULT_VERSION",
    "JOB_TTL_MS",
    "RUN_JOB",
    "RUN_JOB_PREFIX",
    "TASK_JOB",
    "TASK_JOB_PREFIX",
    "JobQueue",
    "dumps_job",
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

# KEYS[1] job key, KEYS[2] queue zset. ARGV: payload, ttl ms, score, job id, wake channel, queue
# name without the namespace's queue prefix (`<workflow>:<version>`).
_ENQUEUE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
  redis.call('PUBLISH', ARGV[5], 'job ' .. ARGV[6] .. ' ' .. ARGV[4])
  return 1
end
return 0
"""


class Routed(Protocol):
    """What routes a run's jobs: a run record, a run handle."""

    @property
    def workflow(self) -> str: ...

    @property
    def version(self) -> str: ...


def queue_of(keys: Keys, run: Routed) -> str:
    """The queue of `run`'s jobs, its own and its tasks': its workflow's at its version."""
    return keys.queue_for(run.workflow, run.version)


def queue_of_fields(keys: Keys, workflow: bytes, version: bytes | None) -> str:
    """`queue_of` from a run record's raw `workflow` and `version` fields (an HMGET's reply); a
    record written before runs had versions is at `DEFAULT_VERSION`."""
    return keys.queue_for(workflow.decode(), (version or b"").decode() or DEFAULT_VERSION)


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


async def workers_listening(redis: Redis, keys: Keys) -> int:
    """How many workers are ready: each subscribes to the doorbell once it serves the queue."""
    [(_, count)] = await redis.pubsub_numsub(keys.wake_channel)
    return int(count)


def job_key(job_id: str) -> str:
    return job_key_prefix + job_id


class JobQueue:
    """Enqueues arq jobs on the namespace's queues. One per process."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._enqueue = redis.register_script(_ENQUEUE)

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
        job exists; rings the doorbell for the workers serving `queue`.

        Returns the script call's awaitable, or queues it into `client` (a pipeline) when given,
        so it can join a MULTI with other writes.
        """
        now = now_ms()
        payload = serialize_job(function, args, {}, None, now, serializer=dumps_job)
        return self._enqueue(
            keys=[job_key(job_id), queue],
            args=[
                payload,
                JOB_TTL_MS,
                now + defer_ms,
                job_id,
                self.keys.wake_channel,
                queue.removeprefix(self.keys.queue_prefix),
            ],
            client=client,
        )

    async def enqueue_run(
        self, queue: str, run_id: str, attempt: int, *, defer_ms: int = 0
    ) -> bool:
        job_id = run_job_id(run_id, attempt)
        return bool(
            await self.enqueue(RUN_JOB, job_id, run_id, attempt, queue=queue, defer_ms=defer_ms)
        )

    def enqueue_run_in(self, pipe: Any, queue: str, run_id: str, attempt: int) -> Any:
        """Queue the run's job into `pipe`; await the result to finish queueing it."""
        job_id = run_job_id(run_id, attempt)
        return self.enqueue(RUN_JOB, job_id, run_id, attempt, queue=queue, client=pipe)
