"""A run's view of its signal list.

The list `<ns>:run:{ID}:signals` is never popped: it is the durable history of every request.
A (re-)executing run reads it from the start and folds it into its current state with
`tidings.signals` (the fold `Control.signal` uses too): stop and cancel are sticky, pause/resume
is the last of them, messages form an ordered inbox. So a run
re-executed after a crash is paused if it was paused, still stops, and replays its chat inbox in
order (the replies are checkpointed steps, so nothing is answered twice).

Reads are triggered by the doorbell (`signal <run id>` on the wake channel) and, as a fallback
for a missed pub/sub message, by the worker's lease loop, which sees the list's length. A read
that meets a Redis outage waits for Redis to come back (`outage.until_redis`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from functools import partial

from redis.asyncio import Redis

from tidings.keys import Keys
from tidings.sdk import Signal
from tidings.signals import SignalFold, decode_signal

from .outage import until_redis

__all__ = ["SignalBox"]


class SignalBox:
    def __init__(self, redis: Redis, keys: Keys, run_id: str) -> None:
        self.redis = redis
        self.key = keys.signals(run_id)
        self.read = 0  # entries of the list folded in so far
        self.asked = SignalFold()
        self.taken = 0  # messages handed to the workflow
        self.on_new: Callable[[list[Signal]], None] | None = None
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def stop(self) -> bool:
        return self.asked.stop

    @property
    def cancel(self) -> bool:
        return self.asked.cancel

    @property
    def paused(self) -> bool:
        return self.asked.paused is True

    @property
    def messages(self) -> list[Signal]:
        return self.asked.messages

    async def poll(self) -> list[Signal]:
        """Fold in whatever arrived since the last read; returns the new signals."""
        async with self._lock:
            start = self.read
            raw: list[bytes] = await until_redis(
                partial(self.redis.lrange, self.key, start, -1),  # type: ignore[arg-type]
                f"signals of {self.key}",
            )
            return self.fold(raw, start)

    def fold(self, raw: list[bytes], start: int = 0) -> list[Signal]:
        """Apply entries `start…` of the list (read by the caller), skipping those already
        folded: two overlapping reads never apply a signal twice."""
        if start > self.read:
            return []  # a gap: the next poll reads from `read`
        raw = raw[self.read - start :]
        self.read += len(raw)
        new = [self._apply(item) for item in raw]
        if new:
            self._changed.set()
            self._changed = asyncio.Event()
            if self.on_new is not None:
                self.on_new(new)
        return new

    async def changed(self, timeout: float | None) -> None:
        """Wait until new signals are folded in, or `timeout` seconds pass."""
        event = self._changed
        if timeout is not None and timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def next_message(self) -> Signal | None:
        if self.taken < len(self.messages):
            self.taken += 1
            return self.messages[self.taken - 1]
        return None

    def _apply(self, item: bytes) -> Signal:
        sig = decode_signal(item)
        self.asked.apply(sig)
        return sig
