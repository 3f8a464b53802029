"""The gateway's Starlette app: routes, error handling, body limit, and the lifespan that owns the
Redis connections and the fan-out hub.

Route order matters: the streaming routes come first (`/api/runs/events` before
`/api/runs/{run_id}`), then the run control API, the seeds' compatibility routes, and last the
dashboard's static files at `/` (mounted only when `frontend/index.html` exists).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from tidings.bus import Bus
from tidings.catalog import Catalog
from tidings.control import Control
from tidings.redis import connect
from tidings.runs import RunStore, ensure_schema
from tidings.settings import Settings

from . import compat, run_routes, session_routes, stream_routes
from .access import Access
from .cluster_source import ClusterSource
from .context import Gateway
from .dashboard import dashboard
from .edge import Edge
from .errors import BodyLimitMiddleware, exception_handlers
from .fanout import Hub
from .lane import StreamLane
from .limits import Admission
from .metrics import Gauges, Stats, make_registry
from .openapi import openapi
from .presence import Presence
from .source import PubSubSource, Source
from .stream_runs import StreamRuns
from .trim import Trimmer, malloc_trim
from .viewer import ViewerLimits

__all__ = ["FRONTEND_DIR", "asgi_app", "create_app"]

log = logging.getLogger(__name__)

FRONTEND_DIR = Path(__file__).resolve().parents[2] / "frontend"
_HUB_STOP_TIMEOUT_S = 3.0


def create_app(settings: Settings, *, frontend: Path | None = FRONTEND_DIR) -> Starlette:
    """The gateway app for `settings` (which must name a Redis). Connects only when started."""
    if not settings.redis_url:
        raise ValueError("the gateway needs a Redis: set REDIS_URL")
    routes: list[BaseRoute] = [
        *stream_routes.routes,
        Route("/openapi.json", openapi, methods=["GET"]),
        *run_routes.routes,
        *session_routes.routes,
        *compat.routes,
    ]
    if frontend is not None and (frontend / "index.html").is_file():
        routes.append(Mount("/", app=dashboard(frontend), name="frontend"))
    app = Starlette(
        routes=routes,
        middleware=[Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)],
        exception_handlers=exception_handlers(),
        lifespan=partial(_lifespan, settings),
    )
    app.state.settings = settings
    app.state.access = Access(settings)
    return app


def asgi_app(app: Starlette) -> ASGIApp:
    """What a server runs: the streaming lane, which serves the event-stream routes ahead of the
    middleware (`lane.py`), else the edge policy (`edge.py`) in front of `app`. The lane applies
    the same edge policy to the requests it takes."""
    settings: Settings = app.state.settings
    return StreamLane(app, stream_routes.lane, Edge(app, settings))


@asynccontextmanager
async def _lifespan(settings: Settings, app: Starlette) -> AsyncIterator[None]:
    assert settings.redis_url
    # Named, so CLIENT LIST tells a gateway's connections (its pub/sub one included) by process.
    name = f"tidings-gateway:{os.getpid()}"
    redis = connect(settings.redis_url, cluster=settings.redis_cluster, client_name=name)
    keys = settings.keys()
    bus = Bus.from_settings(redis, keys, settings)
    stats = Stats()
    limits = ViewerLimits(
        buffer_events=settings.viewer_buffer,
        buffer_bytes=settings.viewer_buffer_bytes,
        send_timeout=settings.send_timeout_s,
        heartbeat=settings.sse_heartbeat_s,
    )
    # A cluster's channels are sharded: the hub SSUBSCRIBEs each on the primary owning its slot.
    source: Source = (
        ClusterSource.from_url(settings.redis_url, stats)
        if settings.redis_cluster
        else PubSubSource(redis, stats)
    )
    hub = Hub(source, keys, limits=limits, stats=stats)
    gauges = Gauges(
        viewers=hub.count_viewers,
        lifecycle_viewers=partial(hub.count_viewers, lifecycle=True),
        channels=hub.count_channels,
        connected=lambda: hub.connected,
        buffer_limit=settings.viewer_buffer,
    )
    catalog = Catalog(redis, keys)
    control = Control(redis, keys, bus, settings, catalog)
    gateway_id = uuid.uuid4().hex[:12]  # names this process's viewer leases
    presence = Presence(redis, keys, settings, gateway_id)
    stream_runs = StreamRuns(redis, keys, settings, control, gateway_id)
    app.state.ctx = Gateway(
        settings=settings,
        keys=keys,
        redis=redis,
        bus=bus,
        store=RunStore(redis, keys),
        hub=hub,
        control=control,
        catalog=catalog,
        registry=make_registry(stats, gauges),
        admission=Admission(redis, keys, settings),
        presence=presence,
        stream_runs=stream_runs,
    )
    try:
        await ensure_schema(redis, keys)
    except RedisConnectionError:
        # Not fatal: the hub keeps retrying and /readyz says 503 until Redis answers.
        log.warning("Redis unreachable at start-up; schema check skipped")
    hub.start()
    presence.start()
    stream_runs.start()
    trimmer = Trimmer(lambda: gauges.viewers() + gauges.lifecycle_viewers(), malloc_trim(), stats)
    trimming = asyncio.create_task(trimmer.run(), name="tidings-gateway-trim")
    try:
        yield
    finally:
        trimming.cancel("gateway shutting down")
        await asyncio.wait({trimming})
        await stream_runs.close()
        await hub.close(timeout=_HUB_STOP_TIMEOUT_S)
        await presence.close()  # after the streams ended: their leases go in one batch
        await redis.aclose()
