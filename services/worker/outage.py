"""Riding out a Redis outage: retry what a run needs from Redis until Redis answers again.

A restart of Redis (persistent, as deployed) or a network blip is not the run's failure, nor a
reason to give it to another worker. So the calls an execution cannot do without (publishing,
committing a step, renewing the lease, saving state, reading signals, waiting for tasks) go
through `until_redis`: on a connection-level error (after the client library's own brief
retries) it waits, with a capped exponential back-off, and tries again, for as long as it takes.

When Redis is back the run simply carries on as the same attempt: every one of those calls is
fenced by the attempt in Redis, so if the run was taken over meanwhile (this worker was cut off
for longer than its lease while others were not), the first call to arrive is refused (`Fenced`)
and the execution stops without writing anything. Nothing is retried but connection trouble: a
reply, an error reply included, is the answer.

Retrying is safe for what goes through here: a resent publish is refused as DUPLICATE (the batch
carries a unique id), a resent commit finds its checkpoint set (HSETNX), lease renewals and state
writes are idempotent, and the rest are reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["OUTAGE_ERRORS", "OutageNotice", "until_redis"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# BusyLoadingError (a restarted server still loading its data) is a ConnectionError.
OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError)

_FIRST_S = 0.02
_CAP_S = 0.25  # short: once Redis is back, a run should notice within a fraction of its lease


async def until_redis(op: Callable[[], Awaitable[T]], what: str) -> T:
    """`await op()`, again and again while Redis is unreachable; its result once it answers.

    Cancellation goes through at once (a run aborted while it waits stops waiting).
    """
    delay = _FIRST_S
    since: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        try:
            result = await op()
        except OUTAGE_ERRORS as exc:
            if since is None:
                since = loop.time()
                logger.warning("%s: Redis unreachable (%s); retrying until it is back", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _CAP_S)
            continue
        if since is not None:
            logger.info("%s: Redis back after %.1f s", what, loop.time() - since)
        return result


class OutageNotice:
    """For a loop that keeps going through an outage on its own (the sweeper, the doorbell, the
    queue poll): one warning when Redis goes away and one line when it is back, not a traceback
    per iteration."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self._since is None:
            self._since = time.monotonic()
            logger.warning("%s: Redis unreachable (%s)", self.what, exc)

    def ok(self) -> None:
        if self._since is not None:
            logger.info("%s: Redis back after %.1f s", self.what, time.monotonic() - self._since)
            self._since = None
