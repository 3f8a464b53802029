"""Keyspace schema upgrades: `tidings migrate` brings a namespace to this code's `SCHEMA_VERSION`.

The keyspace's version is `<ns>:schema` (`tidings.keys`). Services stamp an empty namespace with
their own version and refuse any other at start-up (`check_schema`): an older one names
`tidings migrate`, a newer one asks for newer code. `MIGRATIONS` holds one `Migration` per version
step (`n - 1 -> n`), in order; `migrate` runs those the namespace still needs.

Decisions:
- Every step is idempotent and works from what it finds, never from a note of how far an earlier
  attempt got: a migration interrupted anywhere (a crash, Ctrl-C, a lost connection) is finished
  by running it again. Writes are ordered or grouped so that an interruption never loses
  anything (a page of queued jobs moves in one MULTI: in the new queues and out of the old, or
  not at all).
- The version is written last, once every step of a migration is done; a namespace therefore
  reads as the old version until it is wholly the new one, and the services keep refusing it.
- One migration at a time: `<ns>:lock:migrate` (SET NX with a token and a TTL, renewed while
  work goes on, released by compare-and-delete). A second `tidings migrate` finds it taken and
  stops without writing; a lock whose holder died expires after `LOCK_TTL_MS`.
- The services must be stopped: a worker still serving the namespace would keep writing the old
  layout. Workers are seen on the doorbell channel (each subscribes once it serves), and
  `migrate` refuses to start while any listens; gateways leave no such trace, stop them too.
- Nothing is read from or written by another namespace. arq's job keys (`arq:job:<id>`, outside
  every namespace) are read to find a job's run, and deleted with the jobs of runs that are gone.
- `dry_run` walks the same keys and reports the same counts, writing nothing (not even the lock).
- A cluster keyspace (`TIDINGS_REDIS_CLUSTER`) is written at this code's schema from the start:
  no older layout ever ran on a cluster. `migrate` there reports an empty or current namespace
  as up to date and refuses an older version (`SchemaMismatch`) before writing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis

from .jobs import workers_listening
from .keys import SCHEMA_VERSION, Keys
from .migrate_schema2 import MIGRATION as _TO_2
from .schema import Context, Migration, SchemaMismatch, check_schema, read_schema

__all__ = [
    "LOCK_TTL_MS",
    "MIGRATIONS",
    "Change",
    "MigrateReport",
    "Migration",
    "MigrationBusy",
    "SchemaMismatch",
    "ServicesRunning",
    "check_schema",
    "migrate",
    "read_schema",
]

LOCK_TTL_MS = 30_000

# Every migration, in order: one per schema version after 1, up to `SCHEMA_VERSION`.
MIGRATIONS: tuple[Migration, ...] = (_TO_2,)
if [m.version for m in MIGRATIONS] != list(range(2, SCHEMA_VERSION + 1)):
    raise RuntimeError("one migration per schema version, in order, up to SCHEMA_VERSION")


class MigrationBusy(RuntimeError):
    """Another `tidings migrate` holds the namespace's lock."""


class ServicesRunning(RuntimeError):
    """Workers still serve the namespace."""


# -- the report --------------------------------------------------------------------------------


@dataclass(slots=True)
class Change:
    """What one step did (or, dry, would do)."""

    version: int  # the migration it belongs to (to this version)
    step: str
    count: int
    detail: str = ""


@dataclass(slots=True)
class MigrateReport:
    namespace: str
    found: int | None  # the version before (None: an empty namespace)
    target: int
    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    version: int | None = None  # the version after (as it would be, dry)

    @property
    def current(self) -> bool:
        """There was nothing to do."""
        return self.found is None or self.found == self.target

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "current": self.current}


# -- migrations ----------------------------------------------------------------------------------


# -- the lock ------------------------------------------------------------------------------------

# KEYS[1] lock. ARGV: token, ttl ms. Renews the lock if this holder still has it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] lock. ARGV: token. Releases the lock if this holder still has it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextlib.asynccontextmanager
async def _locked(redis: Redis, keys: Keys) -> AsyncIterator[Callable[[], None]]:
    token = f"{uuid.uuid4()}"
    if not await redis.set(keys.migrate_lock, token, nx=True, px=LOCK_TTL_MS):
        left = await redis.pttl(keys.migrate_lock)
        raise MigrationBusy(
            f"another `tidings migrate` is at work on namespace {keys.ns!r} "
            f"({keys.migrate_lock} is held; it expires in {max(left, 0) / 1000:.0f} s "
            "if its holder died)"
        )
    renew = redis.register_script(_RENEW)
    lost: list[str] = []

    async def keep() -> None:
        # A renewal that fails (Redis away) ends the keeping like a lost lock: nobody renews it
        # any more, so the next step must not start as if it were still held.
        try:
            while True:
                await asyncio.sleep(LOCK_TTL_MS / 3000)
                if not await renew(keys=[keys.migrate_lock], args=[token, LOCK_TTL_MS]):
                    lost.append("it expired")
                    return
        except Exception as exc:
            lost.append(f"renewing it failed: {exc}")

    def alive() -> None:
        if lost:
            raise MigrationBusy(f"the migration lost {keys.migrate_lock} ({lost[0]}); run again")

    keeper = asyncio.create_task(keep())
    try:
        yield alive
    finally:
        keeper.cancel()
        try:
            await asyncio.wait([keeper])  # unlike awaiting it, never swallows our own cancellation
        finally:
            await redis.register_script(_RELEASE)(keys=[keys.migrate_lock], args=[token])


def _nothing_to_lose() -> None:
    return None


# -- running them --------------------------------------------------------------------------------


async def migrate(
    redis: Redis,
    keys: Keys,
    *,
    dry_run: bool = False,
    say: Callable[[str], None] | None = None,
) -> MigrateReport:
    """Bring `keys.ns` to `SCHEMA_VERSION`; see the module's docstring. `say` hears each step as
    it ends. Raises `SchemaMismatch` for a namespace newer than this code, `MigrationBusy` when
    another migration holds the lock, `ServicesRunning` when workers serve the namespace."""
    tell = say or (lambda _: None)
    found = await read_schema(redis, keys)
    report = MigrateReport(keys.ns, found, SCHEMA_VERSION, dry_run, version=found)
    if found is not None and found > SCHEMA_VERSION:
        check_schema(keys, found)
    if report.current:
        return report
    assert found is not None
    if keys.clustered:
        raise SchemaMismatch(
            f"namespace {keys.ns!r} holds schema {found} on a Redis Cluster, where this code "
            f"only ever wrote schema {SCHEMA_VERSION}: no migration exists for it (schema "
            f"{found} ran on a single Redis; migrate it there before moving it)"
        )
    listening = await workers_listening(redis, keys)
    if listening and not dry_run:
        raise ServicesRunning(
            f"{listening} worker(s) serve namespace {keys.ns!r}: stop every worker and gateway "
            "of it before migrating"
        )
    guard = contextlib.nullcontext(_nothing_to_lose) if dry_run else _locked(redis, keys)
    async with guard as alive:
        found = await read_schema(redis, keys)  # another migration may have finished meanwhile
        assert found is not None
        for migration in MIGRATIONS:
            if migration.version <= found:
                continue
            tell(f"schema {migration.version - 1} -> {migration.version}: {migration.title}")
            ctx = Context(redis, keys, dry_run, alive)
            for name, step in migration.steps:
                alive()
                count, detail = await step(ctx)
                report.changes.append(Change(migration.version, name, count, detail))
                dry = " (dry run: nothing written)" if dry_run and detail else ""
                tell(f"  {name}: {detail or 'nothing to do'}{dry}")
            alive()
            if not dry_run:
                await redis.set(keys.schema, migration.version)
            report.version = migration.version
    return report
