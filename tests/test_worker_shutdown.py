"""SIGTERM under load: every run and task in flight is handed back, the worker logs that it
stopped and exits 0, no traceback anywhere, and no run is ever left running without a lease and
a job (regression: a worker's hand-back died of a CancelledError from its own publisher, arq
logged the cancelled jobs as failed, and a run was stranded `running` with neither)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

import tests.workflows_for_tests  # noqa: F401
import tidings.services.workflows  # noqa: F401  (research and monty, started from here)
from tests.engine_helpers import (
    TEST_WORKFLOWS,
    all_events,
    listening,
    of_type,
    start_workers,
    until,
    wait_terminal,
)
from tidings.bus import Bus
from tidings.control import Control
from tidings.events import EventType
from tidings.jobs import run_job_id
from tidings.keys import Keys

pytestmark = pytest.mark.slow

# A lease far longer than the test: only a hand-back can move a run in time, so a run that was
# not handed back (or whose hand-back stopped half way) makes the test time out.
_SETTINGS = {"lease_ttl_ms": 300_000, "lease_refresh_ms": 1000, "llm_token_delay_ms": 2}
_WORKERS = 3
_FINISHED = (b"completed", b"failed", b"cancelled")


async def _stranded(redis: Redis, keys: Keys, run_ids: list[str]) -> list[str]:
    """Unfinished runs with neither a lease nor their job queued, each from one atomic snapshot
    (a script over the run's slot: its record, its lease and its bucket's queues)."""
    out = []
    for rid in run_ids:
        queues = [keys.queue_for(wf, "1", keys.bucket(rid)) for wf in ("research", "monty")]
        status, attempt, lease, research, monty = await redis.eval(
            _SNAPSHOT, 4, keys.run(rid), keys.lease(rid), *queues
        )  # type: ignore[misc]
        if status in _FINISHED or lease is not None:
            continue
        jobs = {job.decode() for job in research + monty}
        if status == b"queued" and run_job_id(rid, int(attempt), keys.run_tag(rid)) in jobs:
            continue
        out.append(f"{rid}: {status!r}, attempt {attempt!r}, no lease, no job")
    return out


_SNAPSHOT = """
local h = redis.call('HMGET', KEYS[1], 'status', 'attempt')
return {h[1], h[2], redis.call('GET', KEYS[2]), redis.call('ZRANGE', KEYS[3], 0, -1),
  redis.call('ZRANGE', KEYS[4], 0, -1)}
"""


async def _holding(redis: Redis, keys: Keys, run_ids: list[str], name: str) -> bool:
    """The worker `name` is running at least one run right now."""
    async with redis.pipeline(transaction=False) as pipe:
        for rid in run_ids:
            pipe.get(keys.lease(rid))
        leases = await pipe.execute()
    return any(lease and lease.decode().rpartition(" ")[0] == name for lease in leases)


def _assert_clean_stop(processes: Any, proc: subprocess.Popen[bytes]) -> None:
    assert proc.wait(15) == 0, processes.output(proc)[-3000:]
    log = processes.output(proc)
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert f"worker {_name(log)} stopped" in log, log[-3000:]


def _name(log: str) -> str:
    """The worker's name, from its first line ("worker <name> serving queue …")."""
    line = next(line for line in log.splitlines() if " serving queue " in line)
    return line.split("worker ", 1)[1].split(" serving queue ")[0]


async def test_rolling_sigterm_under_load_completes_every_run(
    control: Control,
    bus: Bus,
    redis: Redis,
    keys: Keys,
    processes: Any,
    settings_env: Callable[..., dict[str, str]],
) -> None:
    procs = await start_workers(processes, settings_env, redis, keys, _WORKERS, **_SETTINGS)
    names = {}
    for proc in procs:
        names[proc.pid] = await until(
            lambda p=proc: " serving queue " in processes.output(p) and _name(processes.output(p)),
            what="the worker's name in its log",
        )
    starts = [control.start("research", {"topic": f"topic {i}", "breadth": 3}) for i in range(8)]
    # Long enough to outlast the rolling restart: every victim finds runs to hand back.
    monty = {"min_sleep_s": 0.2, "max_sleep_s": 0.5, "max_iterations": 30}
    starts += [control.start("monty", monty) for _ in range(8)]
    run_ids = [rec.run_id for rec in await asyncio.gather(*starts)]

    env = {**settings_env(**_SETTINGS), **TEST_WORKFLOWS}
    stopped: list[subprocess.Popen[bytes]] = []
    for victim in procs:
        name = names[victim.pid]
        await until(
            lambda n=name: _holding(redis, keys, run_ids, n),
            what=f"{name} running a run",
            timeout=60,
        )
        victim.send_signal(signal.SIGTERM)
        _assert_clean_stop(processes, victim)
        stopped.append(victim)
        assert await _stranded(redis, keys, run_ids) == []
        processes.python("tidings.services.worker", env=env, name="replacement")
        await until(lambda: listening(redis, keys, _WORKERS), what="a replacement listening")

    for rid in run_ids:
        end = await wait_terminal(bus, rid, timeout=120)
        assert end.type is EventType.WORKFLOW_COMPLETED, (rid, end.message)
    handed_back = 0
    for rid in run_ids:
        lost = of_type(await all_events(bus, rid), EventType.WORKER_LOST)
        assert all(e.data and e.data["reason"] == "shutdown" for e in lost)
        handed_back += len(lost)
    assert handed_back >= 1

    for proc in processes.procs:
        if proc not in stopped:
            proc.send_signal(signal.SIGTERM)
    for proc in processes.procs:
        if proc not in stopped:
            _assert_clean_stop(processes, proc)
