"""Keyspace schema versions: what the services check at start, what a migration step gets.

The keyspace's version is `<ns>:schema` (`tidings.keys`). Services stamp an empty namespace with
their own version and refuse any other at start-up (`check_schema`): an older one names
`tidings migrate`, a newer one asks for newer code. The migrations themselves are
`tidings.migrate` (the runner, its lock and registry) and one module per version step
(`tidings.migrate_schema2`, ...), each a `Migration` of named `Step`s.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from arq.constants import in_progress_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from .jobs import job_key
from .keys import SCHEMA_VERSION, Keys

__all__ = [
    "Context",
    "Migration",
    "SchemaMismatch",
    "Step",
    "check_schema",
    "job_keys",
    "read_schema",
    "run_of_job",
]


class SchemaMismatch(ValueError):
    """The namespace holds another schema version than this code speaks."""


def check_schema(keys: Keys, found: int) -> None:
    """Raise `SchemaMismatch` unless `found` is this code's version, saying what to do."""
    if found == SCHEMA_VERSION:
        return
    where = f"namespace {keys.ns!r} holds schema {found}, this code speaks {SCHEMA_VERSION}"
    if found < SCHEMA_VERSION:
        raise SchemaMismatch(
            f"{where}: stop every gateway and worker of it and run `tidings migrate` "
            f"(TIDINGS_NAMESPACE={keys.ns}), then start them again"
        )
    raise SchemaMismatch(
        f"{where}: it was written by a newer Tidings; run that version (or newer) of the code"
    )


async def read_schema(redis: Redis, keys: Keys) -> int | None:
    raw = await redis.get(keys.schema)
    return None if raw is None else int(raw)


@dataclass(slots=True)
class Context:
    """What a step gets: the connection, the names, whether to write, and the lock to keep."""

    redis: Redis
    keys: Keys
    dry_run: bool
    alive: Callable[[], None]  # raises when the lock was lost; steps call it between pages


Step = Callable[[Context], Awaitable[tuple[int, str]]]  # -> (count, detail)


@dataclass(frozen=True, slots=True)
class Migration:
    """`version - 1 -> version`: named steps run in order, each idempotent."""

    version: int
    title: str
    steps: tuple[tuple[str, Step], ...]


def job_keys(job_id: str) -> list[str]:
    """arq's keys of one job: its payload, its in-progress mark, its retry count."""
    return [job_key(job_id), in_progress_key_prefix + job_id, retry_key_prefix + job_id]


def run_of_job(job_id: str, payload: bytes | None) -> str | None:
    """The run a Tidings job belongs to: its payload's first argument (both run and task jobs
    take the run id first), else the id in the job's name (`run:{ID}:…`, `task:{ID}:…`)."""
    if payload is not None:
        with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
            args = json.loads(payload)["a"]
            if isinstance(args[0], str):
                return args[0]
    parts = job_id.split(":")
    return parts[1] if len(parts) >= 3 and parts[0] in ("run", "task") else None
