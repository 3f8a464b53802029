"""The dispatcher: our own claim-and-execute loop over arq's job format.

Jobs stay in arq's format (`tidings.jobs`): a queue is a zset of job ids scored by when they may
start (ms), `arq:job:<id>` holds the payload (`arq.jobs.serialize_job`, JSON), a claimed job is
marked by `arq:in-progress:<id>`. Anything that enqueues the arq way (`ArqRedis.enqueue_job` with
our serializer, `_job_id` and `_queue_name`) is run here. The loop is ours rather than arq's
`Worker` because what it must do well (doorbell offers, fair claiming, run slots, a one-script
claim, a bounded hand-back on SIGTERM) meant replacing arq's `main`, `start_jobs` and private
slot bookkeeping, which no arq release promises to keep.

- Queues: a dispatcher serves the list of queue keys it is given (one per workflow version this
  worker loaded, `Keys.queue_for`; in a cluster one per version and bucket, `Keys.queues_for`).
  The claim script takes its queue as a key, so routing by workflow, version or bucket only
  changes that list. A job id carries its run's bucket tag, so the queue, `arq:job:<id>` and
  `arq:in-progress:<id>` share a slot and the claim stays one script.
- Waking: the doorbell (`doorbell`) names the queue and the job (`job <wf>:<version> <id>`), so
  a woken worker that serves that queue claims the job directly (`offer`) without reading the
  queue first; jobs of queues it does not serve are ignored. A finished job wakes the poller (a
  slot freed up). `settings.worker_poll_s` is the fallback poll for a missed message (Redis
  restarted, a deferred job fell due): one pipeline of ZRANGEBYSCORE over the served queues.
- Claiming is one script: the job must be queued and due, `arq:in-progress:<id>` is set NX with
  a short TTL and the payload is read, in one round trip. The marker only needs to cover the
  moment until the job's lease script removes it from the queue (`Leases.claim_run` and
  `claim_task`), so a worker killed in that moment delays the job by seconds. A job whose
  payload expired is dropped from its queue there and then (the sweeper re-enqueues its run).
- Finishing deletes the job key, the in-progress key and the queue member, as arq does; no
  results are stored and nothing is retried by the loop: durability is by lease (`leases`,
  `sweeper`), and a job that fails logs its error and is done.
- Slots: at most `worker_max_jobs` jobs at once, and runs may hold all but a quarter of them
  (`run_slots`): the rest is kept for tasks, so runs fanning out on a busy pool cannot deadlock
  waiting for their own tasks.

Fair claiming. Every idle worker hears every doorbell, and Redis delivers a message to its
subscribers in the order they subscribed, so in a plain race the same worker would win almost
every job of a burst (12 runs on 3 workers went 10/1/1). Instead a worker that holds `k` jobs waits
`k * _FAIR_STEP_S` (at most `_FAIR_CAP_S`) before each claim, and claims only if the job is still
there: an idle worker claims at once, and of busy workers the least busy comes first. A job costs
nothing more to dispatch while any worker is idle; when all are busy, the least busy one's wait.
Jobs that come together (a burst of offers, whose waits, counted from the offer, end together;
what a poll finds) are tried in a random order, as many of the oldest as the worker has free
slots: walked in the same order by every worker, whichever worker was ahead won every job of a
streak while the others lost each claim behind it (on a cluster, 60 runs on 3 workers went
35/14/11).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.jobs import deserialize_job
from arq.utils import timestamp_ms
from redis.exceptions import RedisError

from tidings.jobs import RUN_JOB_PREFIX, job_key, loads_job

from .context import Engine
from .outage import OUTAGE_ERRORS, OutageNotice

__all__ = ["Dispatcher", "JobFunction", "run_slots"]

logger = logging.getLogger(__name__)

JobFunction = Callable[..., Awaitable[Any]]

# Fair claiming (module docstring): the wait before a claim per job held, and its ceiling.
_FAIR_STEP_S = 0.002
_FAIR_CAP_S = 0.05
# KEYS: queue, arq's in-progress key, arq's job key. ARGV: job id, now ms, in-progress ttl ms.
# Returns the payload when this worker may start the job, `expired` when its payload is gone
# (dropped from the queue here), else false (not queued, not due, or another worker's).
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return false end
local job = redis.call('GET', KEYS[3])
if job then return job end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 'expired'
"""


def run_slots(max_jobs: int) -> int:
    """How many of a worker's job slots runs may hold: all but a quarter (at least one) kept for
    tasks, so runs fanning out on a busy pool cannot deadlock waiting for their own tasks."""
    if max_jobs <= 1:
        return 1
    return max_jobs - max(1, max_jobs // 4)


class Dispatcher:
    """Claims jobs from `queues` and runs them with `functions` (arq function name → coroutine
    function called as `fn(ctx, *args, **kwargs)`; `ctx` holds `engine`, `queue`, `job_id`)."""

    def __init__(
        self, engine: Engine, queues: Sequence[str], functions: Mapping[str, JobFunction]
    ) -> None:
        settings = engine.settings
        self.engine = engine
        self.queues = list(queues)
        self.functions = dict(functions)
        self.max_jobs = settings.worker_max_jobs
        self.run_slots = run_slots(settings.worker_max_jobs)
        self.poll_s = settings.worker_poll_s
        self.in_progress_ms = int(max(2.0, 2 * settings.lease_ttl_ms / 1000) * 1000)
        self.picking = True
        self.jobs: dict[str, asyncio.Task[None]] = {}  # running jobs by id
        self._by_name = {q.removeprefix(engine.keys.queue_prefix): q for q in self.queues}
        self._held = 0  # slots taken: running jobs and claims in flight
        self._runs_claiming = 0  # run jobs being claimed right now (their slot is taken)
        self._claims = 0  # claims in flight, runs and tasks
        self._no_claims = asyncio.Event()
        self._no_claims.set()
        self._wake = asyncio.Event()
        self._offered: list[tuple[str, str, float]] = []  # (queue, job id, when it was offered)
        self._has_offers = asyncio.Event()
        self._claim = engine.redis.register_script(_CLAIM)

    def wake(self) -> None:
        self._wake.set()

    def serves(self, name: str) -> str | None:
        """The queue key for a doorbell's queue name (`<workflow>:<version>`), if served here."""
        return self._by_name.get(name)

    async def run(self) -> None:
        """Poll whenever woken (or every `poll_s`), and take offers meanwhile; until cancelled."""
        self.engine.spawn(self._take_offers(), name="offers")
        outage = OutageNotice("queue poll")
        while True:
            self._wake.clear()
            try:
                await self._poll()
            except OUTAGE_ERRORS as exc:
                outage.failed(exc)  # Redis restarting or unreachable: retry after the poll delay
            except (ConnectionError, TimeoutError, RedisError) as exc:
                logger.warning("queue poll failed: %s", exc)
            else:
                outage.ok()
            if self._wake.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    def offer(self, name: str, job_id: str) -> bool:
        """A job was just enqueued on queue `name`: try to start it at once, without reading the
        queue first. False (ignored) when this worker does not serve that queue. If it cannot
        start here (no slot, another worker won, deferred), polling finds it."""
        queue = self._by_name.get(name)
        if queue is None:
            return False
        self._offered.append((queue, job_id, asyncio.get_running_loop().time()))
        self._has_offers.set()
        return True

    def claim_delay(self) -> float:
        """How long after a job is offered this worker may claim it: longer the more jobs it
        holds. Counted from the offer, so waits never add up over a burst's offers."""
        return min(self._held * _FAIR_STEP_S, _FAIR_CAP_S)

    async def stop_picking(self) -> None:
        """Take no more jobs; return once no claim is in flight, so every job this worker won
        already has its task in `jobs` (cancelling a claim half way would lose its job until
        the in-progress marker lapses)."""
        self.picking = False
        await self._no_claims.wait()

    async def _take_offers(self) -> None:
        """Claim offered jobs one after the other: a claim lost to another worker gives its slot
        back before the next offer is weighed, so no offer is dropped for a slot that frees."""
        while True:
            await self._has_offers.wait()
            self._has_offers.clear()
            while self._offered:
                batch = list(self._offered)
                self._offered.clear()
                try:
                    await self._start(self._spread(batch))
                except (ConnectionError, TimeoutError, RedisError) as exc:
                    logger.debug("could not take offered jobs now: %s", exc)

    async def _poll(self) -> None:
        """The due jobs of every served queue, oldest first, up to the free slots' worth each."""
        free = self.max_jobs - self._held
        if not self.picking or free <= 0 or not self.queues:
            return
        now = timestamp_ms()
        async with self.engine.redis.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                pipe.zrangebyscore(queue, "-inf", now, start=0, num=self.max_jobs, withscores=True)
            replies = await pipe.execute()
        found = sorted(
            (score, queue, member.decode())
            for queue, reply in zip(self.queues, replies, strict=True)
            for member, score in reply
        )
        when = asyncio.get_running_loop().time()
        await self._start(self._spread([(queue, job_id, when) for _, queue, job_id in found]))

    def _spread(self, jobs: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
        """`jobs` (oldest first) in the order to try them: the oldest as many as this worker has
        free slots in a random order, then the rest as they were (module docstring: fair
        claiming). Another worker walking the same jobs tries them in another order."""
        free = max(self.max_jobs - self._held, 0)
        head = jobs[:free]
        random.shuffle(head)
        return head + jobs[free:]

    def _may_claim(self, is_run: bool) -> bool | None:
        """True: claim; False: skip this job; None: take no more jobs now."""
        if not self.picking or self._held >= self.max_jobs:
            return None
        return not is_run or self._runs_held() < self.run_slots

    def _runs_held(self) -> int:
        return sum(1 for jid in self.jobs if jid.startswith(RUN_JOB_PREFIX)) + self._runs_claiming

    async def _start(self, jobs: list[tuple[str, str, float]]) -> None:
        """Claim and start `jobs` (queue, job id, when offered), skipping the run jobs this worker
        has no run slot for: a run waiting on its tasks must never take the last slot. A busy
        worker claims a job only `claim_delay` after it was offered (fair claiming). Safe to run
        concurrently: the poll loop and the offers both call it; the slot checks and counts
        between two awaits are atomic for the event loop."""
        loop = asyncio.get_running_loop()
        for queue, job_id, offered in jobs:
            is_run = job_id.startswith(RUN_JOB_PREFIX)
            may = self._may_claim(is_run)
            if may and (wait := offered + self.claim_delay() - loop.time()) > 0:
                await asyncio.sleep(wait)
                may = self._may_claim(is_run)
            if may is None:
                break
            if not may or job_id in self.jobs:
                continue
            self._held += 1
            self._runs_claiming += is_run
            self._claims += 1
            self._no_claims.clear()
            try:
                reply = await self._claim(
                    keys=[queue, in_progress_key_prefix + job_id, job_key(job_id)],
                    args=[job_id, timestamp_ms(), self.in_progress_ms],
                )
            except BaseException:
                self._held -= 1
                raise
            finally:
                self._runs_claiming -= is_run
                self._claims -= 1
                if not self._claims:
                    self._no_claims.set()  # waiters run later: a won job's task exists by then
            if not reply or reply == b"expired":
                self._held -= 1
                if reply:
                    logger.warning("job %s expired before it was claimed; dropped", job_id)
                continue
            task = asyncio.create_task(self._execute(queue, job_id, reply), name=f"job:{job_id}")
            self.jobs[job_id] = task
            task.add_done_callback(partial(self._done, job_id))

    def _done(self, job_id: str, _: asyncio.Task[None]) -> None:
        self.jobs.pop(job_id, None)
        self._held -= 1
        self._wake.set()  # a slot freed up: look for queued work now

    async def _execute(self, queue: str, job_id: str, payload: bytes) -> None:
        try:
            job = deserialize_job(payload, deserializer=loads_job)
            fn = self.functions.get(job.function)
            if fn is None:
                logger.error("job %s: no function %r here; dropped", job_id, job.function)
                return
            ctx: dict[str, Any] = {"engine": self.engine, "queue": queue, "job_id": job_id}
            await fn(ctx, *job.args, **job.kwargs)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("job %s failed", job_id)
        finally:
            await asyncio.shield(self._finish(queue, job_id))

    async def _finish(self, queue: str, job_id: str) -> None:
        """What arq does when a job ends and keeps no result: its keys and queue entry go."""
        try:
            async with self.engine.redis.pipeline(transaction=False) as pipe:
                # One key a DEL: a cluster pipeline takes no multi-key DEL (same slot or not).
                pipe.delete(job_key(job_id))
                pipe.delete(in_progress_key_prefix + job_id)
                pipe.zrem(queue, job_id)
                await pipe.execute()
        except (ConnectionError, TimeoutError, OSError, RedisError) as exc:
            # Its payload lapses with its TTL; its run's or task's lease says what happens next.
            logger.warning("job %s: could not clear its keys (%s)", job_id, exc)
