"""arq's Worker, tuned for dispatch latency, and the doorbell that wakes it.

arq polls its queue every `poll_delay`; an enqueue waits on average half of it. `TidingsWorker`
keeps arq's poll iteration (read the queue, claim, run, finish) and replaces the wait between
polls: it waits on an `asyncio.Event` that the doorbell listener sets when `job …` arrives on
the wake channel (and that a finished job sets, since a slot freed up), with
`settings.worker_poll_s` as the fallback for a missed message. Better still, the doorbell names
the job, so a woken worker claims it directly (`offer`) without reading the queue first. Every
idle worker wakes, so the claim matters too: it is one script (same checks, same in-progress key
as arq's) instead of arq's four round trips per job and per worker that loses the race.

Other settings, and why:
- JSON job payloads both ways (`tidings.jobs`), never pickle.
- `retry_jobs=False` and no stored results (`keep_result=0`): durability is by lease, and a job
  that fails or is cancelled is never re-run by arq. Job timeouts are effectively off (a run may
  be endless); the sweeper, not arq's timeout, recovers a run whose worker died.
- arq's in-progress marker only needs to cover the moment between arq's claim and ours (our claim
  script removes the job from the queue), so its TTL is short: a worker killed in that moment
  delays the job by seconds, not by the longest job timeout.
- Runs may hold all but a quarter of the job slots (`run_slots`): the rest is kept for tasks.
- Signals are ours (`tidings.services.worker.main`): SIGTERM hands runs back before arq cancels
  tasks.

Fair claiming. Every idle worker hears every doorbell, and Redis delivers a message to its
subscribers in the order they subscribed, so in a plain race the same worker would win almost
every job of a burst (12 runs on 3 workers went 10/1/1). Instead a worker that holds `k` jobs waits
`k * _FAIR_STEP_S` (at most `_FAIR_CAP_S`) before each claim, and claims only if the job is still
there: an idle worker claims at once, and of busy workers the least busy comes first. A job costs
nothing more to dispatch while any worker is idle; when all are busy, the least busy one's wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.exceptions import RedisError

from tidings.jobs import RUN_JOB, RUN_JOB_PREFIX, TASK_JOB, dumps_job, loads_job

from .context import Engine
from .outage import OUTAGE_ERRORS, OutageNotice
from .runner import execute_run_job
from .tasks import execute_task_job

__all__ = ["TidingsWorker", "listen_doorbell", "run_slots"]

logger = logging.getLogger(__name__)

_NO_TIMEOUT_S = 10 * 365 * 86_400
# Fair claiming (module docstring): the wait before a claim per job held, and its ceiling.
_FAIR_STEP_S = 0.002
_FAIR_CAP_S = 0.05
# KEYS: queue, arq's in-progress key. ARGV: job id, now ms, in-progress ttl ms. Returns the
# job's score when this worker may start it (same checks as arq's claim), else false.
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return score end
return false
"""


def run_slots(max_jobs: int) -> int:
    """How many of a worker's job slots runs may hold: all but a quarter (at least one) kept for
    tasks, so runs fanning out on a busy pool cannot deadlock waiting for their own tasks."""
    if max_jobs <= 1:
        return 1
    return max_jobs - max(1, max_jobs // 4)


_RECONNECT_S = 0.2


class TidingsWorker(Worker):
    def __init__(self, engine: Engine, pool: ArqRedis) -> None:
        settings = engine.settings
        super().__init__(
            functions=[
                func(execute_run_job, name=RUN_JOB),
                func(execute_task_job, name=TASK_JOB),
            ],
            queue_name=engine.keys.queue,
            redis_pool=pool,
            max_jobs=settings.worker_max_jobs,
            job_timeout=_NO_TIMEOUT_S,
            keep_result=0,
            poll_delay=settings.worker_poll_s,
            retry_jobs=False,
            handle_signals=False,
            job_serializer=dumps_job,
            job_deserializer=loads_job,
            ctx={"engine": engine},
            log_results=False,
        )
        self.in_progress_timeout_s = max(2.0, 2 * settings.lease_ttl_ms / 1000)
        self.run_slots = run_slots(settings.worker_max_jobs)
        self._wake = asyncio.Event()
        self._claim = pool.register_script(_CLAIM)
        self._claiming = 0  # run jobs being claimed right now (their slot is taken)
        self._claims = 0  # claims in flight, runs and tasks
        self._no_claims = asyncio.Event()
        self._no_claims.set()
        self._offered: list[tuple[bytes, float]] = []  # (job id, when it was offered)
        self._has_offers = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def main(self) -> None:
        """arq's loop with an event-driven wait between polls (no burst mode: never used)."""
        self.ctx["redis"] = self.pool
        self.ctx["engine"].spawn(self.take_offers(), name="offers")
        outage = OutageNotice("queue poll")
        while True:
            self._wake.clear()
            try:
                await self._poll_iteration()
            except OUTAGE_ERRORS as exc:
                outage.failed(exc)  # Redis restarting or unreachable: retry after the poll delay
            except (ConnectionError, TimeoutError, RedisError) as exc:
                logger.warning("queue poll failed: %s", exc)
            else:
                outage.ok()
            if self._wake.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_delay_s)

    def offer(self, job_id: str) -> None:
        """A job was just enqueued: try to start it at once, without reading the queue first.
        If it cannot start here (no slot, another worker won, deferred), polling finds it."""
        self._offered.append((job_id.encode(), asyncio.get_running_loop().time()))
        self._has_offers.set()

    async def take_offers(self) -> None:
        """Claim offered jobs one after the other: a claim lost to another worker gives its slot
        back before the next offer is weighed, so no offer is dropped for a slot that frees."""
        while True:
            await self._has_offers.wait()
            self._has_offers.clear()
            while self._offered:
                batch = list(self._offered)
                self._offered.clear()
                try:
                    await self._start(batch)
                except (ConnectionError, TimeoutError, RedisError) as exc:
                    logger.debug("could not take offered jobs now: %s", exc)

    def claim_delay(self) -> float:
        """How long after a job is offered this worker may claim it: longer the more jobs it
        holds. Counted from the offer, so waits never add up over a burst's offers."""
        return min(self.job_counter * _FAIR_STEP_S, _FAIR_CAP_S)

    async def stop_picking(self) -> None:
        """Take no more jobs; return once no claim is in flight, so every job this worker won
        already has its task in `tasks` (cancelling a claim half way would lose its job until
        arq's in-progress marker lapses)."""
        self.allow_pick_jobs = False
        await self._no_claims.wait()

    def _may_claim(self, is_run: bool) -> bool | None:
        """True: claim; False: skip this job; None: take no more jobs now."""
        if not self.allow_pick_jobs or self.job_counter >= self.max_jobs:
            return None
        return not is_run or self._runs_held() < self.run_slots

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's poll loop found these jobs queued (see `_start`)."""
        now = asyncio.get_running_loop().time()
        await self._start([(job_id, now) for job_id in job_ids])

    async def _start(self, jobs: list[tuple[bytes, float]]) -> None:
        """arq's claim in one script instead of WATCH/EXISTS/ZSCORE/MULTI (four round trips,
        and four per loser of every race between woken workers), skipping the run jobs this
        worker has no run slot for: a run waiting on its tasks must never take the last slot.
        A busy worker claims a job only `claim_delay` after it was offered (fair claiming, see
        the module docstring). Safe to run concurrently: the poll loop and `offer` both call it."""
        loop = asyncio.get_running_loop()
        for job_id_b, offered in jobs:
            job_id = job_id_b.decode()
            is_run = job_id.startswith(RUN_JOB_PREFIX)
            may = self._may_claim(is_run)
            if may and (wait := offered + self.claim_delay() - loop.time()) > 0:
                await asyncio.sleep(wait)
                may = self._may_claim(is_run)
            if may is None:
                break
            if not may:
                continue
            await self.sem.acquire()
            if not self.allow_pick_jobs:  # `stop_picking` came while we waited for the slot
                self.sem.release()
                break
            self.job_counter += 1
            self._claiming += is_run
            self._claims += 1
            self._no_claims.clear()
            try:
                score = await self._claim(
                    keys=[self.queue_name, in_progress_key_prefix + job_id],
                    args=[job_id, timestamp_ms(), int(self.in_progress_timeout_s * 1000)],
                )
            except BaseException:
                self._release_sem_dec_counter_on_complete()
                raise
            finally:
                self._claiming -= is_run
                self._claims -= 1
                if not self._claims:
                    self._no_claims.set()  # waiters run later: a won job's task exists by then
            if not score:  # another worker was first, or the job is gone or deferred
                self.job_counter -= 1
                self.sem.release()
                continue
            task = asyncio.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    def _runs_held(self) -> int:
        running = sum(
            1 for jid, t in self.tasks.items() if jid.startswith(RUN_JOB_PREFIX) and not t.done()
        )
        return running + self._claiming

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._wake.set()  # a slot freed up: look for queued work now


async def listen_doorbell(engine: Engine, worker: TidingsWorker) -> None:
    """Route wake-channel messages: `job …` wakes the poller, `signal <run>` reaches the run."""
    outage = OutageNotice("doorbell")
    while True:
        pubsub = engine.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(engine.keys.wake_channel)
            outage.ok()
            worker.wake()  # anything enqueued while we were not listening
            while True:
                msg = await pubsub.get_message(timeout=None)
                if msg is not None:
                    _route(engine, worker, msg["data"])
        except asyncio.CancelledError:
            raise
        except OUTAGE_ERRORS as exc:
            outage.failed(exc)
            await asyncio.sleep(_RECONNECT_S)
        except Exception:
            logger.warning("doorbell connection lost; reconnecting", exc_info=True)
            await asyncio.sleep(_RECONNECT_S)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]


def _route(engine: Engine, worker: TidingsWorker, data: Any) -> None:
    text = data.decode() if isinstance(data, bytes) else str(data)
    kind, _, arg = text.partition(" ")
    if kind == "signal":
        handle = engine.runs.get(arg)
        if handle is not None:
            engine.spawn(handle.signals.poll(), name=f"signals:{arg}")
    elif engine.closing:
        return
    elif kind == "job" and arg:
        worker.offer(arg)
    else:
        worker.wake()
