"""`tidings migrate`: upgrade a namespace's keyspace to this code's schema (`tidings.migrate`).

Like `tidings prune` it talks to Redis, not to a gateway: the gateways and workers of the
namespace must be stopped (they refuse to start on an older schema anyway). Which Redis:
`REDIS_URL`, else the local `tidings up`'s embedded Valkey while it runs, else, when `tidings up`
is stopped, that embedded Valkey started here on its data directory for the migration and stopped
again (holding `tidings up`'s lock meanwhile), so an upgrade of a local install is `tidings
migrate` then `tidings up`.

Exit codes: 0 when the namespace is current (already, or now; or, with `--dry-run`, would be),
1 when it cannot be migrated (another migration at work, workers still serving it, a schema
newer than this code, Redis unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator

from redis.exceptions import ConnectionError as RedisConnectionError

from tidings.embedded import EmbeddedValkey
from tidings.migrate import MigrateReport, MigrationBusy, ServicesRunning, migrate
from tidings.redis import connect
from tidings.schema import SchemaMismatch
from tidings.settings import Settings

from .errors import EXIT_OK, CliError
from .local import redis_answers, redis_url_file

__all__ = ["migrate_command"]


def migrate_command(settings: Settings, *, dry_run: bool, as_json: bool) -> int:
    lines: list[str] = []

    def say(line: str) -> None:
        if as_json:
            lines.append(line)
        else:
            print(line, flush=True)

    with _redis_url(settings) as url:
        try:
            report = asyncio.run(_migrate(settings, url, dry_run, say))
        except RedisConnectionError as exc:
            raise CliError(f"Redis unreachable: {exc}") from None
        except (SchemaMismatch, MigrationBusy, ServicesRunning) as exc:
            raise CliError(str(exc)) from None
    if as_json:
        print(json.dumps({**report.as_dict(), "log": lines}, indent=2), flush=True)
    else:
        print(describe(report), flush=True)
    return EXIT_OK


async def _migrate(
    settings: Settings, url: str, dry_run: bool, say: Callable[[str], None]
) -> MigrateReport:
    redis = connect(url, cluster=settings.redis_cluster)
    try:
        return await migrate(redis, settings.keys(), dry_run=dry_run, say=say)
    finally:
        await redis.aclose()


def describe(report: MigrateReport) -> str:
    ns = f"namespace {report.namespace!r}"
    if report.found is None:
        return f"{ns} is empty: nothing to migrate (services stamp it schema {report.target})"
    if report.current:
        return f"{ns} is at schema {report.target} already: nothing to do"
    if report.dry_run:
        return f"{ns} would go from schema {report.found} to {report.version} (dry run: unchanged)"
    return f"{ns} migrated from schema {report.found} to {report.version}"


@contextlib.contextmanager
def _redis_url(settings: Settings) -> Iterator[str]:
    """The Redis to migrate: see the module's docstring."""
    if settings.redis_url:
        yield settings.redis_url
        return
    url_file = redis_url_file(settings)
    url = url_file.read_text().strip() if url_file.exists() else ""
    if url and redis_answers(url):
        yield url
        return
    data = settings.data_dir / "valkey"
    if not data.is_dir():
        raise CliError(
            f"no Redis: set REDIS_URL, or run this where `tidings up` keeps its data ({data} "
            "is missing)"
        )
    fd = os.open(settings.data_dir / "up.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CliError(f"a `tidings up` is starting on {settings.data_dir}: stop it") from None
        valkey = EmbeddedValkey(data, persistent=True, maxmemory=settings.valkey_maxmemory)
        try:
            valkey.start(timeout=30)
        except RuntimeError as exc:
            raise CliError(f"embedded Valkey did not start: {str(exc).splitlines()[0]}") from None
        try:
            yield valkey.url
        finally:
            valkey.stop()
    finally:
        os.close(fd)
