"""The workflow catalog in Redis: workers publish it, the gateway reads it and never imports the
workflows' code. Real Valkey, the real gateway app in-process (and in a subprocess for the import
check); the workers' side is `CatalogWriter`, what `tidings worker` runs at start."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field
from redis.asyncio import Redis

import tidings.services.workflows  # noqa: F401  (this process plays the workers: it has the code)
from tests.engine_helpers import until
from tidings.catalog import Catalog, CatalogWriter
from tidings.errors import NotFound
from tidings.keys import Keys
from tidings.sdk import Registry, registry
from tidings.services.gateway.app import create_app
from tidings.services.worker import loading
from tidings.services.worker.main import serve
from tidings.settings import Settings


class _In(BaseModel):
    n: int = Field(1, ge=1, le=5)


async def _noop(run: Any, input: _In) -> None:
    return None


def _versions(*versions: str, name: str = "flow") -> list[Any]:
    """One registry per version: what workers running different code would each load."""
    defs = []
    for version in versions:
        own = Registry()
        own.workflow(name, Input=_In, description=f"v{version}", version=version)(_noop)
        defs.append(own.workflows[name])
    return defs


async def test_the_current_version_is_the_newest_first_published_that_a_worker_serves(
    redis: Redis, keys: Keys
) -> None:
    v1, v2 = _versions("1", "2")
    old = CatalogWriter(redis, keys, "w-old", [v1])
    new = CatalogWriter(redis, keys, "w-new", [v2])
    await old.publish()
    await new.publish()
    catalog = Catalog(redis, keys, cache_s=0)
    entry = await catalog.get("flow")
    assert entry.current.version == "2" and entry.current.workers == ("w-new",)
    assert [v.version for v in entry.versions] == ["1", "2"]
    await old.publish()  # a restart of the old version's worker does not make it current again
    assert (await catalog.get("flow")).current.version == "2"

    await new.withdraw()  # v2's only worker stopped: new runs go to the version still served
    entry = await catalog.get("flow")
    assert entry.current.version == "1" and entry.served
    await old.withdraw()  # none served: the last known version, and the catalog says so
    entry = await catalog.get("flow")
    assert entry.current.version == "2" and not entry.served
    assert entry.view()["served"] is False and entry.view()["workers"] == 0
    with pytest.raises(NotFound, match="no workflow 'other'"):
        await catalog.get("other")


async def test_a_dead_workers_entries_age_out(redis: Redis, keys: Keys) -> None:
    [v1] = _versions("1")
    killed = CatalogWriter(redis, keys, "w-killed", [v1], ttl_s=0.3)  # never renews: "killed"
    await killed.publish()
    catalog = Catalog(redis, keys, cache_s=0)
    assert (await catalog.get("flow")).served

    async def gone() -> bool:
        return not (await catalog.get("flow")).served

    await until(gone, what="the dead worker's entry to lapse")
    alive = CatalogWriter(redis, keys, "w-alive", [v1])
    await alive.publish()  # any writer drops lapsed entries
    assert await redis.zrange(keys.catalog_serving, 0, -1) == [b"flow:1 w-alive"]


async def test_a_renewal_writes_back_definitions_redis_lost(redis: Redis, keys: Keys) -> None:
    # Before the fix a renewal only extended the serving entries: after a Redis restart without
    # its data the worker was "serving" a workflow the catalog no longer defined (404 to start).
    [v1] = _versions("1")
    writer = CatalogWriter(redis, keys, "w1", [v1])
    await writer.publish()
    await redis.delete(keys.catalog, keys.catalog_versions, keys.catalog_serving)
    catalog = Catalog(redis, keys, cache_s=0)
    with pytest.raises(NotFound):
        await catalog.get("flow")
    await writer.renew()
    entry = await catalog.get("flow")
    assert entry.served and entry.current.workers == ("w1",)
    assert entry.current.description == "v1"


async def test_a_worker_whose_clock_runs_ahead_does_not_drop_the_others(
    redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the fix deadlines were written and compared on each host's own clock: a worker a
    # minute ahead dropped every other worker's entry as lapsed at each of its renewals.
    [v1] = _versions("1")
    await CatalogWriter(redis, keys, "w-ok", [v1]).publish()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 60)  # this host's clock is ahead
    await CatalogWriter(redis, keys, "w-ahead", [v1]).publish()
    monkeypatch.setattr(time, "time", real)
    entry = await Catalog(redis, keys, cache_s=0).get("flow")
    assert entry.current.workers == ("w-ahead", "w-ok")


async def test_a_stopped_worker_is_not_listed_as_serving_afterwards(
    settings: Settings, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the fix the worker withdrew its entries while its renewal loop still ran until the
    # end of the shutdown: a renewal after the withdrawal listed it as serving for TTL_S more.
    monkeypatch.setattr(loading, "REFRESH_S", 0)  # renewals back to back
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve(settings, name="w-stopping", stop=stop, handle_signals=False)
    )

    async def serving() -> list[bytes]:
        members = await redis.zrange(keys.catalog_serving, 0, -1)
        return [m for m in members if m.endswith(b" w-stopping")]

    await until(serving, what="the worker to publish what it serves")
    stop.set()
    await server
    assert await serving() == []


@pytest.fixture
async def client(settings: Settings, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, frontend=None)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            yield c


async def test_the_gateway_lists_validates_and_routes_from_the_catalog(
    redis: Redis, keys: Keys, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/api/workflows")).json() == {"workflows": []}
    assert (await client.post("/api/runs", json={"workflow": "research"})).status_code == 404

    worker = CatalogWriter(redis, keys, "w1", registry.workflows.values())
    await worker.publish()
    listed = {w["name"]: w for w in (await client.get("/api/workflows")).json()["workflows"]}
    research = listed["research"]
    assert research["served"] is True and research["workers"] == 1
    assert research["version"] == "1" and research["versions"][0]["workers"] == ["w1"]
    assert research["input_schema"]["properties"]["breadth"]["maximum"] == 16

    resp = await client.post("/api/runs", json={"workflow": "research", "input": {"breadth": 99}})
    assert resp.status_code == 422
    details = resp.json()["error"]["details"]
    assert {tuple(d["loc"]) for d in details} == {("topic",), ("breadth",)}
    assert next(d for d in details if d["loc"] == ["topic"])["msg"] == "Field required"

    started = await client.post("/api/runs", json={"workflow": "research", "input": {"topic": "x"}})
    assert started.status_code == 201
    body = started.json()
    assert body["version"] == "1" and body["served"] is True and "warning" not in body
    assert body["input"] == {"topic": "x"}  # as given: the worker's model fills the defaults
    assert (await redis.hget(keys.run(body["run_id"]), "version")) == b"1"

    await worker.withdraw()

    async def unserved() -> bool:  # the listing reads afresh (starts use a cache of ~1 s)
        listed = (await client.get("/api/workflows")).json()["workflows"]
        return not any(w["served"] for w in listed)

    await until(unserved, what="the catalog to say no worker serves")
    queued = await client.post("/api/runs", json={"workflow": "monty", "input": {}})
    assert queued.status_code == 201  # queued all the same: it waits for a worker
    assert queued.json()["served"] is False and queued.json()["workers"] == 0
    assert "no live worker serves monty" in queued.json()["warning"]

    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert {"ResearchInput", "ChainInput", "ChainTask", "MontyInput", "ChatInput"} <= set(schemas)
    assert schemas["ChainInput"]["properties"]["tasks"]["items"] == {
        "$ref": "#/components/schemas/ChainTask"
    }


_CHILD = """
import asyncio, json, sys
import httpx
from tidings.services.gateway.app import create_app
from tidings.settings import Settings

async def main():
    app = create_app(Settings.from_env(), frontend=None)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            statuses = [
                (await c.get("/api/workflows")).status_code,
                (await c.post("/api/runs", json={"workflow": "research",
                                                 "input": {"topic": "t"}})).status_code,
                (await c.post("/api/runs", json={"workflow": "t_steps"})).status_code,
                (await c.get("/openapi.json")).status_code,
                (await c.post("/api/v1/workflows/", json={"name": "Research tides"})).status_code,
            ]
    loaded = sorted(m for m in sys.modules if m.startswith(("tidings.services.workflows",
                                                             "tests")))
    print(json.dumps({"statuses": statuses, "loaded": loaded}))

asyncio.run(main())
"""


async def test_the_gateway_never_imports_workflow_code(
    redis: Redis, keys: Keys, settings: Settings
) -> None:
    import tests.workflows_for_tests  # noqa: F401

    await CatalogWriter(redis, keys, "w1", registry.workflows.values()).publish()
    env = {"REDIS_URL": settings.redis_url or "", "TIDINGS_NAMESPACE": keys.ns, "PATH": ""}
    if settings.redis_cluster:
        env["TIDINGS_REDIS_CLUSTER"] = "true"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, env=env, stdout=PIPE, stderr=PIPE
    )
    stdout, stderr = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, stderr.decode()
    result = json.loads(stdout)
    assert result["statuses"] == [200, 201, 201, 200, 201]
    assert result["loaded"] == []
