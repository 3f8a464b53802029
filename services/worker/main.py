"""One worker process: the dispatcher plus the doorbell, lease and sweep loops.

It serves the queues of the workflow versions it loaded (`loading.served_pairs`), where runs of
those versions are routed (`tidings.jobs.queue_of`).

Shutdown on SIGTERM/SIGINT: stop taking jobs, hand every held run and task back to the pool at
once (no waiting for leases to expire, see `handback`), let each job end on its own, close, log
"stopped" and exit 0, all within a few seconds. A second signal while shutting down is ignored:
the hand-back is already bounded.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from tidings.catalog import CatalogWriter
from tidings.jobs import RUN_JOB, TASK_JOB
from tidings.runs import ensure_schema
from tidings.sdk import registry
from tidings.settings import Settings

from .context import Engine, connect_worker, worker_name
from .dispatch import Dispatcher, JobFunction
from .doorbell import listen_doorbell, unregister
from .handback import hand_back
from .heartbeat import keep_leases
from .liveness import client_name
from .loading import TEST_WORKFLOWS_ENV, keep_catalog, load_workflows, served_pairs
from .runner import execute_run_job
from .sweeper import sweep
from .tasks import execute_task_job

__all__ = ["TEST_WORKFLOWS_ENV", "run_worker", "serve"]

logger = logging.getLogger(__name__)

# SIGTERM to exit: hand-back and jobs ending within this, then closing within _CLOSE_TIMEOUT_S.
# Under honcho's 5 s (and compose's stop_grace_period) before SIGKILL.
_STOP_TIMEOUT_S = 3.0
_CLOSE_TIMEOUT_S = 1.0


def run_worker(settings: Settings, workflows: Sequence[str] | None = None) -> None:
    """Load the workflow modules (`loading`: `workflows` overrides TIDINGS_WORKFLOWS; LoadError),
    then run one worker until SIGTERM/SIGINT (what `tidings worker` calls)."""
    load_workflows(settings, workflows)
    asyncio.run(serve(settings))


async def serve(
    settings: Settings,
    *,
    name: str | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT when `handle_signals`), then hand back."""
    if not settings.redis_url:
        raise ValueError("a worker needs REDIS_URL (or TIDINGS_REDIS_URL)")
    name = name or worker_name()
    # Named connections: the sweeping worker tells from CLIENT LIST that we are alive.
    redis = connect_worker(settings, client_name(name))
    engine = Engine.build(settings, redis, name)
    await ensure_schema(redis, engine.keys)
    queues = [q for wf, version in served_pairs() for q in engine.keys.queues_for(wf, version)]
    functions: dict[str, JobFunction] = {RUN_JOB: execute_run_job, TASK_JOB: execute_task_job}
    dispatcher = Dispatcher(engine, queues, functions)
    stopping = stop or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)

    catalog = CatalogWriter(redis, engine.keys, engine.name, registry.workflows.values())
    await catalog.publish()
    keeper = engine.spawn(keep_catalog(catalog), name="catalog")
    engine.spawn(listen_doorbell(engine, dispatcher), name="doorbell")
    engine.spawn(keep_leases(engine), name="leases")
    engine.spawn(sweep(engine), name="sweeper")
    polling = asyncio.create_task(dispatcher.run(), name="dispatch")
    logger.info("worker %s serving queue %s", engine.name, ", ".join(queues))
    signalled = asyncio.create_task(stopping.wait(), name="stop-signal")
    try:
        done, _ = await asyncio.wait([polling, signalled], return_when=asyncio.FIRST_COMPLETED)
        if polling in done:
            polling.result()  # surface a crash of the poll loop
    finally:
        signalled.cancel()
        # No renewal may follow the withdrawal: one would list this worker as serving for a
        # further TTL_S after it is gone (new runs routed to a version nobody serves).
        keeper.cancel()
        await asyncio.wait([keeper], timeout=_CLOSE_TIMEOUT_S)
        try:
            await asyncio.wait_for(catalog.withdraw(), _CLOSE_TIMEOUT_S)
        except Exception as exc:  # Redis away: the entries lapse on their own
            logger.info("catalog entries not withdrawn: %s", exc)
        await _shutdown(engine, dispatcher, polling)
        await redis.aclose()


async def _shutdown(engine: Engine, dispatcher: Dispatcher, polling: asyncio.Task[None]) -> None:
    """Hand back, let every job end on its own, close. Nothing is cancelled half way unless the
    bound runs out (Redis unreachable, say): a job cancelled mid-claim or mid-release would leave
    its run to the sweepers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _STOP_TIMEOUT_S
    engine.closing = True  # from here on, a run or task claimed hands itself back (`handback`)
    dispatcher.picking = False
    if engine.runs or engine.tasks:
        logger.info("handing back %d runs and %d tasks", len(engine.runs), len(engine.tasks))
        try:
            failed = await asyncio.wait_for(hand_back(engine), _STOP_TIMEOUT_S)
        except TimeoutError:
            logger.warning("hand-back timed out; the sweepers will recover the rest")
        else:
            if failed:
                logger.warning("%d hand-backs failed; the sweepers will recover them", failed)
    # Claims in flight finish (a job won now hands itself back), then the poll loop can go.
    try:
        await asyncio.wait_for(dispatcher.stop_picking(), max(0.1, deadline - loop.time()))
    except TimeoutError:
        logger.warning("a job claim did not finish; its job waits for its in-progress marker")
    polling.cancel("worker stopping")
    await _wait_jobs(dispatcher, deadline)
    await engine.close(_CLOSE_TIMEOUT_S)
    try:  # out of the registry of workers the sweeper asks CLIENT LIST about
        await asyncio.wait_for(unregister(engine), _CLOSE_TIMEOUT_S)
    except Exception as exc:
        logger.info("not unregistered (%s): the sweepers drop a worker gone holding nothing", exc)
    logger.info("worker %s stopped", engine.name)


async def _wait_jobs(dispatcher: Dispatcher, deadline: float) -> None:
    """Wait for the job tasks to end (a handed-back one ends at its next await); cancel what is
    still running at `deadline`."""
    loop = asyncio.get_running_loop()
    while running := [task for task in dispatcher.jobs.values() if not task.done()]:
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.warning("%d jobs still running; cancelling them", len(running))
            for task in running:
                task.cancel("worker stopping")
            await asyncio.wait(running, timeout=_CLOSE_TIMEOUT_S)
            return
        await asyncio.wait(running, timeout=remaining)
