"""What every route needs, built once by the app's lifespan and kept on `app.state.ctx`."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from starlette.requests import HTTPConnection

from tidings.bus import Bus
from tidings.catalog import Catalog
from tidings.control import Control
from tidings.keys import Keys
from tidings.runs import RunStore
from tidings.settings import Settings

from .fanout import Hub
from .limits import Admission
from .presence import Presence
from .stream_runs import StreamRuns

__all__ = ["Gateway", "gateway"]


@dataclass(slots=True)
class Gateway:
    settings: Settings
    keys: Keys
    redis: Redis
    bus: Bus
    store: RunStore
    hub: Hub
    control: Control
    catalog: Catalog  # the workflows the workers publish; the gateway never imports them
    registry: CollectorRegistry
    admission: Admission
    presence: Presence
    stream_runs: StreamRuns


def gateway(conn: HTTPConnection) -> Gateway:
    """The running app's context (only set while its lifespan is active)."""
    ctx: Gateway = conn.app.state.ctx
    return ctx
