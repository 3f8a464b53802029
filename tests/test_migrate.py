"""`tidings migrate` on a keyspace the schema-1 code really wrote (`tests/fixtures`).

Each test has its own Valkey (the fixture's arq job keys are named by job id, outside any
namespace, so two loads of it must not share a server) and loads the fixture into a fresh
namespace. The services and the CLI run as real processes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

import tidings.migrate
from tests.conftest import ROOT, Processes
from tests.engine_helpers import FAST_LEASES, start_workers, until
from tests.fixtures.keyspace import dump, load
from tests.test_gateway_support import start_gateway
from tidings.embedded import EmbeddedValkey
from tidings.keys import SCHEMA_VERSION, Keys
from tidings.migrate import LOCK_TTL_MS, MIGRATIONS, MigrationBusy, _locked, migrate
from tidings.schema import Context

FIXTURE = json.loads((ROOT / "tests/fixtures/schema1_keyspace.json").read_text())
RUNS: dict[str, str] = FIXTURE["runs"]
_LEASE_SUFFIX = ":lease"


def _env_for(url: str, namespace: str) -> Callable[..., dict[str, str]]:
    def make(**extra: object) -> dict[str, str]:
        env = {"REDIS_URL": url, "TIDINGS_NAMESPACE": namespace, "TIDINGS_LLM_TOKEN_DELAY_MS": "1"}
        env.update({f"TIDINGS_{k.upper()}": str(v) for k, v in extra.items()})
        return env

    return make


def _cli(url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings.services.cli", "migrate", *args],
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": url, "TIDINGS_NAMESPACE": namespace},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


async def _load(redis: Redis, namespace: str, lease_ms: int) -> None:
    """The fixture into `namespace`, its leases with `lease_ms` left (as if their workers had
    just died), every other key with the TTL it had."""

    def pttl(key: str, ttl: int) -> int:
        return lease_ms if key.endswith(_LEASE_SUFFIX) and ttl > 0 else ttl

    await load(redis, FIXTURE, namespace, pttl=pttl)


async def _refused(processes: Processes, proc: subprocess.Popen[bytes]) -> str:
    await until(lambda: proc.poll() is not None, what="the service to refuse")
    output = processes.output(proc)
    assert proc.returncode != 0, output
    return output


def _events_of(fixture_key: str) -> list[str]:
    return [eid for eid, _ in FIXTURE["keys"][fixture_key]["value"]["entries"]]


async def test_a_schema1_keyspace_migrates_and_its_runs_go_on_under_the_new_code(
    own_valkey: EmbeddedValkey, own_redis: Redis, processes: Processes
) -> None:
    ns = f"m{uuid.uuid4().hex[:8]}"
    keys = Keys(ns)
    env = _env_for(own_valkey.url, ns)
    await _load(own_redis, ns, lease_ms=1_000)

    # The services refuse the old keyspace, naming the command that upgrades it.
    for module in ("tidings.services.gateway", "tidings.services.worker"):
        proc = processes.python(module, env=env(), name=module.rsplit(".", 1)[1])
        output = await _refused(processes, proc)
        assert f"namespace {ns!r} holds schema 1, this code speaks {SCHEMA_VERSION}" in output
        assert "tidings migrate" in output
    assert await own_redis.get(keys.schema) == b"1"

    dry = _cli(own_valkey.url, ns, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would go from schema 1 to 2" in dry.stdout and "dry run" in dry.stdout
    assert await own_redis.get(keys.schema) == b"1"
    assert await own_redis.zcard(keys.schema1_queue) == 2

    done = _cli(own_valkey.url, ns)
    assert done.returncode == 0, done.stderr
    assert "migrated from schema 1 to 2" in done.stdout, done.stdout
    assert await own_redis.get(keys.schema) == str(SCHEMA_VERSION).encode()
    assert not await own_redis.exists(keys.schema1_queue, keys.schema1_queue_health)
    research = await own_redis.zrange(keys.queue_for("research", "1"), 0, -1)
    chat = await own_redis.zrange(keys.queue_for("chat", "1"), 0, -1)
    assert research == [f"run:{RUNS['queued']}:1".encode()]
    assert chat == [f"run:{RUNS['queued_chat']}:1".encode()]
    for role, rid in RUNS.items():
        if role != "seed_definition":
            assert await own_redis.hget(keys.run(rid), "version") == b"1", role
    deadlines = {m.decode() for m in await own_redis.zrange(keys.lease_deadlines, 0, -1)}
    assert deadlines == {RUNS["running"], RUNS["paused"], RUNS["chat"]}

    await start_workers(processes, env, own_redis, keys, 2, **FAST_LEASES)
    gateway = await start_gateway(processes, env)
    async with gateway.client() as http:

        async def record(role: str) -> dict[str, Any]:
            resp = await http.get(f"/api/runs/{RUNS[role]}")
            assert resp.status_code == 200, resp.text
            body: dict[str, Any] = resp.json()
            return body

        async def events(role: str) -> list[dict[str, Any]]:
            resp = await http.get(
                f"/api/runs/{RUNS[role]}/events?limit=1000", headers={"Accept": "application/json"}
            )
            assert resp.status_code == 200, resp.text
            page: list[dict[str, Any]] = resp.json()["events"]
            return page

        # Finished runs read back as they were, every event with the id it had.
        for role in ("completed", "completed_deep", "seed_completed", "failed", "cancelled"):
            assert (await record(role))["status"] == FIXTURE["statuses"][role], role
            ids = [e["id"] for e in await events(role)]
            assert ids == _events_of(f"s1:run:{{{RUNS[role]}}}:events"), role

        # The queued runs run under the new code.
        async def finished(role: str) -> bool:
            return (await record(role))["status"] == "completed"

        await until(lambda: finished("queued"), what="the queued research run", timeout=120)

        async def answered(role: str, turns: int) -> bool:
            resp = await http.get(f"/api/runs/{RUNS[role]}/state")
            state = resp.json().get("state") or {}
            return int(state.get("turns") or 0) >= turns

        await until(lambda: answered("queued_chat", 1), what="the queued chat's answer")

        # The runs whose workers died go on: monty iterates again, the chat answers again.
        before = _events_of(f"s1:run:{{{RUNS['running']}}}:events")

        async def iterated_again() -> bool:
            return any(
                e["type"] == "iteration_completed" and e["id"] not in before
                for e in await events("running")
            )

        await until(iterated_again, what="the interrupted monty run to go on", timeout=60)
        resp = await http.post(
            f"/api/runs/{RUNS['chat']}/signals/message", json={"text": "still there?"}
        )
        assert resp.status_code == 202, resp.text
        await until(lambda: answered("chat", 3), what="the interrupted chat to answer", timeout=60)
        assert (await record("paused"))["status"] == "paused"

    again = _cli(own_valkey.url, ns)
    assert again.returncode == 0, again.stderr
    assert f"at schema {SCHEMA_VERSION} already: nothing to do" in again.stdout


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    """A dump without what differs between two migrations of the same keyspace: TTLs, and when
    lease deadlines were computed."""
    out = {}
    for name, entry in data["keys"].items():
        value = entry["value"]
        if name.endswith(":lease_deadlines"):
            value = sorted(member for member, _ in value)
        out[name.split(":", 1)[1]] = (entry["type"], value)
    return out


async def test_an_interrupted_migration_is_finished_by_running_it_again(
    own_valkey: EmbeddedValkey, own_redis: Redis
) -> None:
    straight, broken = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    for ns in (straight, broken):
        await _load(own_redis, ns, lease_ms=600_000)
    report = await migrate(own_redis, Keys(straight))
    assert report.version == SCHEMA_VERSION

    # The broken one stops after its first two steps, its lock left behind by the dead process.
    keys = Keys(broken)
    ctx = Context(own_redis, keys, dry_run=False, alive=lambda: None)
    for _, step in MIGRATIONS[0].steps[:2]:
        await step(ctx)
    await own_redis.set(keys.migrate_lock, "a migration that died", px=LOCK_TTL_MS)

    busy = _cli(own_valkey.url, broken)
    assert busy.returncode == 1
    assert (
        "another `tidings migrate` is at work" in busy.stderr and keys.migrate_lock in busy.stderr
    )
    assert await own_redis.get(keys.schema) == b"1"

    await own_redis.delete(keys.migrate_lock)  # as its TTL would
    done = _cli(own_valkey.url, broken)
    assert done.returncode == 0, done.stderr
    assert await own_redis.get(keys.schema) == str(SCHEMA_VERSION).encode()
    assert not await own_redis.exists(keys.migrate_lock)
    assert _comparable(await dump(own_redis, broken)) == _comparable(
        await dump(own_redis, straight)
    )

    # Leases held at migration time are entered with their deadlines still ahead.
    now_ms = int((await own_redis.time())[0]) * 1000
    for _, score in await own_redis.zrange(keys.lease_deadlines, 0, -1, withscores=True):
        assert score > now_ms


async def test_migrate_refuses_while_workers_serve_the_namespace(
    own_valkey: EmbeddedValkey, own_redis: Redis
) -> None:
    ns = f"w{uuid.uuid4().hex[:8]}"
    keys = Keys(ns)
    await _load(own_redis, ns, lease_ms=600_000)
    pubsub = own_redis.pubsub()
    await pubsub.subscribe(keys.wake_channel)  # what a serving worker does
    try:
        refused = _cli(own_valkey.url, ns)
    finally:
        await pubsub.aclose()
    assert refused.returncode == 1
    assert "1 worker(s) serve namespace" in refused.stderr
    assert await own_redis.get(keys.schema) == b"1" and await own_redis.zcard(keys.schema1_queue)


def test_an_empty_namespace_needs_no_migration(own_valkey: EmbeddedValkey) -> None:
    done = _cli(own_valkey.url, f"e{uuid.uuid4().hex[:8]}")
    assert done.returncode == 0, done.stderr
    assert "is empty: nothing to migrate" in done.stdout


async def test_a_lock_whose_renewal_fails_stops_the_migration_instead_of_lapsing_unseen(
    redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the fix the keeper died with the error, nobody renewed the lock, and every later
    # step went on as if it were held (a second migrate could start meanwhile); the error only
    # surfaced when the context was left.
    monkeypatch.setattr(tidings.migrate, "LOCK_TTL_MS", 300)  # renewed every 0.1 s
    async with _locked(redis, keys) as alive:
        await redis.delete(keys.migrate_lock)
        await redis.hset(keys.migrate_lock, "not", "a string")  # the renewal's GET: WRONGTYPE

        def stopped() -> bool:
            try:
                alive()
            except MigrationBusy as exc:
                assert "renewing it failed" in str(exc)
                return True
            return False

        await until(stopped, what="the failed renewal to stop the migration")
        await redis.delete(keys.migrate_lock)


async def test_leaving_the_migration_lock_never_swallows_a_cancellation(
    redis: Redis, keys: Keys
) -> None:
    entered = asyncio.Event()

    async def hold() -> str:
        async with _locked(redis, keys):
            entered.set()
        return "went on"  # before the fix: the cancel was swallowed and this returned

    task = asyncio.create_task(hold())
    await entered.wait()
    task.cancel()  # lands while the context is being left (waiting for the keeper)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await redis.exists(keys.migrate_lock)
