"""A mixed pool, on real processes: workers claim only the runs and tasks of the workflow
versions they serve.

- A rolling deploy: a run started on version 1 keeps running on the version-1 worker, and its
  task too, while version 2 comes up; new runs go to version 2 and its worker; the old run then
  finishes on its own code.
- A workflow no live worker serves: the start says so, the run waits in its queue while another
  workflow's worker is busy beside it, and the first worker that serves it takes it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import httpx
from redis.asyncio import Redis

from tests.conftest import Processes
from tests.engine_helpers import wait_event, wait_terminal
from tests.test_gateway_support import start_gateway, wait_for
from tidings.bus import Bus
from tidings.catalog import Catalog
from tidings.events import EventType, RunStatus
from tidings.keys import Keys
from tidings.runs import RunStore

V1, V2 = "tests.workflows_rolling_v1", "tests.workflows_rolling_v2"


def _worker(
    processes: Processes, settings_env: Callable[..., dict[str, str]], modules: str
) -> subprocess.Popen[bytes]:
    env = {**settings_env(log_level="warning"), "TIDINGS_WORKFLOWS": modules}
    return processes.python("tidings.services.worker", env=env, name=f"worker-{modules}")


async def _current(catalog: Catalog, name: str, version: str) -> bool:
    view = await catalog.read(fresh=True)
    entry = view.workflows.get(name)
    return entry is not None and entry.served and entry.current.version == version


async def _listed(client: httpx.AsyncClient, name: str, version: str) -> bool:
    listed = (await client.get("/api/workflows")).json()["workflows"]
    return any(w["name"] == name and w["version"] == version and w["served"] for w in listed)


async def _start(client: httpx.AsyncClient, workflow: str, input: dict[str, Any]) -> Any:
    resp = await client.post("/api/runs", json={"workflow": workflow, "input": input})
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_a_rolling_deploy_lets_old_runs_finish_on_old_workers(
    processes: Processes,
    settings_env: Callable[..., dict[str, str]],
    redis: Redis,
    keys: Keys,
    bus: Bus,
) -> None:
    gw = await start_gateway(processes, settings_env, catalog=False)
    catalog, store = Catalog(redis, keys), RunStore(redis, keys)
    old = _worker(processes, settings_env, V1)
    await wait_for(lambda: _current(catalog, "t_rolling", "1"), "version 1 served")
    async with gw.client() as client:
        first = await _start(client, "t_rolling", {"wait": True})
        assert first["version"] == "1" and first["served"] is True
        await wait_event(bus, first["run_id"], lambda e: e.type is EventType.WORKFLOW_STARTED, "")

        new = _worker(processes, settings_env, V2)
        # The listing reads the catalog afresh, and so refreshes what starts use (cached ~1 s).
        await wait_for(lambda: _listed(client, "t_rolling", "2"), "version 2 current")
        second = await _start(client, "t_rolling", {})
        assert second["version"] == "2"
        end = await wait_terminal(bus, second["run_id"])
        assert end.type is EventType.WORKFLOW_COMPLETED, end.message
        done = await store.get(second["run_id"])
        assert done.result == {"run": "2", "code": "2", "task": {"version": "2", "code": "2"}}
        assert done.worker.endswith(f":{new.pid}")

        # The old run is still version 1's: its task, too, runs on version 1's code.
        sent = await client.post(
            f"/api/runs/{first['run_id']}/signals/message", json={"text": "go on"}
        )
        assert sent.status_code == 202, sent.text
        end = await wait_terminal(bus, first["run_id"])
        assert end.type is EventType.WORKFLOW_COMPLETED, end.message
        done = await store.get(first["run_id"])
        assert done.result == {"run": "1", "code": "1", "task": {"version": "1", "code": "1"}}
        assert done.worker.endswith(f":{old.pid}")


async def test_a_workflow_no_worker_serves_waits_for_one(
    processes: Processes,
    settings_env: Callable[..., dict[str, str]],
    redis: Redis,
    keys: Keys,
    bus: Bus,
) -> None:
    gw = await start_gateway(processes, settings_env)  # the shipped workflows are known
    catalog, store = Catalog(redis, keys), RunStore(redis, keys)
    _worker(processes, settings_env, V1)  # serves t_rolling only
    await wait_for(lambda: _current(catalog, "t_rolling", "1"), "t_rolling served")
    async with gw.client() as client:
        waiting = await _start(
            client, "monty", {"max_iterations": 1, "min_sleep_s": 0.1, "max_sleep_s": 0.2}
        )
        assert waiting["served"] is False and waiting["workers"] == 0
        assert "no live worker serves monty" in waiting["warning"]
        # The worker beside it claims and finishes a run of its own workflow meanwhile.
        other = await _start(client, "t_rolling", {})
        end = await wait_terminal(bus, other["run_id"])
        assert end.type is EventType.WORKFLOW_COMPLETED, end.message
        assert (await store.get(waiting["run_id"])).status is RunStatus.QUEUED

        shipped = _worker(processes, settings_env, "tidings.services.workflows")
        end = await wait_terminal(bus, waiting["run_id"])
        assert end.type is EventType.WORKFLOW_COMPLETED, end.message
        assert (await store.get(waiting["run_id"])).worker.endswith(f":{shipped.pid}")
