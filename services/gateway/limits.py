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
  then O(1), and a check at the limit costs one HGET per member, in one routed pipeline (below).

Both checks and the reservation are one script (`_ADMIT`) on the client's slot, so two
concurrent starts never both take the last slot, through any number of gateways. The run id is
chosen before the check so the reservation can name it; a start that fails afterwards (invalid
input, an id taken) gives both slots back.

A run's record lives in its own slot (its bucket's, in a cluster), so the script never reads one:
a check that finds the set full answers with its members; the gateway reads their statuses in
one routed pipeline (not atomic, and it need not be: a run seen ended stays ended, one seen
unfinished at worst keeps its slot a moment longer) and runs the script once more, naming the
ones that ended (or whose record is gone past the reservation age) to drop before it checks
again. Every check and admission is still atomic on the client's slot: the limit stays exact
under concurrency. A single Redis takes the same path: it costs two more round trips only when
the set is full.

Over a limit the answer is a 429 with `Retry-After` and the JSON error shape; `details` name the
limit, its setting and the client as the gateway counts it.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
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
-- ARGV[4] unfinished runs allowed   ARGV[5] run id   ARGV[6] TTL of the runs set (ms)
-- ARGV[7..] runs seen ended: dropped from KEYS[2] first
-- Returns {'OK', 1} reserved, {'OK', 0} already reserved (a repeated id), {'RATE', retry ms},
-- {'ACTIVE', unfinished runs, id1, ms1, id2, ms2, ...} (the runs to look at).
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
for i = 7, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
end
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
  local reply = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  table.insert(reply, 1, active)
  table.insert(reply, 1, 'ACTIVE')
  return reply
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], window)
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
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
        self._ended_statuses = frozenset(s.value.encode() for s in TERMINAL_STATUSES)

    async def reserve(self, client: str, run_id: str) -> bool:
        """Count a start of `run_id` by `client`, or raise TooManyStarts / TooManyActiveRuns.
        False when the client had already reserved that id (nothing more was counted)."""
        now = int(time.time() * 1000)
        reply = await self._admit(client, run_id, now, ())
        if reply[0] == b"ACTIVE":
            # Full: drop the runs that ended, then check again (module docstring).
            ended = await self._ended(reply[2:], now)
            if ended:
                reply = await self._admit(client, run_id, now, ended)
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

    async def _admit(self, client: str, run_id: str, now: int, ended: Sequence[bytes]) -> list[Any]:
        reply: list[Any] = await self._script(
            keys=[self.keys.client_starts(client), self.keys.client_runs(client)],
            args=[
                now,
                WINDOW_MS,
                self.per_minute,
                self.active,
                run_id,
                _RUNS_TTL_MS,
                *ended,
            ],
        )
        return reply

    async def _ended(self, members: Sequence[bytes], now: int) -> list[bytes]:
        """Of the runs `members` lists (id, ms, id, ms, ...), those that ended, and those whose
        record is gone once they are older than a reservation may be: one routed pipeline of
        status reads, each on its run's slot."""
        ids = members[0::2]
        young = now - _RESERVATION_MS
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                pipe.hget(self.keys.run(rid.decode()), "status")
            statuses: list[bytes | None] = await pipe.execute()
        return [
            rid
            for rid, score, status in zip(ids, members[1::2], statuses, strict=True)
            if (status is not None and status in self._ended_statuses)
            or (status is None and float(score) < young)
        ]

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
