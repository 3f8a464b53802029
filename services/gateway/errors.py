"""Every error leaves the gateway as JSON: `{"error": {"code", "message", "details"}}`.

- `TidingsError` subclasses keep their own status and code (`InvalidInput` carries the pydantic
  field errors as `details`).
- Starlette's `HTTPException` (unknown path, wrong method) gets a code derived from its status.
  A 405's `Allow` names every method the path takes: Starlette's router names only the methods
  of the first route that matched the path (`/api/runs` is two routes, GET and POST), and a path
  it does not claim at all falls through to the dashboard's static files.
- Messages are cut short and lone surrogates escaped (`tidings.echo`): a message may quote the
  request, and an error must always be encodable.
- A client that goes away while its body is read is not an error of ours: logged at debug.
- Redis being unreachable is a 503 with `Retry-After`, not a 500: the request may simply be retried.
  Redis at its memory cap (an OOM reply) is a 503 `storage_full`, also with `Retry-After`.
- Anything else is logged with its traceback and answered with a bare 500.
- `BodyLimitMiddleware` caps request bodies at `max_body_bytes`: a declared `Content-Length` over
  the cap is refused before the app runs; a chunked body is counted as it is read and the read
  that crosses the cap raises `BodyTooLarge` (413).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings import codec
from tidings.echo import echo_text
from tidings.errors import InvalidInput, StorageFull, TidingsError

__all__ = [
    "BadRequest",
    "BodyLimitMiddleware",
    "BodyTooLarge",
    "Unavailable",
    "error_body",
    "error_response",
    "exception_handlers",
    "handle_exception",
]

log = logging.getLogger(__name__)


class BadRequest(TidingsError):
    """A query parameter or header the API cannot use."""

    code = "bad_request"
    status = 400


class BodyTooLarge(TidingsError):
    code = "body_too_large"
    status = 413


class Unavailable(TidingsError):
    code = "unavailable"
    status = 503


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return codec.dumps(content)
        except ValueError:
            # Something UTF-8 cannot hold (a lone surrogate): ASCII JSON escapes it instead.
            return json.dumps(content, default=repr).encode()


_MESSAGE_CHARS = 500


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    message = echo_text(message, _MESSAGE_CHARS)
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return _JSON(error_body(code, message, details), status_code=status, headers=headers)


def _status_code_name(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


async def _tidings_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TidingsError)
    details = exc.errors if isinstance(exc, InvalidInput) else exc.details
    return error_response(exc.status, exc.code, str(exc) or exc.code, details, exc.headers)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail or HTTPStatus(exc.status_code).phrase
    headers = exc.headers
    if exc.status_code == 405:
        headers = _allow(request, headers)
    return error_response(
        exc.status_code, _status_code_name(exc.status_code), message, headers=headers
    )


def _allow(request: Request, headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """`headers` with `Allow` naming the methods of every route of the app that takes this path
    (None of them: the response's own `Allow`, e.g. the static files' GET, HEAD)."""
    methods: set[str] = set()
    for route in getattr(request.app, "routes", ()):
        on_path = isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE
        if on_path and route.methods:
            methods |= route.methods
    if not methods:
        return headers
    others = {k: v for k, v in (headers or {}).items() if k.lower() != "allow"}
    return {**others, "Allow": ", ".join(sorted(methods))}


async def _client_gone(request: Request, exc: Exception) -> Response:
    log.debug("%s %s: the client went away", request.method, request.url.path)
    return error_response(400, "client_disconnected", "the client went away mid-request")


async def _redis_down(request: Request, exc: Exception) -> Response:
    log.warning("%s %s: redis unreachable: %s", request.method, request.url.path, exc)
    return error_response(
        503, Unavailable.code, "storage is unreachable; retry shortly", headers={"Retry-After": "1"}
    )


async def _redis_full(request: Request, exc: Exception) -> Response:
    log.warning("%s %s: redis is out of memory: %s", request.method, request.url.path, exc)
    full = StorageFull("storage is full; retry later, or free space with `tidings prune`")
    return await _tidings_error(request, full)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal server error")


_HANDLERS: dict[type[Exception], Any] = {
    TidingsError: _tidings_error,
    HTTPException: _http_exception,
    ClientDisconnect: _client_gone,
    RedisConnectionError: _redis_down,
    RedisTimeoutError: _redis_down,
    RedisOutOfMemoryError: _redis_full,
    Exception: _unexpected,
}


def exception_handlers() -> dict[Any, Any]:
    return dict(_HANDLERS)


async def handle_exception(request: Request, exc: Exception) -> Response:
    """The JSON error response the app's handlers give `exc` (for code outside the app's stack)."""
    for cls in type(exc).__mro__:
        handler = _HANDLERS.get(cls)
        if handler is not None:
            response: Response = await handler(request, exc)
            return response
    raise exc  # not an Exception subclass: never caught here


# A refused body is read to its end, up to this much, before the 413 goes out: a client that
# writes its whole body before it reads (most do) would otherwise meet a connection reset (the
# kernel's answer to a socket closed with unread bytes) instead of the 413.
_DRAIN_LIMIT = 16 * 1024 * 1024


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with a 413 JSON error, declared or chunked. The
    refused body is read and dropped first (up to 16 MiB, within the body deadline), so the
    client gets its 413 rather than a reset connection."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _drain(receive, declared)
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive, _DRAIN_LIMIT)
                    raise BodyTooLarge(self._message())
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            # Only reached when no handler inside turned it into a response already.
            if started:
                raise
            await self._refuse(scope, receive, send)

    def _message(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, BodyTooLarge.code, self._message(), headers={"Connection": "close"}
        )
        await response(scope, receive, send)


async def _drain(receive: Receive, expected: int) -> None:
    """Read and drop the rest of a request body: up to `expected` bytes and at most
    `_DRAIN_LIMIT`, stopping at its end or at a disconnect."""
    budget = min(expected, _DRAIN_LIMIT)
    while budget >= 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
