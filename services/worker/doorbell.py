"""The doorbell: the wake channel's messages routed to the dispatcher and to running runs.

Messages (`tidings.jobs`): `job <workflow>:<version> <job id>` offers the job to the dispatcher,
which ignores queues it does not serve; `signal <run id>` makes the run held here read its
signals; anything else just wakes the poller. While the worker stops, jobs are not offered.

Each (re)subscription also registers the worker in `<ns>:workers` (name → ms): the sweeper asks
CLIENT LIST only about registered workers (`liveness`), and a worker cut off long enough to be
taken for gone registers again as soon as it is back. The poller is woken too, for anything
enqueued while the doorbell was not listening.

On a single Redis the doorbell is the one wake channel, SUBSCRIBEd. In a cluster each bucket has
its own, sharded (SPUBLISH by the enqueue script, in the run's slot): `sharded_doorbell` holds
the SSUBSCRIBEs on the primaries owning them and starts over whenever one may have moved.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tidings.events import now_ms

from .context import Engine
from .dispatch import Dispatcher
from .liveness import client_name
from .outage import OUTAGE_ERRORS, OutageNotice
from .sharded_doorbell import ShardedDoorbell

__all__ = ["listen_doorbell", "register", "unregister"]

logger = logging.getLogger(__name__)

_RECONNECT_S = 0.2


async def register(engine: Engine) -> None:
    """Enter this worker in the namespace's registry of workers (see the module docstring)."""
    await engine.redis.hset(engine.keys.workers, engine.name, str(now_ms()))  # type: ignore[misc]


async def unregister(engine: Engine) -> None:
    """Leave the registry (a stopping worker, once it holds nothing)."""
    await engine.redis.hdel(engine.keys.workers, engine.name)  # type: ignore[misc]


async def listen_doorbell(engine: Engine, dispatcher: Dispatcher) -> None:
    if engine.keys.clustered:
        await _listen_sharded(engine, dispatcher)
        return
    outage = OutageNotice("doorbell")
    while True:
        pubsub = engine.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(engine.keys.wake_channel)
            if not engine.closing:
                await register(engine)
            outage.ok()
            dispatcher.wake()  # anything enqueued while we were not listening
            while True:
                msg = await pubsub.get_message(timeout=None)
                if msg is not None:
                    _route(engine, dispatcher, msg["data"])
        except asyncio.CancelledError:
            raise
        except OUTAGE_ERRORS as exc:
            outage.failed(exc)
            await asyncio.sleep(_RECONNECT_S)
        except Exception:
            logger.warning("doorbell connection lost; reconnecting", exc_info=True)
            await asyncio.sleep(_RECONNECT_S)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _listen_sharded(engine: Engine, dispatcher: Dispatcher) -> None:
    async def ready() -> None:
        if not engine.closing:
            await register(engine)
        outage.ok()
        dispatcher.wake()  # anything enqueued while we were not listening

    keys, url = engine.keys, engine.settings.redis_url
    assert url, "a worker needs REDIS_URL"
    bell = ShardedDoorbell(
        url,
        [keys.wake_channel_in(b) for b in keys.bucket_ids],
        client_name(engine.name),
        lambda data: _route(engine, dispatcher, data),
        ready,
    )
    outage = OutageNotice("doorbell")
    while True:
        try:
            await bell.session()
        except asyncio.CancelledError:
            raise
        except OUTAGE_ERRORS as exc:
            outage.failed(exc)
        except Exception:
            logger.warning("doorbell connection lost; reconnecting", exc_info=True)
        dispatcher.wake()  # a session ended: what it may have missed is found by polling
        await asyncio.sleep(_RECONNECT_S)


def _route(engine: Engine, dispatcher: Dispatcher, data: Any) -> None:
    text = data.decode() if isinstance(data, bytes) else str(data)
    kind, _, rest = text.partition(" ")
    if kind == "signal":
        handle = engine.runs.get(rest)
        if handle is not None:
            engine.spawn(handle.signals.poll(), name=f"signals:{rest}")
    elif engine.closing:
        return
    elif kind == "job" and (parts := rest.split(" ")) and len(parts) == 2:
        dispatcher.offer(parts[0], parts[1])
    else:
        dispatcher.wake()
