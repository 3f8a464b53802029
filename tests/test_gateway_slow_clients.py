"""Slow clients: a request head or body that does not arrive in time costs a connection only
until its deadline (`services/gateway/deadlines.py`), and nothing else is cut.

The guard overrides uvicorn's httptools protocol callbacks and reads its per-connection state;
`test_the_uvicorn_internals_the_guard_relies_on_are_there` fails loudly if an installed uvicorn
moves them, and the behaviour is checked on an in-process uvicorn (asyncio loop) with short
deadlines and on a real gateway process (uvloop), over raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from tests.test_gateway_support import GatewayFactory, wait_for
from tidings.bus import Bus
from tidings.embedded import free_port
from tidings.events import EventType
from tidings.runs import RunStore
from tidings.services.gateway.deadlines import GuardedProtocol, guarded_protocol
from tidings.settings import Settings

DEADLINE = 0.5  # seconds, for the in-process server
GENEROUS = 10.0  # no assertion on timing is tighter than this


class _App:
    """Echoes a request's body once it has it all; `/slow-read` waits before reading, `/stream`
    streams for a while without reading anything, `/early` answers before reading the body."""

    def __init__(self) -> None:
        self.disconnects = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(6):
                await asyncio.sleep(DEADLINE / 2)
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/early":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        if path == "/slow-read":
            await asyncio.sleep(DEADLINE * 3)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if path == "/early":
            await send({"type": "http.response.body", "body": b""})
            return
        reply = b"%d" % len(body)
        headers = [(b"content-length", str(len(reply)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})


@contextlib.asynccontextmanager
async def _serve(app: Any) -> AsyncIterator[int]:
    settings = Settings(header_timeout_s=DEADLINE, body_timeout_s=DEADLINE)
    port = free_port()
    config = uvicorn.Config(
        app, port=port, http=guarded_protocol(settings), log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, "the server")
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _until_closed(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), GENEROUS)
    return data, time.monotonic() - started


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _error(response: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.partition(b"\r\n\r\n")[2])["error"]
    return body


def test_the_uvicorn_internals_the_guard_relies_on_are_there() -> None:
    """What `deadlines.py` overrides and reads, on the installed uvicorn."""
    for name in (
        "connection_made",
        "connection_lost",
        "on_message_begin",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
        "data_received",
        "on_url",
        "on_header",
        "send_400_response",
    ):
        assert callable(getattr(HttpToolsProtocol, name)), name
        assert getattr(GuardedProtocol, name) is not getattr(HttpToolsProtocol, name), name
    init = inspect.getsource(HttpToolsProtocol.__init__)
    for attribute in ("self.loop", "self.cycle", "self.flow", "self.transport", "server_state"):
        assert attribute in init, attribute
    assert "read_paused" in inspect.getsource(FlowControl.__init__)
    cycle = inspect.getsource(RequestResponseCycle.__init__)
    for attribute in (
        "self.response_started",
        "self.response_complete",
        "self.waiting_for_100_continue",
        "self.disconnected",
        "self.message_event",
    ):
        assert attribute in cycle, attribute
    # What `connection_lost` does with the cycle is what `_give_up` does.
    lost = inspect.getsource(HttpToolsProtocol.connection_lost)
    assert "self.cycle.disconnected = True" in lost and "message_event.set()" in lost
    assert "default_headers" in inspect.getsource(HttpToolsProtocol.send_400_response)
    # A callback's exception comes out of the parser as an HttpParserError, which uvicorn
    # answers with `send_400_response` (where the 431 is made).
    received = inspect.getsource(HttpToolsProtocol.data_received)
    assert "except httptools.HttpParserError" in received and "send_400_response" in received


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer() -> None:
    async with _serve(_App()) as port:
        reader, writer = await _connect(port)
        data, took = await _until_closed(reader)
        writer.close()
    assert data == b""
    assert took >= DEADLINE * 0.8


async def test_a_partial_request_head_gets_408_and_is_closed() -> None:
    async with _serve(_App()) as port:
        for partial in (b"G", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Le"):
            reader, writer = await _connect(port)
            writer.write(partial)
            data, took = await _until_closed(reader)
            writer.close()
            assert _status(data) == 408, data
            assert b"connection: close" in data.lower()
            assert _error(data)["code"] == "request_timeout"
            assert took >= DEADLINE * 0.8


async def test_an_oversized_head_gets_431_and_the_client_reads_it() -> None:
    limit = Settings.model_fields["max_header_bytes"].default
    async with _serve(_App()) as port:
        reader, writer = await _connect(port)
        # A header that never ends: the server answers once the head passes the limit, and
        # reads what the client still sends, so the answer is not lost to a reset.
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * limit))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), GENEROUS)
        writer.close()
    assert _status(data) == 431, data[:200]
    assert _error(data)["code"] == "headers_too_large"


async def test_a_big_head_that_comes_whole_in_one_read_gets_431_too() -> None:
    limit = Settings.model_fields["max_header_bytes"].default
    async with _serve(_App()) as port:
        for line in (b"X-Big: " + b"a" * (2 * limit), b"/" + b"p" * (2 * limit)):
            reader, writer = await _connect(port)
            if line.startswith(b"/"):
                writer.write(b"GET " + line + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            else:
                writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), GENEROUS)
            writer.close()
            assert _status(data) == 431, data[:200]
        # Many headers, each small, count together.
        reader, writer = await _connect(port)
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(limit // 200))
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        data = await asyncio.wait_for(reader.read(), GENEROUS)
        writer.close()
        assert _status(data) == 431
        # A head under the limit is served.
        reader, writer = await _connect(port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Ok: " + b"o" * (limit // 2) + b"\r\n\r\n")
        data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GENEROUS)
        writer.close()
        assert _status(data) == 200


async def test_a_big_body_right_after_its_head_is_not_taken_for_a_big_head() -> None:
    """A read that completes a head carries its body's first bytes too."""
    body = b"b" * (3 * Settings.model_fields["max_header_bytes"].default)
    async with _serve(_App()) as port:
        reader, writer = await _connect(port)
        head = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        writer.write(head + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.readuntil(str(len(body)).encode()), GENEROUS)
        writer.close()
    assert _status(data) == 200


async def test_a_head_sent_a_byte_at_a_time_is_cut_at_its_deadline() -> None:
    """Each byte on time is not enough: the head as a whole has a deadline."""
    async with _serve(_App()) as port:
        reader, writer = await _connect(port)
        head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100 + b"\r\n\r\n"
        started = time.monotonic()
        answer = b""
        for byte in head:
            writer.write(bytes([byte]))
            try:  # a tenth of the deadline between bytes
                answer = await asyncio.wait_for(reader.read(65536), DEADLINE / 10)
                break
            except TimeoutError:
                continue
        answer += (await _until_closed(reader))[0]
        writer.close()
    assert _status(answer) == 408
    assert time.monotonic() - started < GENEROUS


async def test_a_stalled_body_gets_408_and_the_app_sees_the_client_go() -> None:
    app = _App()
    async with _serve(app) as port:
        reader, writer = await _connect(port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
        data, took = await _until_closed(reader)
        writer.close()
        await wait_for(lambda: app.disconnects == 1, "the app to see the disconnect")
    assert _status(data) == 408 and _error(data)["code"] == "request_timeout"
    assert took >= DEADLINE * 0.8


async def test_a_body_stalled_after_the_response_began_is_just_closed() -> None:
    async with _serve(_App()) as port:
        reader, writer = await _connect(port)
        writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        data, _ = await _until_closed(reader)
        writer.close()
    assert _status(data) == 200 and b"408" not in data


async def test_slow_steady_bodies_slow_apps_and_long_responses_are_not_cut() -> None:
    async with _serve(_App()) as port:
        # A body trickling in, each piece within the deadline, for several deadlines.
        reader, writer = await _connect(port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):
            await asyncio.sleep(DEADLINE / 2)
            writer.write(b"a")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GENEROUS)
        assert _status(head) == 200
        assert await reader.readexactly(1) == b"8"

        # The same connection, kept alive: a second request on it is served.
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GENEROUS)
        assert _status(head) == 200 and await reader.readexactly(1) == b"3"
        writer.close()

        # An app that takes its time before reading a large body: the gateway not reading is
        # not the client stalling.
        reader, writer = await _connect(port)
        size = 4 * 2**20
        writer.write(b"POST /slow-read HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"b" * size)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GENEROUS)
        assert _status(head) == 200
        assert await reader.readexactly(len(str(size))) == str(size).encode()
        writer.close()

        # A client waiting for `100 Continue` while the app has not asked for the body yet.
        reader, writer = await _connect(port)
        writer.write(
            b"POST /slow-read HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GENEROUS)
        assert _status(interim) == 100
        writer.write(b"abcd")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GENEROUS)
        assert _status(head) == 200 and await reader.readexactly(1) == b"4"
        writer.close()

        # A response that streams for several deadlines while the client sends nothing.
        reader, writer = await _connect(port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, _ = await _until_closed(reader)
        writer.close()
        assert _status(data) == 200 and data.count(b"tick") == 6


async def test_the_gateway_process_cuts_slow_heads_and_bodies_and_serves_the_rest(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory(header_timeout_s=1, body_timeout_s=1, sse_heartbeat_s=0.3)
    # A partial head: 408, then closed.
    reader, writer = await _connect(gw.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-")
    data, _ = await _until_closed(reader)
    writer.close()
    assert _status(data) == 408 and _error(data)["code"] == "request_timeout"
    # A stalled body: 408, then closed.
    reader, writer = await _connect(gw.port)
    writer.write(
        b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50\r\n\r\n{"
    )
    data, _ = await _until_closed(reader)
    writer.close()
    assert _status(data) == 408
    # Meanwhile everything else is served: an event stream outlives both deadlines.
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    stream = await gw.stream(f"/api/runs/{run.run_id}/events")
    assert stream.status == 200
    await stream.take(1)
    await asyncio.sleep(2.5)
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    rest = await asyncio.wait_for(stream.read_to_end(), GENEROUS)
    assert [m.event for m in rest if m.event] == ["workflow_completed"]
    assert stream.ended and not stream.eof
    stream.close()
    async with gw.client() as client:
        assert (await client.get("/healthz")).status_code == 200
    assert "Traceback" not in gw.log()
