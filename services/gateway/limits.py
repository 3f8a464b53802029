"""Per-client limits on starting runs, kept in Redis so they hold across gateway processes.

A *client* is `Principal.client` (`access.py`): `token:<fingerprint>` or `session:<sid>` with
authentication on, `addr:<ip>` without. Two limits guard every route that starts a run
(`POST /api/runs`, seed 000's execute, `/monty/stream`, `POST /chat`):

- **Runs started per minute** (`TIDINGS_RUNS_PER_MINUTE`): a sliding window, exact: a sorted set
  of the client's starts of the last 60 s (run id → ms), so it never holds more entries than the
  limit. `Retry-After` is when the oldest start leaves the window.
- **Unfinished runs** (`TIDINGS_ACTIVE_RUNS_PER_CLIENT`): a sorted set of the runs the client
  started. Nothing removes a run when it ends (the publish script stays as it is); instead, a
  check that finds the set full reads each member's status and drops those that ended, and
  those whose record is gone once they are older than a reservation may be. The common case is
  then O(1), and a check at the limit costs one HGET per member, inside the script.

Both checks and the reservation are one script (`_ADMIT`), so two concurrent starts never both
take the last slot, through any number of gateways. The run id is chosen before the check so
the reservation can name it; a start that fails afterwards (invalid input, an id taken) gives
both slots back. The script builds run-record names from its arguments and reads them: fine on
one Redis or Valkey; on a Cluster the prune would have to move out of the script.

Over a limit the answer is a 429 with `Retry-After` and the JSON error shape; `details` name the
limit, its setting and the client as the gateway counts it.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.errors import TidingsError
from tidings.events import TERMINAL_STATUSES
from tidings.keys import Keys
from tidings.runs import RunRecord
from tidings.settings import Settings

if TYPE_CHECKING:
    from .context import Gateway

__all__ = [
    "Admission",
    "TooManyActiveRuns",
    "TooManyRequests",
    "TooManyStarts",
    "TooManyViewers",
    "start_limited",
]

log = logging.getLogger(__name__)

WINDOW_MS = 60_000
# A reservation comes before its run record: one younger than this is never taken for gone.
_RESERVATION_MS = 60_000
# Kept as long as a finished run is by default; every start renews it.
_RUNS_TTL_MS = 7 * 86_400_000
# When a slot frees is unknown for unfinished runs: come back in a few seconds.
_ACTIVE_RETRY_S = 5

_ADMIT = """
-- KEYS[1] the client's starts (run id -> ms)   KEYS[2] the client's unfinished runs (id -> ms)
-- ARGV[1] now (ms)   ARGV[2] window (ms)   ARGV[3] starts allowed per window
-- ARGV[4] unfinished runs allowed   ARGV[5] run id   ARGV[6], ARGV[7] what goes before and
-- after a run id in its record's key   ARGV[8] how long a reservation may have no record (ms)
-- ARGV[9] TTL of the runs set (ms)   ARGV[10..] the terminal statuses
-- Returns {'OK', 1} reserved, {'OK', 0} already reserved (a repeated id), {'RATE', retry ms},
-- {'ACTIVE', unfinished runs}.
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[2], ARGV[5]) then
  return {'OK', 0}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {'RATE', tonumber(oldest[2]) + window - now}
end
local active = redis.call('ZCARD', KEYS[2])
if active >= tonumber(ARGV[4]) then
  local ended = {}
  for i = 10, #ARGV do ended[ARGV[i]] = true end
  local young = now - tonumber(ARGV[8])
  local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do
    local status = redis.call('HGET', ARGV[6] .. members[i] .. ARGV[7], 'status')
    if (status and ended[status]) or (not status and tonumber(members[i + 1]) < young) then
      redis.call('ZREM', KEYS[2], members[i])
      active = active - 1
    end
  end
  if active >= tonumber(ARGV[4]) then
    return {'ACTIVE', active}
  end
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], window)
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[9])
return {'OK', 1}
"""


class TooManyRequests(TidingsError):
    """Over a per-client limit: 429 with `Retry-After` (whole seconds, at least 1)."""

    code = "too_many_requests"
    status = 429

    def __init__(self, message: str, *, retry_after_s: float, **details: Any) -> None:
        super().__init__(message)
        retry = max(1, math.ceil(retry_after_s))
        self.headers = {"Retry-After": str(retry)}
        self.details = {**details, "retry_after_s": retry}


class TooManyStarts(TooManyRequests):
    code = "too_many_starts"


class TooManyActiveRuns(TooManyRequests):
    code = "too_many_active_runs"


class TooManyViewers(TooManyRequests):
    code = "too_many_viewers"


class Admission:
    """The start limits of one gateway process (the counts live in Redis)."""

    def __init__(self, redis: Redis, keys: Keys, settings: Settings) -> None:
        self.redis = redis
        self.keys = keys
        self.per_minute = settings.runs_per_minute
        self.active = settings.active_runs_per_client
        self._script = redis.register_script(_ADMIT)
        self._statuses = sorted(s.value for s in TERMINAL_STATUSES)

    async def reserve(self, client: str, run_id: str) -> bool:
        """Count a start of `run_id` by `client`, or raise TooManyStarts / TooManyActiveRuns.
        False when the client had already reserved that id (nothing more was counted)."""
        head, tail = self.keys.run_affixes()
        reply = await self._script(
            keys=[self.keys.client_starts(client), self.keys.client_runs(client)],
            args=[
                int(time.time() * 1000),
                WINDOW_MS,
                self.per_minute,
                self.active,
                run_id,
                head,
                tail,
                _RESERVATION_MS,
                _RUNS_TTL_MS,
                *self._statuses,
            ],
        )
        verdict, value = reply[0], int(reply[1])
        if verdict == b"OK":
            return value == 1
        if verdict == b"RATE":
            raise TooManyStarts(
                f"at most {self.per_minute} runs may be started per minute by one client",
                retry_after_s=value / 1000,
                limit=self.per_minute,
                window_s=WINDOW_MS // 1000,
                setting="TIDINGS_RUNS_PER_MINUTE",
                client=client,
            )
        raise TooManyActiveRuns(
            f"{value} unfinished runs started by this client: at most {self.active}; "
            "stop one or wait for one to end",
            retry_after_s=_ACTIVE_RETRY_S,
            limit=self.active,
            active=value,
            setting="TIDINGS_ACTIVE_RUNS_PER_CLIENT",
            client=client,
        )

    async def release(self, client: str, run_id: str) -> None:
        """Give back a reservation whose run never started."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.client_starts(client), run_id)
            pipe.zrem(self.keys.client_runs(client), run_id)
            await pipe.execute()

    @asynccontextmanager
    async def starting(self, client: str, run_id: str | None = None) -> AsyncIterator[str]:
        """Reserve a start (a new run id unless one is given) for the block, which starts the
        run; if the block fails, the reservation is given back."""
        run_id = run_id or str(uuid.uuid4())
        fresh = await self.reserve(client, run_id)
        try:
            yield run_id
        except BaseException:
            if fresh:
                try:
                    await self.release(client, run_id)
                except RedisError as exc:  # the window forgets it within a minute anyway
                    log.warning("could not give back the start of %s: %s", run_id, exc)
            raise


async def start_limited(
    ctx: Gateway,
    client: str,
    workflow: str,
    input: dict[str, Any] | None,
    *,
    run_id: str | None = None,
) -> RunRecord:
    """Start a run for `client` within its limits; the run records `client` as its `owner`."""
    async with ctx.admission.starting(client, run_id) as rid:
        return await ctx.control.start(workflow, input, run_id=rid, owner=client)
