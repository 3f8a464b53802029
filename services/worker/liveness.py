"""Which workers are still connected: the fast path of crash detection.

Every worker names its Redis connections `tidings-worker:<worker name>` (CLIENT SETNAME, done by
redis-py on connect) and registers its name in `<ns>:workers`. A worker killed outright (kill -9,
OOM, a crashed host whose kernel resets the sockets) loses all its connections at once, so the
sweeper can tell, from CLIENT LIST, that a registered worker is gone long before its leases' TTL
runs out. Only the worker holding the sweep turn asks, at most every `_LIVENESS_S` while nobody
is missing (`sweeper`): two CLIENT LISTs a second for the whole pool.

It is only a hint, and a conservative one: a holder counts as gone after it has been missing
from the list for `grace_s`, and the reclaim itself is still fenced on the exact lease value.
After a restart of Redis (or a network blip) every connection is new, and live workers are still
reconnecting when the first sweeper is back: so absence only counts once the asking worker's own
oldest connection is `settle_s` old, i.e. the list is not read in the first moments after an
outage. A frozen worker (SIGSTOP, a partition) keeps its connections and is recovered by the
lease's TTL as before. Where CLIENT LIST is not allowed (some managed Redis), the fast path
switches itself off.

In a cluster a worker's connections are spread over every primary (each holds the keys of some
buckets), so every primary is asked: a worker listed by any of them is connected, and the lists
count only when the asking worker's own oldest connection on each primary is `settle_s` old (a
primary just promoted by a failover has only new connections; its list says nothing yet).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

__all__ = ["CLIENT_PREFIX", "Liveness", "client_name"]

logger = logging.getLogger(__name__)

CLIENT_PREFIX = "tidings-worker:"


def client_name(worker: str) -> str:
    return CLIENT_PREFIX + worker


class Liveness:
    def __init__(
        self, redis: Redis, worker: str, *, grace_s: float = 1.0, settle_s: float = 1.0
    ) -> None:
        self.redis = redis
        self.own_name = client_name(worker)
        self.grace_s = grace_s
        self.settle_s = settle_s
        self.enabled = True
        self._missing_since: dict[str, float] = {}

    @property
    def suspects(self) -> bool:
        """Some worker asked about is missing from the list (its grace is running)."""
        return bool(self._missing_since)

    def forget(self) -> None:
        self._missing_since.clear()

    async def gone(self, holders: set[str]) -> set[str]:
        """The holders (worker names) that have had no connection for at least `grace_s`."""
        if not holders or not self.enabled:
            self._missing_since.clear()
            return set()
        try:
            lists = await self._client_lists()
        except ResponseError as exc:
            self.enabled = False
            logger.warning("CLIENT LIST refused (%s): crash detection falls back to leases", exc)
            return set()
        for clients in lists:
            own_ages = [int(c.get("age", 0)) for c in clients if c.get("name") == self.own_name]
            if not own_ages or max(own_ages) < self.settle_s:
                self._missing_since.clear()  # we have just (re)connected: so may everyone else
                return set()
        connected = {
            c["name"][len(CLIENT_PREFIX) :]
            for clients in lists
            for c in clients
            if c.get("name", "").startswith(CLIENT_PREFIX)
        }
        now = time.monotonic()
        gone: set[str] = set()
        for holder in holders:
            if holder in connected:
                self._missing_since.pop(holder, None)
            elif now - self._missing_since.setdefault(holder, now) >= self.grace_s:
                gone.add(holder)
        for holder in list(self._missing_since):
            if holder not in holders:
                del self._missing_since[holder]
        return gone

    async def _client_lists(self) -> list[list[dict[str, Any]]]:
        """CLIENT LIST of the server, or of each primary of a cluster."""
        if not isinstance(self.redis, RedisCluster):
            return [await self.redis.client_list()]
        reply = await self.redis.client_list(target_nodes=RedisCluster.PRIMARIES)
        if isinstance(reply, dict):  # one list per primary (a one-primary cluster: the list)
            return list(reply.values())
        return [reply]
