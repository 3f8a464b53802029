"""Serving the gateway with uvicorn.

On shutdown the open event streams are ended first (each viewer gets a clean end of stream and
reconnects elsewhere with its `Last-Event-ID`), so uvicorn's graceful wait is short rather than
always running into its timeout because SSE responses never finish by themselves.
"""

from __future__ import annotations

import logging
import socket

import uvicorn
from starlette.applications import Starlette

from tidings.settings import Settings

from .app import asgi_app, create_app
from .deadlines import guarded_protocol

__all__ = ["GRACEFUL_SHUTDOWN_S", "configure_logging", "serve"]

GRACEFUL_SHUTDOWN_S = 5


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        ctx = getattr(self._app.state, "ctx", None)
        if ctx is not None:
            ctx.hub.end_viewers()
        await super().shutdown(sockets)


def configure_logging(settings: Settings) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


def serve(
    settings: Settings, *, access_log: bool = False, sockets: list[socket.socket] | None = None
) -> None:
    """Run one gateway process in the foreground until SIGINT/SIGTERM.

    `sockets`: listening sockets to serve on instead of binding `settings.host:port` (the
    processes of `tidings gateway --workers N` each bring their own SO_REUSEPORT socket)."""
    configure_logging(settings)
    app = create_app(settings)
    config = uvicorn.Config(
        asgi_app(app),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=access_log,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
        http=guarded_protocol(settings),  # the fast path, and deadlines for slow clients
        # X-Forwarded-* are read by `access.client_address`, from TIDINGS_TRUSTED_PROXIES only.
        proxy_headers=False,
    )
    _Server(config, app).run(sockets=sockets)
