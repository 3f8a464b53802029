"""Per-run event publishing, pipelined: many events, few round trips, order kept.

`send` queues an event and returns at once unless asked to wait; one flusher task sends whatever
has queued up as one script call (`Bus.publish_raw`: a batch of one run's events is one EVALSHA).
A run emitting in a tight loop therefore pays one round trip and one script per batch instead of
one per event, which is what lets one worker publish tens of thousands of events per second.
Result models are built only for the callers that wait for them. Back-pressure: past `_HIGH_WATER`
queued events `send` waits.

Errors are sticky: the first failure (`Fenced` when another attempt owns the run, `RunFinished`
when it was cancelled under us) is remembered, reported to `on_error` once, and raised by every
later call, so a zombie stops at its next publish. `commit` drains the queue first, then sends a
checkpointed publish, so a step's `task_completed` never overtakes the events before it.

`close` (the execution was fenced, finished or handed back) makes the publisher refuse events from
then on with `Closed`, a `Fenced`: whoever waits on an event it drops gets that error, never a
`CancelledError`, which would read as its own task being cancelled (and would, say, end a worker's
hand-back half way through).

Losing Redis is not an error here: a batch (or a commit) that meets a connection error is sent
again, in order, until Redis answers (`outage.until_redis`); meanwhile `send` keeps queueing up
to the high-water mark. A resent batch that had landed before the connection dropped is refused
as DUPLICATE, a resent commit finds its checkpoint set: nothing is written twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from tidings.bus import Bus, PublishCommand
from tidings.errors import Fenced
from tidings.events import Event, EventType

from .outage import until_redis

__all__ = ["Closed", "Publisher"]

logger = logging.getLogger(__name__)

_BATCH = 512
_HIGH_WATER = 2048


class Closed(Fenced):
    """The execution stopped publishing: it was handed back, fenced or has finished."""


class Publisher:
    def __init__(
        self,
        bus: Bus,
        run_id: str,
        attempt: int,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.bus = bus
        self.run_id = run_id
        self.attempt = attempt
        self.error: Exception | None = None
        self._on_error = on_error
        self._pending: list[tuple[PublishCommand, asyncio.Future[Event] | None]] = []
        self._flusher: asyncio.Task[None] | None = None

    def command(self, type: EventType, message: str = "", **kwargs: Any) -> PublishCommand:
        return self.bus.command(self.run_id, type, message, attempt=self.attempt, **kwargs)

    async def send(
        self, type: EventType, message: str = "", *, wait: bool = False, **kwargs: Any
    ) -> Event | None:
        """Queue an event; with `wait`, return it once published (raising its error)."""
        if self.error is not None:
            raise self.error
        fut: asyncio.Future[Event] | None = None
        if wait:
            fut = asyncio.get_running_loop().create_future()
        self._pending.append((self.command(type, message, **kwargs), fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"publish:{self.run_id}")
        if fut is not None:
            return await fut
        if len(self._pending) >= _HIGH_WATER:
            await self.drain()
        return None

    async def drain(self) -> None:
        """Wait until everything queued so far is published; raise the sticky error if any."""
        while self._flusher is not None and not self._flusher.done():
            # `wait`, not `shield`: a flusher that `close` cancelled must not cancel us.
            await asyncio.wait([self._flusher])
        if self.error is not None:
            raise self.error

    async def commit(
        self, cmd: PublishCommand, checkpoint_key: str, field: str, value: str
    ) -> Event | None:
        """Drain, then publish `cmd` only if the checkpoint `field` was not set (and set it)."""
        await self.drain()
        try:
            return await until_redis(
                lambda: self.bus.publish_once(cmd, checkpoint_key, field, value),
                f"run {self.run_id} attempt {self.attempt}: commit {field}",
            )
        except Exception as exc:
            self._fail(exc)
            raise

    def close(self) -> None:
        """Drop whatever is still queued and refuse what comes (fenced, finished, handed back)."""
        if self.error is None:
            self.error = Closed(f"run {self.run_id} attempt {self.attempt}: no longer published")
        flusher = self._flusher
        if flusher is not None and not flusher.done() and flusher is not asyncio.current_task():
            flusher.cancel()  # its batch in flight gets the error too (`_flush`)
        self._refuse(self._pending, self.error)
        self._pending.clear()

    async def _flush(self) -> None:
        while self._pending and self.error is None:
            batch = self._pending[:_BATCH]
            del self._pending[:_BATCH]
            try:
                results = await until_redis(
                    partial(self.bus.publish_raw, [cmd for cmd, _ in batch]),
                    f"run {self.run_id} attempt {self.attempt}: publish",
                )
            except asyncio.CancelledError:
                self._refuse(batch, self.error or Closed(f"run {self.run_id}: publisher stopped"))
                raise
            except Exception as exc:  # not a reply: every event of the batch failed
                results = [exc] * len(batch)
            for (cmd, fut), res in zip(batch, results, strict=True):
                if isinstance(res, Exception):
                    self._fail(res)
                    if fut is not None and not fut.done():
                        fut.set_exception(res)
                elif fut is not None and not fut.done():
                    fut.set_result(cmd.result(res or b""))
        if self.error is not None:
            self._refuse(self._pending, self.error)
            self._pending.clear()

    @staticmethod
    def _refuse(
        entries: list[tuple[PublishCommand, asyncio.Future[Event] | None]], exc: Exception
    ) -> None:
        for _, fut in entries:
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def _fail(self, exc: Exception) -> None:
        if self.error is not None:
            return
        self.error = exc
        logger.info("run %s attempt %d stops publishing: %s", self.run_id, self.attempt, exc)
        if self._on_error is not None:
            self._on_error(exc)
