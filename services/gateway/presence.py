"""Viewer presence in Redis: a lease per open event stream, renewed by the gateway streaming it.

Every open stream (the native run stream, `/api/streams`, `/api/runs/events`, the seeds'
streams) holds one lease, `<gateway id>:<n>`, entered with its expiry (ms) as score in:

- `<ns>:client:{C}:viewers`: what the per-client limit counts (`TIDINGS_VIEWERS_PER_CLIENT`,
  live leases on every gateway together);
- `<ns>:run:{ID}:viewers` for each run it follows: what `GET /api/runs/{id}` reports as
  `viewers`, and what keeps a run that a seed stream started alive (`stream_runs.py`).

Decisions:

- Acquiring is one script per new stream, before it starts: drop the client's lapsed leases,
  refuse past the limit (429), enter the lease, and (on a single Redis, in the same script)
  enter it in the viewers of each run it follows and push back the orphan time of each such run
  that a seed stream owns (`ZADD XX GT` on `<ns>:stream_runs`, a no-op for other runs). A
  cluster keeps the client's leases, each run's viewers and `<ns>:stream_runs` in different
  slots: there the script does the client's part alone (so the limit stays exact across
  gateways) and one pipeline does the runs' part next. If that second step fails the lease is
  released (or lapses); a run whose orphan time was not pushed back is still checked for live
  leases by the sweeper before it is stopped (`stream_runs.py`).
- Renewing is one pipeline per gateway process every third of `TIDINGS_VIEWER_LEASE_S`, for all
  its leases at once, grouped per key (one script per key: each on one slot). Nothing here runs
  per event: the fan-out path (`fanout.py`, `viewer.py`) does not know leases exist.
- Releasing is batched: a closing stream queues its lease and wakes the loop, which removes all
  queued leases in one pipeline (a thousand viewers leaving together are one round trip). A
  release brings its runs' orphan time forward to now + grace (`ZADD XX LT`); the sweeper checks
  for other live leases before it stops anything.
- A gateway that dies without a word renews nothing: its leases lapse within one lease time.
- Scores come from each gateway's clock: gateways on several hosts need clocks that agree to
  well within a lease time (NTP does).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from tidings.keys import Keys
from tidings.settings import Settings

from .limits import TooManyViewers

__all__ = ["Lease", "Presence"]

log = logging.getLogger(__name__)

# Presence must keep working when Redis is at its memory cap (viewers go on reading there): its
# writes are a few bytes per open stream, so its scripts may write past the cap (`allow-oom`) and
# touch only the keys they declare.
_ACQUIRE = """#!lua flags=allow-oom
-- KEYS[1] the client's viewer leases; and on a single Redis only (one slot):
-- KEYS[2] runs a seed stream owns (id -> orphan time), KEYS[3..] the viewer leases of each run
-- the stream follows
-- ARGV[1] now (ms)   ARGV[2] the lease's expiry (ms)   ARGV[3] leases allowed per client
-- ARGV[4] the lease   ARGV[5] orphan grace (ms)   ARGV[6] key TTL (ms)   ARGV[7..] the run ids
-- (as many as KEYS[3..])
-- Returns {1, leases} entered, {0, leases} refused.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then
  return {0, n}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local orphaned = tonumber(ARGV[2]) + tonumber(ARGV[5])
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[i], ARGV[6])
  redis.call('ZADD', KEYS[2], 'XX', 'GT', orphaned, ARGV[i + 4])
end
return {1, n + 1}
"""

_TOUCH = """#!lua flags=allow-oom
-- KEYS[1] a set of viewer leases   ARGV[1] now (ms)   ARGV[2] their new expiry (ms)
-- ARGV[3] key TTL (ms)   ARGV[4..] the leases to renew. Lapsed leases (a dead gateway's) go.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
"""

_ORPHAN_TIMES = """#!lua flags=allow-oom
-- KEYS[1] runs a seed stream owns (id -> orphan time)   ARGV[1] 'GT' (later only) or 'LT'
-- ARGV[2] the orphan time (ms)   ARGV[3..] run ids; runs not in the set are left out (XX)
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[2], ARGV[i])
end
"""


def now_ms() -> int:
    return int(time.time() * 1000)


class Lease:
    """One open stream's entry in the registry. `release` when the stream is over."""

    __slots__ = ("client", "member", "presence", "runs")

    def __init__(self, presence: Presence, member: str, client: str, runs: tuple[str, ...]) -> None:
        self.presence = presence
        self.member = member
        self.client = client
        self.runs = runs

    def release(self) -> None:
        self.presence.release(self)


class Presence:
    """The viewer registry of one gateway process: acquire, renew, release, count."""

    def __init__(self, redis: Redis, keys: Keys, settings: Settings, gateway_id: str) -> None:
        self.redis = redis
        self.keys = keys
        self.gateway_id = gateway_id
        self.limit = settings.viewers_per_client
        self.ttl_ms = max(500, int(settings.viewer_lease_s * 1000))
        self.grace_ms = int(settings.orphan_grace_s * 1000)
        # Key TTLs with room for a renewal that comes late or a clock slightly behind.
        self._key_ttl_ms = 2 * self.ttl_ms
        self._numbers = itertools.count(1)
        self._live: dict[str, Lease] = {}
        self._released: list[Lease] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._acquire = redis.register_script(_ACQUIRE)
        self._touch = redis.register_script(_TOUCH)
        self._orphan_times = redis.register_script(_ORPHAN_TIMES)
        self._scripts = (self._touch, self._orphan_times)

    async def acquire(self, client: str, runs: Sequence[str] = ()) -> Lease:
        """A lease for a new stream of `client` following `runs`; TooManyViewers (429) when the
        client already holds `viewers_per_client` live leases on all gateways together."""
        runs = tuple(dict.fromkeys(runs))
        member = f"{self.gateway_id}:{next(self._numbers)}"
        now = now_ms()
        expiry = now + self.ttl_ms
        keys = self.keys
        # A cluster keeps the runs' viewers (and stream_runs) in other slots: they follow below.
        at_once = () if keys.clustered else runs
        verdict, held = await self._acquire(
            keys=[
                keys.client_viewers(client),
                *((keys.stream_runs, *(keys.run_viewers(r) for r in at_once)) if at_once else ()),
            ],
            args=[now, expiry, self.limit, member, self.grace_ms, self._key_ttl_ms, *at_once],
        )
        if not verdict:
            raise TooManyViewers(
                f"{held} event streams are open for this client: at most {self.limit}; "
                "close one, or follow several runs on one `/api/streams` connection",
                retry_after_s=self.ttl_ms / 3000,
                limit=self.limit,
                open=int(held),
                setting="TIDINGS_VIEWERS_PER_CLIENT",
                client=client,
            )
        lease = Lease(self, member, client, runs)
        self._live[member] = lease
        if runs and not at_once:
            try:
                await self._batch(partial(self._follow, {r: [member] for r in runs}, now, expiry))
            except BaseException:
                self.release(lease)
                raise
        return lease

    def release(self, lease: Lease) -> None:
        """The stream is over: its lease goes with the next batch (at once, unless one is being
        sent)."""
        if self._live.pop(lease.member, None) is None:
            return
        self._released.append(lease)
        self._wake.set()

    async def count(self, run_id: str) -> int:
        """Live leases following `run_id`, on every gateway."""
        return int(await self.redis.zcount(self.keys.run_viewers(run_id), f"({now_ms()}", "+inf"))

    # -- lifetime ------------------------------------------------------------------------------

    def start(self) -> None:
        assert self._task is None, "presence already started"
        self._task = asyncio.create_task(self._run(), name="tidings-gateway-presence")

    async def close(self, timeout: float = 2.0) -> None:
        """Stop renewing and remove every lease this process holds (best effort, bounded)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel("gateway shutting down")
            await asyncio.wait({task}, timeout=timeout)
        leases = self._released + list(self._live.values())
        self._released, self._live = [], {}
        try:
            async with asyncio.timeout(timeout):
                await self._remove(leases)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("viewer leases not removed at shutdown (they lapse by themselves): %s", exc)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ttl_ms / 3000
        next_renewal = loop.time() + interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_renewal - loop.time()))
            self._wake.clear()
            try:
                if self._released:
                    leases, self._released = self._released, []
                    await self._remove(leases)
                if loop.time() >= next_renewal:
                    next_renewal = loop.time() + interval
                    await self._renew(list(self._live.values()))
            except (RedisError, OSError) as exc:
                # Leases that were not renewed lapse; removals that failed lapse too.
                log.warning("viewer leases: redis unreachable (%s); retrying", exc)
                next_renewal = min(next_renewal, loop.time() + 1.0)
            except Exception:
                log.exception("viewer leases: renewal failed")
                next_renewal = min(next_renewal, loop.time() + 1.0)

    async def _renew(self, leases: Iterable[Lease]) -> None:
        by_client, by_run = _group(leases)
        if not by_client:
            return
        now = now_ms()
        expiry = now + self.ttl_ms

        def renew(pipe: Pipeline) -> None:
            for client, members in by_client.items():
                key = self.keys.client_viewers(client)
                _queue_script(pipe, self._touch, key, now, expiry, self._key_ttl_ms, *members)
            self._follow(by_run, now, expiry, pipe)

        await self._batch(renew)

    def _follow(
        self, by_run: Mapping[str, list[str]], now: int, expiry: int, pipe: Pipeline
    ) -> None:
        """Queue on `pipe`: the leases entered (or renewed) in each run's viewers, and the orphan
        times of the runs a seed stream owns pushed back to match."""
        if not by_run:
            return
        keys = self.keys
        for run_id, members in by_run.items():
            key = keys.run_viewers(run_id)
            _queue_script(pipe, self._touch, key, now, expiry, self._key_ttl_ms, *members)
        orphaned = expiry + self.grace_ms
        _queue_script(pipe, self._orphan_times, keys.stream_runs, "GT", orphaned, *by_run)

    async def _remove(self, leases: Iterable[Lease]) -> None:
        by_client, by_run = _group(leases)
        if not by_client:
            return
        keys = self.keys

        def remove(pipe: Pipeline) -> None:
            for client, members in by_client.items():
                pipe.zrem(keys.client_viewers(client), *members)
            for run_id, members in by_run.items():
                pipe.zrem(keys.run_viewers(run_id), *members)
            if by_run:
                orphaned = now_ms() + self.grace_ms
                _queue_script(pipe, self._orphan_times, keys.stream_runs, "LT", orphaned, *by_run)

        await self._batch(remove)

    async def _batch(self, queue: Callable[[Pipeline], None]) -> None:
        """What `queue` puts on a non-transactional pipeline (routed per key in a cluster), sent
        once. Its scripts go as plain EVALSHA (`_queue_script`): a server that does not know one
        yet (NOSCRIPT: a fresh or restarted server, a promoted replica) gets them all loaded
        (on every primary of a cluster) and the batch is sent again, which is safe because
        every write here is idempotent."""
        for attempt in range(2):
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    queue(pipe)
                    await pipe.execute()
                return
            except NoScriptError:
                if attempt:
                    raise
                for script in self._scripts:
                    await self.redis.script_load(script.script)


def _queue_script(pipe: Pipeline, script: AsyncScript, key: str, *args: str | int) -> None:
    """`script` on `key` queued as a plain EVALSHA: redis-py's cluster pipeline refuses its
    script helper, and a single Redis's pipeline would ask SCRIPT EXISTS first (a round trip
    per batch); a missing script is `_batch`'s to load."""
    pipe.execute_command("EVALSHA", script.sha, 1, key, *args)


def _group(leases: Iterable[Lease]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    by_client: defaultdict[str, list[str]] = defaultdict(list)
    by_run: defaultdict[str, list[str]] = defaultdict(list)
    for lease in leases:
        by_client[lease.client].append(lease.member)
        for run_id in lease.runs:
            by_run[run_id].append(lease.member)
    return by_client, by_run
