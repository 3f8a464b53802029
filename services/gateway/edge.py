"""The edge: what every request meets before any route, the streaming lane's included.

- **Host allow-list** (`TIDINGS_ALLOWED_HOSTS`, loopback names by default): a request naming
  another host is refused with 400 `host_not_allowed`, so a DNS-rebinding page cannot read the
  API through a name it controls.
- **Origin check** on state-changing methods (anything but GET, HEAD and OPTIONS): a browser
  request from another origin is refused with 403 `cross_origin` unless that origin is in
  `TIDINGS_CORS_ORIGINS`; same-origin requests and clients that send no `Origin` (curl, the CLI)
  pass. With `SameSite=Strict` session cookies this closes cross-site request forgery.
- **CORS**, off by default: origins in `TIDINGS_CORS_ORIGINS` get `Access-Control-Allow-Origin`
  (with credentials) on every answer and preflights answered here; others get no CORS headers.
- **Headers**: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and the
  dashboard's strict Content-Security-Policy on every response that sets none of its own (JSON,
  event streams and error pages included: a browser rendering one runs nothing).

Authorization is not here: each route calls `access.authorize` itself (see `access.py`).
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.settings import Settings

from .dashboard import SECURITY_HEADERS
from .errors import error_response

__all__ = ["Edge", "add_headers", "host_name"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_SECURITY = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
_CORS_METHODS = b"GET, POST, DELETE, OPTIONS"
_CORS_HEADERS = b"Authorization, Content-Type, Last-Event-ID, Idempotency-Key"
_CORS_EXPOSE = b"Location, Retry-After"


def host_name(host: str) -> str:
    """`example.com:8000` → `example.com`; `[::1]:8000` → `::1` (lower case)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


class Edge:
    """ASGI wrapper applying the host, origin, CORS and header policy of `settings`.

    The streaming lane (`lane.py`) applies the same policy through `screen` and `add_headers`
    without a wrapper, so an open event stream keeps no frame of this class."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        hosts = {host_name(h) for h in settings.allowed_hosts.split(",") if h.strip()}
        self.any_host = "*" in hosts
        self.hosts = frozenset(hosts)
        self.origins = frozenset(
            o.strip().rstrip("/").lower() for o in settings.cors_origins.split(",") if o.strip()
        )

    def screen(self, scope: Scope) -> tuple[Response | None, list[tuple[bytes, bytes]], bool]:
        """(the refusal to send, or None; the headers every answer gets; is it a preflight)."""
        host = origin = fetch_site = b""
        preflight = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"sec-fetch-site":
                fetch_site = value
            elif name == b"access-control-request-method":
                preflight = True
        problem = self._refusal(scope, host, origin, fetch_site)
        if problem is not None:
            status, code, message = problem
            refusal = error_response(status, code, message, headers={"Vary": "Origin"})
            return refusal, _SECURITY, False
        cors = self._cors_headers(origin)
        headers = [*_SECURITY, *cors] if cors else _SECURITY
        return None, headers, preflight and scope["method"] == "OPTIONS" and bool(origin)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal, headers, preflight = self.screen(scope)
        if refusal is not None:
            await refusal(scope, receive, _with_headers(send, headers))
        elif preflight:
            await self._preflight(headers, send)
        else:
            await self.app(scope, receive, _with_headers(send, headers))

    def _refusal(
        self, scope: Scope, host: bytes, origin: bytes, fetch_site: bytes
    ) -> tuple[int, str, str] | None:
        name = host_name(host.decode("latin-1"))
        if not self.any_host and name not in self.hosts:
            return 400, "host_not_allowed", "this host name is not served (TIDINGS_ALLOWED_HOSTS)"
        if scope["method"] in _SAFE_METHODS:
            return None
        if origin:
            text = origin.decode("latin-1").lower()
            same = text.partition("://")[2] == host.decode("latin-1").lower()
            if not same and text not in self.origins:
                return 403, "cross_origin", "requests from this origin are not allowed"
        elif fetch_site == b"cross-site":
            return 403, "cross_origin", "cross-site requests are not allowed"
        return None

    def _cors_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        if not origin or origin.decode("latin-1").lower() not in self.origins:
            return []
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-expose-headers", _CORS_EXPOSE),
            (b"vary", b"Origin"),
        ]

    async def _preflight(self, base: list[tuple[bytes, bytes]], send: Send) -> None:
        headers = [*base, (b"content-length", b"0")]
        status = 403
        if len(base) > len(_SECURITY):  # the origin is allowed: `base` carries its CORS headers
            status = 204
            headers += [
                (b"access-control-allow-methods", _CORS_METHODS),
                (b"access-control-allow-headers", _CORS_HEADERS),
                (b"access-control-max-age", b"600"),
            ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def add_headers(headers: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]) -> None:
    """Append to `headers` those of `extra` whose name is not there yet."""
    names = {name.lower() for name, _ in headers}
    headers += [h for h in extra if h[0] not in names]


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            add_headers(headers, extra)
            message["headers"] = headers
        await send(message)

    return sender
