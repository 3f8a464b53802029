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
- JSON job payloads both ways (`shared.jobs`), never pickle.
- `retry_jobs=False` and no stored results (`keep_result=0`): durability is by lease, and a job
  that fails or is cancelled is never re-run by arq. Job timeouts are effectively off (a run may
  be endless); the sweeper, not arq's timeout, recovers a run whose worker died.
- arq's in-progress marker only needs to cover the moment between arq's claim and ours (our claim
  script removes the job from the queue), so its TTL is short: a worker killed in that moment
  delays the job by seconds, not by the longest job timeout.
- Runs may hold all but a quarter of the job slots (`run_slots`): the rest is kept for tasks.
- Signals are ours (`services.worker.main`): SIGTERM hands runs back before arq cancels tasks.
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

from shared.jobs import RUN_JOB, RUN_JOB_PREFIX, TASK_JOB, dumps_job, loads_job

from .context import Engine
from .outage import OUTAGE_ERRORS, OutageNotice
from .runner import execute_run_job
from .tasks import execute_task_job

__all__ = ["TidingsWorker", "listen_doorbell", "run_slots"]

logger = logging.getLogger(__name__)

_NO_TIMEOUT_S = 10 * 365 * 86_400
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
        self._offered: list[bytes] = []
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
        self._offered.append(job_id.encode())
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
                    await self.start_jobs(batch)
                except (ConnectionError, TimeoutError, RedisError) as exc:
                    logger.debug("could not take offered jobs now: %s", exc)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's claim in one script instead of WATCH/EXISTS/ZSCORE/MULTI (four round trips,
        and four per loser of every race between woken workers), skipping the run jobs this
        worker has no run slot for: a run waiting on its tasks must never take the last slot.
        Safe to run concurrently: the poll loop and `offer` both call it."""
        for job_id_b in job_ids:
            if not self.allow_pick_jobs or self.job_counter >= self.max_jobs:
                break
            job_id = job_id_b.decode()
            is_run = job_id.startswith(RUN_JOB_PREFIX)
            if is_run and self._runs_held() >= self.run_slots:
                continue
            await self.sem.acquire()
            self.job_counter += 1
            self._claiming += is_run
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
