"""Leases and fencing: who may run a run (or a task) right now, decided atomically in Redis.

A run's lease `<ns>:run:{ID}:lease` holds `"<worker> <attempt>"` with a short TTL; a task's
`…:tlease:{TID}` holds `"<worker> <attempt>.<try>"`. Every script checks the run hash's `attempt`
(the fence) first, so a worker whose attempt is stale learns it on its next refresh and aborts.

`reclaim` is the one place an attempt is bumped. It is used by the sweeper (the lease expired: the
worker died) and by a worker handing its runs back on SIGTERM. It sets a placeholder lease
`"- <new attempt>"` until the new attempt's job is claimed, so no other sweeper reclaims the run
twice while the `worker_lost` event and the new job are being written.

Every script that sets a run lease (claim, renewal, the placeholder of a reclaim) also writes the
run's entry in `<ns>:lease_deadlines`: run id → the moment the lease lapses, on Redis's clock
(`TIME`), so a sweep reads only the entries that fell due instead of every lease (`sweeper`).
Releasing a lease leaves its entry alone: the run is looked at when it falls due, and a run that
ended is dropped from the set then. Task leases have no entry: their run watches them (`fanout`).

Cluster: every script touches one slot. A run's hash, its leases, its bucket's lease deadlines
(`Keys.lease_deadlines_of`) and its bucket's queue (a run's jobs, its tasks' included, go to the
queue of its bucket) all carry the bucket's hash tag. Queued into a pipeline, a script goes as
EVAL with its body in a cluster (`call_script`): redis-py's cluster pipeline refuses EVALSHA, and a
node that never saw the script would answer NOSCRIPT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript

from tidings.keys import Keys

__all__ = ["Leases", "call_script"]

# The lease's deadline on Redis's clock, for `<ns>:lease_deadlines`: now (ms) + a ttl (ms).
_DEADLINE = """
local function deadline(ttl)
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl)
end
"""

# KEYS: run hash, lease, queue, lease deadlines. ARGV: attempt, lease value, ttl ms, job id, run id.
_CLAIM_RUN = (
    _DEADLINE
    + """
redis.call('ZREM', KEYS[3], ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'attempt', 'status')
if not h[2] then return 'missing' end
if h[1] ~= ARGV[1] then return 'stale' end
if h[2] == 'completed' or h[2] == 'failed' or h[2] == 'cancelled' then return h[2] end
local cur = redis.call('GET', KEYS[2])
if cur and cur ~= ARGV[2] and string.sub(cur, 1, 2) ~= '- ' then return 'busy' end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[4], deadline(tonumber(ARGV[3])), ARGV[5])
return 'ok'
"""
)

# KEYS: run hash, task lease, queue, steps, tasks. ARGV: attempt, lease value, ttl, job id, task id.
# Returns the task spec JSON, or a status word.
_CLAIM_TASK = """
redis.call('ZREM', KEYS[3], ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'attempt', 'status')
if not h[2] then return 'missing' end
if h[1] ~= ARGV[1] then return 'stale' end
if h[2] == 'completed' or h[2] == 'failed' or h[2] == 'cancelled' then return h[2] end
if redis.call('HEXISTS', KEYS[4], 'task:' .. ARGV[5]) == 1 then return 'done' end
if redis.call('HEXISTS', KEYS[4], 'fail:' .. ARGV[5]) == 1 then return 'done' end
local spec = redis.call('HGET', KEYS[5], ARGV[5])
if not spec then return 'missing' end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return spec
"""

# KEYS: run hash, lease, and for a run's lease its lease deadlines. ARGV: attempt, lease value,
# ttl ms, and for a run's lease its run id.
_REFRESH = (
    _DEADLINE
    + """
local h = redis.call('HMGET', KEYS[1], 'attempt', 'status')
if not h[2] then return 'missing' end
if h[1] ~= ARGV[1] then return 'fenced' end
if h[2] == 'completed' or h[2] == 'failed' or h[2] == 'cancelled' then return 'finished' end
local cur = redis.call('GET', KEYS[2])
if cur and cur ~= ARGV[2] then return 'fenced' end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if KEYS[3] then redis.call('ZADD', KEYS[3], deadline(tonumber(ARGV[3])), ARGV[4]) end
return 'ok'
"""
)

# KEYS: lease. ARGV: value. Delete only our own lease.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: run hash, lease, queue, lease deadlines. ARGV: expected attempt, mode, holder's lease
# value, placeholder ttl ms, job id of the expected attempt, run id. Modes: `lost` (the lease must
# have expired and the job be gone), `held` (the lease must still be exactly that value: a
# hand-back by its holder, or a holder whose connections are all gone). Returns {new attempt,
# previous worker} or false.
_RECLAIM = (
    _DEADLINE
    + """
local h = redis.call('HMGET', KEYS[1], 'attempt', 'status', 'worker')
if not h[2] or h[1] ~= ARGV[1] then return false end
if h[2] == 'completed' or h[2] == 'failed' or h[2] == 'cancelled' then return false end
local cur = redis.call('GET', KEYS[2])
if ARGV[2] == 'lost' then
  if cur then return false end
  if redis.call('ZSCORE', KEYS[3], ARGV[5]) then return false end
elseif cur ~= ARGV[3] then
  return false
end
local new = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('SET', KEYS[2], '- ' .. new, 'PX', ARGV[4])
redis.call('ZADD', KEYS[4], deadline(tonumber(ARGV[4])), ARGV[6])
redis.call('ZREM', KEYS[3], ARGV[5])
return {new, h[3] or ''}
"""
)

# KEYS: the run's steps, its queue, then each task's lease. ARGV: for each task its id, its
# current try's job id and its next try's. Returns {results, failures, then per task:
# leased (0/1), current job's score or nil, next job's score or nil}.
_PROBE_TASKS = """
local done, fails, out = {}, {}, {}
for i = 3, #KEYS do
  local a = (i - 3) * 3
  done[i - 2] = redis.call('HGET', KEYS[1], 'task:' .. ARGV[a + 1])
  fails[i - 2] = redis.call('HGET', KEYS[1], 'fail:' .. ARGV[a + 1])
  out[a + 3] = redis.call('EXISTS', KEYS[i])
  out[a + 4] = redis.call('ZSCORE', KEYS[2], ARGV[a + 2])
  out[a + 5] = redis.call('ZSCORE', KEYS[2], ARGV[a + 3])
end
out[1], out[2] = done, fails
return out
"""

# KEYS: run hash, target. ARGV: attempt, value. A fenced SET (the state snapshot).
_FENCED_SET = """
local h = redis.call('HMGET', KEYS[1], 'attempt', 'status')
if h[1] ~= ARGV[1] then return 'fenced' end
if h[2] == 'completed' or h[2] == 'failed' or h[2] == 'cancelled' then return 'finished' end
redis.call('SET', KEYS[2], ARGV[2])
return 'ok'
"""


def call_script(
    script: AsyncScript, keys: Sequence[str], args: Sequence[Any], client: Any = None
) -> Any:
    """`script(keys, args)`: awaitable, or queued into `client` (a pipeline; await it too). A
    cluster's pipeline gets it as EVAL with the body (module docstring)."""
    if isinstance(client, ClusterPipeline):
        return _queued(client.execute_command("EVAL", script.script, len(keys), *keys, *args))
    return script(keys=keys, args=args, client=client)


async def _queued(pipe: Any) -> Any:
    return pipe


def _word(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class Leases:
    def __init__(self, redis: Redis, keys: Keys, worker: str, ttl_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.worker = worker
        self.ttl_ms = ttl_ms
        self._claim_run = redis.register_script(_CLAIM_RUN)
        self._claim_task = redis.register_script(_CLAIM_TASK)
        self._refresh = redis.register_script(_REFRESH)
        self._release = redis.register_script(_RELEASE)
        self._reclaim = redis.register_script(_RECLAIM)
        self._fenced_set = redis.register_script(_FENCED_SET)
        self._probe_tasks = redis.register_script(_PROBE_TASKS)

    def run_value(self, attempt: int) -> str:
        return f"{self.worker} {attempt}"

    def task_value(self, attempt: int, try_: int) -> str:
        return f"{self.worker} {attempt}.{try_}"

    async def claim_run(self, run_id: str, attempt: int, job_id: str, queue: str) -> str:
        """Take the run's lease for `attempt` and its job off `queue`: 'ok', or why not."""
        reply = await self._claim_run(
            keys=[
                self.keys.run(run_id),
                self.keys.lease(run_id),
                queue,
                self.keys.lease_deadlines_of(run_id),
            ],
            args=[attempt, self.run_value(attempt), self.ttl_ms, job_id, run_id],
        )
        return _word(reply)

    async def claim_task(
        self, run_id: str, task_id: str, attempt: int, try_: int, job_id: str, queue: str
    ) -> tuple[str, bytes | None]:
        """('ok', spec JSON) when this execution may run the task, else (status, None)."""
        reply = await self._claim_task(
            keys=[
                self.keys.run(run_id),
                self.keys.task_lease(run_id, task_id),
                queue,
                self.keys.steps(run_id),
                self.keys.tasks(run_id),
            ],
            args=[attempt, self.task_value(attempt, try_), self.ttl_ms, job_id, task_id],
        )
        if isinstance(reply, bytes) and reply.startswith(b"{"):
            return "ok", reply
        return _word(reply), None

    def refresh_run(self, pipe: Any, run_id: str, attempt: int) -> Any:
        keys = self.keys
        return call_script(
            self._refresh,
            [keys.run(run_id), keys.lease(run_id), keys.lease_deadlines_of(run_id)],
            [attempt, self.run_value(attempt), self.ttl_ms, run_id],
            pipe,
        )

    def refresh_task(self, pipe: Any, run_id: str, task_id: str, attempt: int, try_: int) -> Any:
        return call_script(
            self._refresh,
            [self.keys.run(run_id), self.keys.task_lease(run_id, task_id)],
            [attempt, self.task_value(attempt, try_), self.ttl_ms],
            pipe,
        )

    def release(self, key: str, value: str, client: Any = None) -> Any:
        """Delete `key` if it still holds `value` (ours); awaitable, or queued into `client`."""
        return call_script(self._release, [key], [value], client)

    async def reclaim(
        self, run_id: str, attempt: int, job_id: str, queue: str, *, held_as: str | None = None
    ) -> tuple[int, str] | None:
        """Bump the run's attempt if its lease expired and its job is not on `queue` (or, with
        `held_as`, if the lease still holds exactly that value): returns the new attempt and the
        previous holder's name, or None if the run is not to be moved."""
        reply = await self.reclaim_in(None, run_id, attempt, job_id, queue, held_as=held_as)
        return self.reclaimed(reply)

    def reclaim_in(
        self,
        pipe: Any,
        run_id: str,
        attempt: int,
        job_id: str,
        queue: str,
        *,
        held_as: str | None = None,
    ) -> Any:
        """`reclaim` queued into `pipe` (awaitable when `pipe` is None); see `reclaimed`."""
        keys = self.keys
        return call_script(
            self._reclaim,
            [keys.run(run_id), keys.lease(run_id), queue, keys.lease_deadlines_of(run_id)],
            [
                attempt,
                "lost" if held_as is None else "held",
                held_as or "",
                self.ttl_ms,
                job_id,
                run_id,
            ],
            pipe,
        )

    @staticmethod
    def reclaimed(reply: Any) -> tuple[int, str] | None:
        if not reply:
            return None
        new, worker = reply
        return int(new), _word(worker)

    async def probe_tasks(
        self, run_id: str, queue: str, task_ids: Sequence[str], jobs: Sequence[tuple[str, str]]
    ) -> list[Any]:
        """What a run waiting on its tasks reads (`fanout`), atomically: the committed results
        and failures of `task_ids` (two lists), then per task whether it is leased, and the
        queue scores of its current and next try's jobs (`jobs`: their ids) or None."""
        args: list[str] = []
        for tid, (job, nxt) in zip(task_ids, jobs, strict=True):
            args += [tid, job, nxt]
        leases = [self.keys.task_lease(run_id, tid) for tid in task_ids]
        keys = [self.keys.steps(run_id), queue, *leases]
        replies: list[Any] = await self._probe_tasks(keys=keys, args=args)
        return replies

    async def fenced_set(self, run_id: str, attempt: int, key: str, value: bytes | str) -> str:
        return _word(
            await self._fenced_set(keys=[self.keys.run(run_id), key], args=[attempt, value])
        )
