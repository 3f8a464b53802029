"""The gateway's pub/sub connection on the wire: RESP2 read by hiredis in the protocol callback.

Every event a gateway fans out arrives here first, one small message at a time when runs publish
at a human pace. Read through redis-py's `Connection.read_response`, each message paid for a
waiter future, a task step and the stream reader's layers before the hub saw it; here the bytes
go from `data_received` into a `hiredis.Reader` and each reply is handed on in the same callback
(`tidings bench --only manyruns`, where each event reaches two viewers: 25.1 → 20.0 µs of
gateway CPU per delivery).

The connection is made from the gateway's own Redis client settings (`connection_kwargs` of its
pool: host and port or a unix socket path, TLS for `rediss://`, username and password, the client
name), so it is named like the gateway's other connections. Pub/sub ignores the database number.
Only what a subscriber needs is spoken: AUTH, CLIENT SETNAME, then SUBSCRIBE / UNSUBSCRIBE / PING
written by `PubSubSource`, whose reconnect and confirmation rules are unchanged.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["PubSubWire", "encode_command", "open_wire"]

Reply = Any  # what hiredis returns: bytes, int, a list of them, or a ReplyError
_AUTH_ERRORS = ("NOAUTH", "WRONGPASS", "NOPERM")


def encode_command(args: tuple[str | bytes, ...]) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class PubSubWire(asyncio.Protocol):
    """One raw connection. `on_reply` gets every reply in order; `closed` fails once it is gone."""

    def __init__(self, on_reply: Callable[[Reply], None]) -> None:
        self.on_reply = on_reply
        self.last_rx = 0.0  # loop time of the last bytes received
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.last_rx = self._loop.time()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self._loop.time()
        reader = self._reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                self.on_reply(reply)
        except hiredis.ProtocolError as exc:
            self._fail(RedisConnectionError(f"pub/sub protocol error: {exc}"))
        except Exception as exc:  # a bug past `on_reply`: the session ends loudly, not the loop
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        why = exc or "closed by the server"
        self._fail(RedisConnectionError(f"pub/sub connection lost: {why}"))

    def send(self, *args: str | bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise RedisConnectionError("pub/sub connection is closed")
        self._transport.write(encode_command(args))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._fail(RedisConnectionError("pub/sub connection closed"))

    def _fail(self, exc: Exception) -> None:
        if not self.closed.done():
            self.closed.set_exception(exc)
            self.closed.exception()  # retrieved: nobody need be waiting on it
        if self._transport is not None:
            self._transport.abort()


async def open_wire(
    connection_class: type, kwargs: Mapping[str, Any], timeout: float
) -> PubSubWire:
    """Connect as the gateway's Redis client would, authenticate and name the connection.
    Raises redis-py's `ConnectionError` (or `AuthenticationError`) on failure, `TimeoutError`
    past `timeout`."""
    loop = asyncio.get_running_loop()
    handshake: asyncio.Queue[Reply] = asyncio.Queue()
    wire = PubSubWire(handshake.put_nowait)
    async with asyncio.timeout(timeout):
        try:
            if issubclass(connection_class, UnixDomainSocketConnection):
                await loop.create_unix_connection(lambda: wire, kwargs["path"])
            else:
                host, port = kwargs.get("host", "localhost"), int(kwargs.get("port", 6379))
                tls = _tls_context(kwargs) if issubclass(connection_class, SSLConnection) else None
                await loop.create_connection(
                    lambda: wire, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis for pub/sub: {exc}") from exc
        commands: list[tuple[str, ...]] = []
        password, username = kwargs.get("password"), kwargs.get("username")
        if password:
            commands.append(("AUTH", username, password) if username else ("AUTH", password))
        if name := kwargs.get("client_name"):
            commands.append(("CLIENT", "SETNAME", name))
        try:
            for command in commands:
                wire.send(*command)
            for command in commands:
                reply = await _next(handshake, wire)
                if isinstance(reply, hiredis.ReplyError):
                    refused = command[0] == "AUTH" or str(reply).startswith(_AUTH_ERRORS)
                    raise (AuthenticationError if refused else ResponseError)(
                        f"{command[0]}: {reply}"
                    )
        except BaseException:
            wire.abort()
            raise
    return wire


async def _next(replies: asyncio.Queue[Reply], wire: PubSubWire) -> Reply:
    """The next handshake reply, or the connection's failure."""
    getting = asyncio.ensure_future(replies.get())
    try:
        await asyncio.wait({getting, wire.closed}, return_when=asyncio.FIRST_COMPLETED)
        if getting.done():
            return getting.result()
    finally:
        getting.cancel()  # a no-op once done; else (closed, timed out) nothing is left waiting
    wire.closed.result()  # raises why it closed
    raise RedisConnectionError("pub/sub connection closed")


def _tls_context(kwargs: Mapping[str, Any]) -> ssl.SSLContext:
    """TLS as redis-py's `rediss://` would: verified against `ssl_ca_certs` (else the system's),
    or not verified when `ssl_cert_reqs` is `none`."""
    context = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
    if kwargs.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if kwargs.get("ssl_certfile"):
        context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"))
    return context
