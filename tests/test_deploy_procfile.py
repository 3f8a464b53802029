"""deploy/Procfile under honcho, as README "Deploy" runs it: two gateways (each on the port honcho
gives it) and three workers against a Valkey this test starts. A burst of runs, then SIGTERM to
honcho mid-burst: every process it started is gone within honcho's grace (no SIGKILL), none
logged a traceback, and no run is stranded: each is completed or queued with its job. Workers
started again under honcho finish every run."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from redis.asyncio import Redis
from redis.exceptions import WatchError

from tests.conftest import ROOT, Processes
from tests.engine_helpers import until
from tidings.embedded import EmbeddedValkey, free_port
from tidings.jobs import job_key, queue_of, run_job_id, workers_listening
from tidings.keys import Keys
from tidings.redis import connect
from tidings.runs import RunRecord

pytestmark = pytest.mark.slow

PROCFILE = ROOT / "deploy" / "Procfile"
KEYS = Keys("tidings")  # the default namespace, in this test's own Valkey
HONCHO_KILL_WAIT_S = 5  # honcho SIGKILLs what is still running this long after its SIGTERM


@pytest.fixture
async def valkey(tmp_path: Path) -> AsyncIterator[tuple[str, Redis]]:
    server = EmbeddedValkey(tmp_path / "valkey", port=free_port(), persistent=False)
    server.start()
    client = connect(server.url)
    try:
        yield server.url, client
    finally:
        await client.aclose()
        server.stop()


def _base_port() -> int:
    """A port P with P and P + 1 free: honcho gives gateway.1 P and gateway.2 P + 1."""
    while True:
        port = free_port()
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port


def _honcho(processes: Processes, redis_url: str, tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    """`honcho -f deploy/Procfile start ARGS`, with `tidings` found on PATH as README says."""
    (tmp / "empty.env").touch()
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "REDIS_URL": redis_url,
        "TIDINGS_LLM_TOKEN_DELAY_MS": "2",
        "TIDINGS_LOG_LEVEL": "info",
    }
    command = [sys.executable, "-m", "honcho", "-f", str(PROCFILE), "-e", str(tmp / "empty.env")]
    return processes.start([*command, "--no-colour", "start", *args], env=env, name="honcho")


def _tree(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """honcho and every process it started (its helpers, the shells, the tidings processes)."""
    root = psutil.Process(proc.pid)
    return [root, *root.children(recursive=True)]


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:  # same pid, same process
                out.append(f"{p.pid} {' '.join(p.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return out


async def _stop(processes: Processes, honcho: subprocess.Popen[bytes]) -> str:
    """SIGTERM honcho; return its output once it and everything it started are gone."""
    tree = _tree(honcho)
    honcho.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(honcho.wait, HONCHO_KILL_WAIT_S + 10)
    output = processes.output(honcho)
    assert code == 143, output[-4000:]  # honcho's exit code for SIGTERM
    assert _alive(tree) == [], output[-4000:]
    assert "SIGKILL" not in output, output[-4000:]  # all stopped on SIGTERM, in time
    assert "Traceback" not in output and " ERROR " not in output, output[-6000:]
    return output


async def _runs_state(redis: Redis, run_ids: list[str]) -> dict[str, list[str]]:
    """Run ids by state: completed; queued with its job (on the run's own queue: its workflow's,
    at its version); held (a lease: a worker has it); anything else is stranded."""
    state: dict[str, list[str]] = {"completed": [], "queued": [], "held": [], "stranded": []}
    for rid in run_ids:
        kind, detail = await _run_state(redis, rid)
        state[kind].append(rid if kind != "stranded" else f"{rid}: {detail}")
    return state


async def _run_state(redis: Redis, rid: str) -> tuple[str, str]:
    """One run's state, its record, lease, queue entry and job key read as of one moment.

    Read one after the other, a worker claiming the job in between (its queue entry gone, its
    lease not yet read as the worker's) would make a healthy run look stranded, so the reads
    are one transaction, retried should the run's record, lease or queue change meanwhile."""
    while True:
        async with redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(KEYS.run(rid), KEYS.lease(rid))
                raw = await pipe.hgetall(KEYS.run(rid))
                if not raw:
                    return "stranded", "no record"
                run = RunRecord.from_hash(rid, raw)
                queue, job = queue_of(KEYS, run), run_job_id(rid, run.attempt)
                await pipe.watch(queue, job_key(job))
                pipe.multi()
                pipe.hgetall(KEYS.run(rid))
                pipe.get(KEYS.lease(rid))
                pipe.zscore(queue, job)
                pipe.exists(job_key(job))
                raw, lease, score, job_exists = await pipe.execute()
            except WatchError:
                continue
        run = RunRecord.from_hash(rid, raw)
        if run.status == "completed":
            return "completed", ""
        if run.status == "queued" and score is not None and job_exists:
            return "queued", ""
        if lease is not None and not lease.startswith(b"- "):
            return "held", ""
        return "stranded", f"{run.status} attempt {run.attempt} lease {lease!r}"


async def test_procfile_scales_gateways_and_stops_cleanly_mid_burst(
    valkey: tuple[str, Redis], processes: Processes, tmp_path: Path
) -> None:
    url, redis = valkey
    port = _base_port()
    honcho = _honcho(processes, url, tmp_path, "-p", str(port), "-c", "gateway=2,worker=3")
    gateways = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]

    async def up() -> bool:
        assert honcho.poll() is None, processes.output(honcho)[-4000:]
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                for gw in gateways:
                    if (await client.get(f"{gw}/readyz")).status_code != 200:
                        return False
                    # Ready to start runs: the workers have published the workflows the burst uses.
                    listed = (await client.get(f"{gw}/api/workflows")).json()["workflows"]
                    if not {"research", "monty"} <= {w["name"] for w in listed if w["served"]}:
                        return False
        except httpx.TransportError:
            return False
        return await workers_listening(redis, KEYS) >= 3

    await until(
        up, what="two gateways on their own ports, three workers and the catalog", timeout=60
    )

    # A burst through both gateways: research runs fanning out tasks, and long monty runs.
    monty = {"min_sleep_s": 0.2, "max_sleep_s": 0.4, "max_iterations": 20}
    bodies: list[dict[str, Any]] = [
        {"workflow": "research", "input": {"topic": f"topic {i}", "breadth": 3}} for i in range(9)
    ]
    bodies += [{"workflow": "monty", "input": monty} for _ in range(6)]
    async with httpx.AsyncClient(timeout=10) as client:
        replies = await asyncio.gather(
            *(client.post(f"{gateways[i % 2]}/api/runs", json=b) for i, b in enumerate(bodies))
        )
    assert all(r.status_code == 201 for r in replies), [r.text for r in replies]
    run_ids = [r.json()["run_id"] for r in replies]

    async def in_flight() -> bool:
        async with redis.pipeline(transaction=False) as pipe:
            for rid in run_ids:
                pipe.hget(KEYS.run(rid), "status")
            statuses = await pipe.execute()
        return statuses.count(b"running") >= 3

    await until(in_flight, what="runs in flight", timeout=60)
    output = await _stop(processes, honcho)
    assert len(re.findall(r"worker\.\d stopped \(rc=0\)", output)) == 3, output[-4000:]
    state = await _runs_state(redis, run_ids)
    assert state["stranded"] == [] and state["held"] == [], state
    assert state["queued"], "SIGTERM came after every run had finished"

    # Workers again: every queued run resumes and completes.
    again = _honcho(processes, url, tmp_path, "-c", "worker=3", "worker")

    async def all_completed() -> bool:
        assert again.poll() is None, processes.output(again)[-4000:]
        state = await _runs_state(redis, run_ids)
        assert state["stranded"] == [], state
        return len(state["completed"]) == len(run_ids)

    await until(all_completed, what="every run completed", timeout=120)
    await _stop(processes, again)
