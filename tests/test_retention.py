"""Retention: a finished run's keys expire, together, and the history forgets it; active runs
never get a TTL from it; late writes cannot bring a run back without one; `tidings prune`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

import tests.workflows_for_tests  # noqa: F401  (registers the test workflows)
from tests.conftest import ROOT
from tests.engine_helpers import until
from tests.test_api_helpers import running_stack
from tidings import codec
from tidings.bus import Bus
from tidings.catalog import RegistryWorkflows
from tidings.control import Control
from tidings.events import EventType, now_ms
from tidings.jobs import job_key, task_job_id
from tidings.keys import Keys
from tidings.retention import prune
from tidings.runs import RunStore
from tidings.sdk import registry
from tidings.settings import Settings

DAY_MS = 86_400_000
ONE_ITERATION = {"min_sleep_s": 0.05, "max_sleep_s": 0.05, "max_iterations": 1}


async def _run_with_every_key(redis: Redis, keys: Keys, store: RunStore, bus: Bus) -> str:
    """A started run that has written each of its keys, the way the engine does."""
    run_id = (await store.create("t_steps", {"n": 1})).run_id
    await bus.publish(run_id, EventType.WORKFLOW_STARTED, "go", attempt=1)
    await bus.publish_once(
        bus.command(run_id, EventType.TASK_COMPLETED, "s", attempt=1),
        keys.steps(run_id),
        "s",
        "1",
    )
    await redis.set(keys.state(run_id), codec.dumps({"n": 1}))
    await redis.hset(keys.tasks(run_id), "p1.0", "{}")
    await redis.rpush(keys.done(run_id), "p1.0")
    await redis.rpush(keys.signals(run_id), "{}")
    await redis.set(keys.lease(run_id), "w 1", px=3_000)
    return run_id


async def _ttls(redis: Redis, names: list[str]) -> dict[str, int]:
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.pttl(name)
        return dict(zip(names, await pipe.execute(), strict=True))


async def test_a_finished_run_gets_the_retention_on_every_key_and_an_active_one_none(
    redis: Redis, keys: Keys, store: RunStore
) -> None:
    retention = 3_600_000
    bus = Bus(redis, keys, retention_ms=retention)
    run_id = await _run_with_every_key(redis, keys, store, bus)
    lease = keys.lease(run_id)

    running = await _ttls(redis, keys.run_keys(run_id))
    assert all(ttl != -2 for ttl in running.values()), running  # every key exists
    assert {k: t for k, t in running.items() if k != lease} == {
        k: -1 for k in running if k != lease
    }
    assert await redis.zscore(keys.expiring_of(run_id), run_id) is None

    await bus.publish(
        run_id, EventType.WORKFLOW_COMPLETED, "done", attempt=1, fields={"result": "1"}
    )
    finished = await _ttls(redis, keys.run_keys(run_id))
    for key, ttl in finished.items():
        if key == lease:
            assert 0 < ttl <= 3_000, (key, ttl)  # a lease keeps its shorter TTL
        else:
            assert retention - 60_000 < ttl <= retention, (key, ttl)
    expires_at = await redis.zscore(keys.expiring_of(run_id), run_id)
    assert expires_at is not None and abs(expires_at - (now_ms() + retention)) < 60_000
    assert await redis.zscore(keys.active_of(run_id), run_id) is None
    assert await redis.zscore(keys.runs_of(run_id), run_id) is not None  # listed until it expires


async def test_retention_zero_keeps_a_finished_run_forever(
    redis: Redis, keys: Keys, store: RunStore
) -> None:
    bus = Bus(redis, keys, retention_ms=0)
    run_id = (await store.create("t_steps", {})).run_id
    await bus.publish(run_id, EventType.WORKFLOW_STARTED, attempt=1)
    await redis.set(keys.state(run_id), "{}")
    await bus.publish(run_id, EventType.WORKFLOW_FAILED, "broke", attempt=1)
    ttls = await _ttls(redis, [keys.run(run_id), keys.events(run_id), keys.state(run_id)])
    assert set(ttls.values()) == {-1}
    assert await redis.zscore(keys.expiring_of(run_id), run_id) is None


async def test_a_late_signal_or_doorbell_expires_with_its_run_and_a_gone_run_gets_none(
    redis: Redis, keys: Keys, store: RunStore
) -> None:
    bus = Bus(redis, keys, retention_ms=600_000)
    run_id = (await store.create("t_steps", {})).run_id
    assert await bus.append(run_id, keys.signals(run_id), "{}") == 1
    assert await redis.pttl(keys.signals(run_id)) == -1  # a live run's list has no TTL
    await bus.publish(run_id, EventType.WORKFLOW_CANCELLED, "cancelled", attempt=1)
    # Lists that did not exist when the run ended, created by late writers.
    assert await bus.append(run_id, keys.done(run_id), "p1.0") == 1
    record_ttl = await redis.pttl(keys.run(run_id))
    for key in (keys.done(run_id), keys.signals(run_id)):
        assert 0 < await redis.pttl(key) <= record_ttl
    # Once the record is gone, nothing is written at all.
    await redis.delete(*keys.run_keys(run_id))
    assert await bus.append(run_id, keys.done(run_id), "p1.1") == 0
    assert await redis.exists(keys.done(run_id)) == 0


async def test_signalling_a_run_that_just_ended_leaves_no_list_without_ttl(
    redis: Redis, keys: Keys, settings: Settings
) -> None:
    bus = Bus(redis, keys, retention_ms=600_000)
    control = Control(redis, keys, bus, settings, RegistryWorkflows(registry))
    run_id = (await control.start("t_steps", {})).run_id
    await bus.publish(run_id, EventType.WORKFLOW_STARTED, attempt=1)
    await control.signal(run_id, "stop")
    assert await redis.pttl(keys.signals(run_id)) == -1
    await bus.publish(run_id, EventType.WORKFLOW_COMPLETED, attempt=1)
    assert 0 < await redis.pttl(keys.signals(run_id)) <= 600_000


async def test_a_terminal_publish_drops_due_runs_from_the_history(
    redis: Redis, keys: Keys, store: RunStore
) -> None:
    bus = Bus(redis, keys, retention_ms=600_000)
    # Two runs whose keys already expired, still in the indexes.
    # (In the indexes of the bucket of the run that ends: a publish trims its own bucket's.)
    run_id = "finisher"
    history, expiring = keys.runs_of(run_id), keys.expiring_of(run_id)
    now = now_ms()
    for ghost in ("ghost-1", "ghost-2"):
        await redis.zadd(history, {ghost: now - DAY_MS})
        await redis.zadd(expiring, {ghost: now - 1_000})
    await redis.zadd(expiring, {"not-yet": now + DAY_MS})
    await redis.zadd(history, {"not-yet": now - DAY_MS})
    await store.create("t_steps", {}, run_id=run_id)
    await bus.publish(run_id, EventType.WORKFLOW_COMPLETED, attempt=1)
    assert set(await redis.zrange(history, 0, -1)) == {b"not-yet", run_id.encode()}
    assert set(await redis.zrange(expiring, 0, -1)) == {b"not-yet", run_id.encode()}


async def test_listing_skips_and_forgets_runs_whose_record_is_gone(
    redis: Redis, keys: Keys, control: Control
) -> None:
    ids = [(await control.start("t_steps", {})).run_id for _ in range(3)]
    await redis.delete(keys.run(ids[1]))  # as when its keys expired
    await redis.zadd(keys.expiring_of(ids[1]), {ids[1]: now_ms() + 1_000})
    page, _ = await control.list_runs()
    assert [r.run_id for r in page] == [ids[2], ids[0]]
    assert await redis.zscore(keys.runs_of(ids[1]), ids[1]) is None
    assert await redis.zscore(keys.expiring_of(ids[1]), ids[1]) is None


async def test_with_a_one_second_retention_a_finished_run_leaves_the_api_and_redis(
    processes: Any, settings_env: Callable[..., dict[str, str]], redis: Redis, keys: Keys
) -> None:
    async with running_stack(processes, settings_env, retention="1s") as stack:
        kept = (await stack.start("monty", {"min_sleep_s": 60, "max_sleep_s": 60}))["run_id"]
        run_id = (await stack.start("monty", ONE_ITERATION))["run_id"]
        await stack.wait_status(run_id, "completed")
        await stack.wait_status(kept, "running")
        assert 0 < await redis.pttl(keys.run(run_id)) <= 1_000
        assert await redis.pttl(keys.run(kept)) == -1  # the active one: no TTL

        async def listed() -> list[str]:
            body = (await stack.client.get("/api/runs")).json()
            return [r["run_id"] for r in body["runs"]]

        await until(lambda: _gone_from(listed, run_id), what="the expired run unlisted")
        assert (await stack.client.get(f"/api/runs/{run_id}")).status_code == 404
        assert kept in await listed()
        assert [k async for k in redis.scan_iter(match=f"{keys.run(run_id)}*")] == []
        assert [k async for k in redis.scan_iter(match=f"arq:*{run_id}*")] == []
        assert await redis.zscore(keys.runs_of(run_id), run_id) is None
        assert await redis.zscore(keys.expiring_of(run_id), run_id) is None
        # The active run still has every key it wrote, none with a TTL but its lease's.
        ttls = await _ttls(redis, [k for k in keys.run_keys(kept) if k != keys.lease(kept)])
        assert all(ttl in (-1, -2) for ttl in ttls.values()), ttls
        assert ttls[keys.run(kept)] == -1 and ttls[keys.events(kept)] == -1


async def _gone_from(listed: Callable[[], Any], run_id: str) -> bool:
    return run_id not in await listed()


# -- prune ------------------------------------------------------------------------------------


async def _finished(bus: Bus, store: RunStore, redis: Redis, keys: Keys, age: timedelta) -> str:
    run_id = (await store.create("t_steps", {})).run_id
    await bus.publish(run_id, EventType.WORKFLOW_STARTED, attempt=1)
    await redis.set(keys.state(run_id), "{}")
    await bus.publish(run_id, EventType.WORKFLOW_COMPLETED, attempt=1)
    when = (datetime.now(UTC) - age).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    await redis.hset(keys.run(run_id), "finished_at", when)
    return run_id


async def _scene(redis: Redis, keys: Keys, store: RunStore) -> dict[str, str]:
    """Old and recent finished runs, an active one, and what retention can leave behind."""
    bus = Bus(redis, keys, retention_ms=30 * DAY_MS)
    scene = {
        "old": await _finished(bus, store, redis, keys, timedelta(days=3)),
        "recent": await _finished(bus, store, redis, keys, timedelta(minutes=5)),
        "active": (await store.create("t_steps", {})).run_id,
    }
    await bus.publish(scene["active"], EventType.WORKFLOW_STARTED, attempt=1)
    # An old finished run that no index names any more: found by its keys.
    scene["unindexed"] = await _finished(bus, store, redis, keys, timedelta(days=2))
    await redis.zrem(keys.runs_of(scene["unindexed"]), scene["unindexed"])
    await redis.zrem(keys.expiring_of(scene["unindexed"]), scene["unindexed"])
    # A key the recent run got after it ended, without a TTL.
    await redis.rpush(keys.done(scene["recent"]), "late")
    # Keys of a run whose record is gone, an index entry of another, a job of a third.
    await redis.rpush(keys.signals("orphan"), "{}")
    await redis.set(keys.task_lease("orphan", "p1.0"), "w 1.0", px=60_000)
    await redis.zadd(keys.runs_of("stale"), {"stale": now_ms() - DAY_MS})
    await redis.zadd(_vanished_queue(keys), {_vanished_job(keys): now_ms()})
    await redis.set(job_key(_vanished_job(keys)), "{}", px=60_000)
    return scene


def _vanished_job(keys: Keys) -> str:
    """A queued task job of a run that is gone (`task:vanished:p1.0:1.0` on a single Redis)."""
    return task_job_id("vanished", "p1.0", 1, 0, keys.run_tag("vanished"))


def _vanished_queue(keys: Keys) -> str:
    return keys.queue_for("t_steps", "1", keys.bucket("vanished"))


async def _namespace(redis: Redis, keys: Keys) -> dict[str, bool]:
    """Every key of the namespace → whether it has a TTL."""
    names = [k.decode() async for k in redis.scan_iter(match=f"{keys.ns}:*")]
    return {name: ttl > 0 for name, ttl in (await _ttls(redis, names)).items()}


async def test_prune_removes_old_finished_runs_and_leftovers_and_keeps_the_rest(
    redis: Redis, keys: Keys, store: RunStore
) -> None:
    scene = await _scene(redis, keys, store)
    before = await _namespace(redis, keys)

    dry = await prune(redis, keys, older_than_s=86_400, dry_run=True)
    assert await _namespace(redis, keys) == before  # a dry run changes nothing
    old = {scene["old"], scene["unindexed"]}
    assert set(dry.runs) == old

    report = await prune(redis, keys, older_than_s=86_400)
    assert set(report.runs) == old
    assert report.stale_entries == 1 and report.orphan_keys == 2 and report.jobs == 1
    assert report.ttl_fixed == 1 and report.bytes > 0
    assert (dry.stale_entries, dry.orphan_keys, dry.jobs, dry.keys) == (
        1,
        2,
        1,
        report.keys,
    )
    left = await _namespace(redis, keys)
    assert not [k for k in left if any(rid in k for rid in (*old, "orphan"))]
    for rid in (scene["old"], "stale"):
        for index in (keys.runs_of(rid), keys.expiring_of(rid), keys.active_of(rid)):
            assert await redis.zscore(index, rid) is None
    assert await redis.zcard(_vanished_queue(keys)) == 0
    assert await redis.exists(job_key(_vanished_job(keys))) == 0
    # The recent and the active run are whole; the late key now expires with its run.
    recent = await _ttls(redis, keys.run_keys(scene["recent"]))
    assert recent[keys.run(scene["recent"])] > 0 and recent[keys.state(scene["recent"])] > 0
    assert 0 < recent[keys.done(scene["recent"])] <= recent[keys.run(scene["recent"])]
    assert not left[keys.run(scene["active"])] and not left[keys.events(scene["active"])]
    assert await redis.zscore(keys.active_of(scene["active"]), scene["active"]) is not None

    again = await prune(redis, keys, older_than_s=86_400)
    assert (again.runs, again.keys, again.ttl_fixed) == ([], 0, 0)


async def test_prune_without_an_age_removes_only_leftovers(
    redis: Redis, keys: Keys, store: RunStore
) -> None:
    scene = await _scene(redis, keys, store)
    report = await prune(redis, keys, older_than_s=None)
    assert report.runs == [] and report.cutoff is None
    assert report.orphan_keys == 2 and report.stale_entries == 1
    assert await redis.exists(keys.run(scene["old"])) == 1
    assert await redis.exists(keys.run(scene["unindexed"])) == 1


async def test_the_prune_command_reports_and_removes(
    redis: Redis, keys: Keys, store: RunStore, settings_env: Callable[..., dict[str, str]]
) -> None:
    scene = await _scene(redis, keys, store)

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tidings.services.cli", "prune", *args],
            env=settings_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    line = cli("--older-than", "1d", "--dry-run")
    assert line.startswith("would remove 2 finished runs (finished before "), line
    assert await redis.exists(keys.run(scene["old"])) == 1
    report = json.loads(cli("--older-than", "1d", "--json"))
    assert set(report["runs"]) == {scene["old"], scene["unindexed"]}
    assert report["bytes"] > 0 and not report["dry_run"]
    assert await redis.exists(keys.run(scene["old"])) == 0
    assert await redis.exists(keys.run(scene["recent"])) == 1
    # The default age is the retention (7 days): nothing finished that long ago.
    assert cli().startswith("removed 0 finished runs")


def test_retention_is_a_duration() -> None:
    assert Settings.from_env({"TIDINGS_RETENTION": "7d"}).retention == 604_800
    assert Settings.from_env({"TIDINGS_RETENTION": "1d12h"}).retention == 129_600
    assert Settings.from_env({"TIDINGS_RETENTION": "90"}).retention == 90
    assert Settings.from_env({"TIDINGS_RETENTION": "0"}).retention == 0
    assert Settings().retention == 604_800
    for bad in ("7x", "-1", "d", "1.5h"):
        with pytest.raises(ValueError, match="TIDINGS_RETENTION"):
            Settings.from_env({"TIDINGS_RETENTION": bad})
