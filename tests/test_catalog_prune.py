"""`tidings prune` and the workflow catalog: definitions of old versions that nothing serves,
queues or runs go; the catalog's current version stays what it was. Real Valkey."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from tidings.catalog import Catalog, CatalogWriter
from tidings.events import RunStatus
from tidings.keys import Keys
from tidings.retention import PruneReport, _Pruner, prune
from tidings.runs import RunStore
from tidings.sdk import Registry
from tidings.services.cli.prune import describe


class _In(BaseModel):
    n: int = 1


async def _noop(run: Any, input: _In) -> None:
    return None


def _definition(version: str, name: str = "flow") -> Any:
    own = Registry()
    own.workflow(name, Input=_In, description=f"v{version}", version=version)(_noop)
    return own.workflows[name]


async def _published(redis: Redis, keys: Keys, version: str, name: str = "flow") -> CatalogWriter:
    """A worker of that version that published and stopped (its definition stays)."""
    writer = CatalogWriter(redis, keys, f"w-{name}-{version}", [_definition(version, name)])
    await writer.publish()
    await writer.withdraw()
    return writer


async def _fields(redis: Redis, keys: Keys) -> set[str]:
    return {raw.decode() for raw in await redis.hkeys(keys.catalog)}


async def test_prune_drops_only_old_versions_nothing_serves_queues_or_runs(
    redis: Redis, keys: Keys, store: RunStore
) -> None:
    first = await _published(redis, keys, "1")  # nothing: goes
    served = CatalogWriter(redis, keys, "w-flow-2", [_definition("2")])
    await served.publish()  # a live worker serves it: stays
    await _published(redis, keys, "3")  # a job waits in its queue: stays
    await redis.zadd(keys.queue_for("flow", "3"), {"external-job": 1})
    await _published(redis, keys, "4")  # an unfinished run records it: stays
    await store.create("flow", {}, version="4")
    await _published(redis, keys, "5")  # only a finished run records it: goes
    done = await store.create("flow", {}, version="5")
    await redis.hset(keys.run(done.run_id), "status", RunStatus.COMPLETED.value)
    await _published(redis, keys, "6")  # the newest published: stays
    await _published(redis, keys, "1", name="solo")  # the only version of its workflow: stays
    catalog = Catalog(redis, keys, cache_s=0)
    assert (await catalog.get("flow")).current.version == "2"
    everything = await _fields(redis, keys)

    dry = await prune(redis, keys, older_than_s=None, dry_run=True)
    assert sorted(dry.definitions) == ["flow:1", "flow:5"]
    assert await _fields(redis, keys) == everything  # a dry run changes nothing

    report = await prune(redis, keys, older_than_s=None)
    assert sorted(report.definitions) == ["flow:1", "flow:5"] and report.bytes > 0
    assert await _fields(redis, keys) == everything - {"flow:1", "flow:5"}
    assert "2 catalog definitions of old versions (flow:1, flow:5)" in describe(report)
    # First-publication times stay: they keep the current version what it was.
    assert len(await redis.zrange(keys.catalog_versions, 0, -1)) == 7
    entry = await catalog.get("flow")
    assert entry.current.version == "2"
    assert [v.version for v in entry.versions] == ["2", "3", "4", "6"]
    assert (await prune(redis, keys, older_than_s=None)).definitions == []

    # The old version's worker comes back: its renewal writes the definition back, and a
    # version published before the current one does not become current.
    await first.renew()
    entry = await catalog.get("flow")
    assert "flow:1" in await _fields(redis, keys)
    assert entry.current.version == "2"
    assert [v.version for v in entry.versions] == ["1", "2", "3", "4", "6"]
    assert next(v for v in entry.versions if v.version == "1").workers == ("w-flow-1",)


async def test_a_version_served_or_queued_after_it_was_judged_is_kept(
    redis: Redis, keys: Keys
) -> None:
    # The served and queue tests are made again in the same script as the delete: a worker that
    # starts serving (or a job queued) between the judgement and the delete keeps the version.
    for version in ("1", "2", "3", "4"):
        await _published(redis, keys, version)
    judged = [(f"flow:{v}", keys.queue_for("flow", v)) for v in ("1", "2", "3")]
    await CatalogWriter(redis, keys, "w-late", [_definition("1")]).publish()
    await redis.zadd(keys.queue_for("flow", "2"), {"late-job": 1})
    seconds, micros = await redis.time()
    report = PruneReport(dry_run=False, cutoff=None)
    await _Pruner(redis, keys, None, report)._drop_definitions(
        judged, int(seconds) * 1000 + int(micros) // 1000
    )
    assert report.definitions == ["flow:3"]
    assert await _fields(redis, keys) == {"flow:1", "flow:2", "flow:4"}
