"""`tidings prune`: remove finished runs now, straight in Redis (`tidings.retention`).

It talks to Redis, not to a gateway: pruning is maintenance of the keyspace, and works the same
whether or not a gateway runs. Without `--older-than` the age is the retention, so it removes
what Redis would expire anyway, plus anything left behind; with retention 0 (keep forever) and
no `--older-than` it removes only what was left behind. Either way it drops the catalog
definitions of old workflow versions that nothing serves, queues or runs any more.
"""

from __future__ import annotations

import asyncio
import json
import sys

from redis.exceptions import ConnectionError as RedisConnectionError

from tidings.redis import connect
from tidings.retention import PruneReport, prune
from tidings.settings import Settings

from .errors import EXIT_OK, CliError
from .local import with_redis_url

__all__ = ["prune_command"]


def prune_command(
    settings: Settings, *, older_than_s: int | None, dry_run: bool, as_json: bool
) -> int:
    settings = with_redis_url(settings)
    if older_than_s is None and settings.retention:
        older_than_s = settings.retention
    try:
        report = asyncio.run(_prune(settings, older_than_s, dry_run))
    except RedisConnectionError as exc:
        raise CliError(f"Redis unreachable: {exc}") from None
    if as_json:
        print(json.dumps(report.as_dict(), indent=2), flush=True)
    else:
        print(describe(report), flush=True)
        if older_than_s is None:
            print(
                "retention is 0 (runs are kept forever): no finished run was old enough; "
                "pass --older-than to remove some",
                file=sys.stderr,
                flush=True,
            )
    return EXIT_OK


async def _prune(settings: Settings, older_than_s: int | None, dry_run: bool) -> PruneReport:
    assert settings.redis_url
    redis = connect(settings.redis_url, cluster=settings.redis_cluster)
    try:
        return await prune(redis, settings.keys(), older_than_s=older_than_s, dry_run=dry_run)
    finally:
        await redis.aclose()


def describe(report: PruneReport) -> str:
    """One line: what went (or would go), and how much memory it held."""
    verb = "would remove" if report.dry_run else "removed"
    runs = f"{len(report.runs)} finished run{'' if len(report.runs) == 1 else 's'}"
    if report.cutoff:
        runs += f" (finished before {report.cutoff})"
    parts = [
        runs,
        f"{report.stale_entries} stale index entries",
        f"{report.orphan_keys} orphan keys",
        f"{report.jobs} queued jobs of runs gone",
        _definitions(report.definitions),
    ]
    line = f"{verb} {', '.join(parts)}: {report.keys} keys, {_size(report.bytes)}"
    if report.ttl_fixed:
        fixed = "would get" if report.dry_run else "got"
        line += f"; {report.ttl_fixed} keys of finished runs {fixed} their run's TTL"
    return line


def _definitions(names: list[str]) -> str:
    """The catalog definitions of old versions, named when there are few (`monty:1, monty:2`)."""
    text = f"{len(names)} catalog definition{'' if len(names) == 1 else 's'} of old versions"
    if 0 < len(names) <= 10:
        text += f" ({', '.join(sorted(names))})"
    return text


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size = n / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
