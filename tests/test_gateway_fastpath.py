"""The hub's fast path (chunks written straight to transports), its fallback, and its bounds.

The fast path rests on uvicorn's httptools protocol building each scope in `on_message_begin`
and framing a streamed body as `transfer-encoding: chunked`; these tests fail loudly if an
installed uvicorn stops doing either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
import uvicorn
from redis.asyncio import Redis

from tests.conftest import CLUSTER
from tests.test_gateway_support import GatewayFactory, RawStream, events_of, wait_for
from tidings.bus import Bus
from tidings.embedded import free_port
from tidings.events import EventType
from tidings.keys import Keys
from tidings.runs import RunStore
from tidings.services.gateway.app import asgi_app, create_app
from tidings.services.gateway.fastpath import EXTENSION, HttpToolsProtocol, stream_transport
from tidings.settings import Settings


async def test_live_events_reach_quiet_viewers_by_direct_writes_with_valid_chunking(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory()
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    streams = [await gw.stream(f"/api/runs/{run.run_id}/events") for _ in range(20)]
    for s in streams:
        assert s.headers["transfer-encoding"] == "chunked"
        await s.take(1)  # caught up: from now on the viewer is quiet
    readers = [asyncio.create_task(s.read_to_end()) for s in streams]
    for i in range(50):
        await bus.publish(run.run_id, EventType.TASK_PROGRESS, f"step {i}", progress=i)
        await asyncio.sleep(0.002)  # paced, as a live run publishes
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    received = await asyncio.wait_for(asyncio.gather(*readers), timeout=30)
    for messages in received:
        assert [e["seq"] for e in events_of(messages)] == list(range(2, 53))
    assert all(s.ended and not s.eof for s in streams)  # a finished response, not a drop
    metrics = await gw.metrics()
    # Every live event went to every viewer straight from the dispatch loop.
    assert metrics["tidings_gateway_direct_writes_total"] >= 20 * 51
    for s in streams:
        s.close()


class _Recorder:
    """An ASGI app that keeps the transport `stream_transport` finds for each request."""

    def __init__(self) -> None:
        self.found: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.found.append(stream_transport(scope))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        transport = self.found[-1]
        if transport is not None:
            # What the hub does: a chunk written around the ASGI send, then the end via send.
            transport.write(b"5\r\nhello\r\n")
        else:
            await send({"type": "http.response.body", "body": b"hello", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@contextlib.asynccontextmanager
async def _serve(app: Any, http: Any) -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(app, port=port, http=http, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, "the server")
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_the_protocol_offers_the_transport_only_where_chunks_are_the_framing() -> None:
    app = _Recorder()
    async with _serve(app, HttpToolsProtocol) as port:
        get11 = await _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = await _raw(port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        get10 = await _raw(port, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    assert app.found[0] is not None and app.found[1] is None and app.found[2] is None
    # uvicorn framed the body as chunks, so the directly written chunk and its own final one
    # make one valid body.
    assert b"transfer-encoding: chunked" in get11.lower()
    assert get11.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and get10.startswith(b"HTTP/1.1 200")


async def test_uvicorns_own_protocols_offer_no_transport() -> None:
    for http in ("h11", "httptools"):
        app = _Recorder()
        async with _serve(app, http) as port:
            await _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert app.found == [None]
        assert EXTENSION == "tidings.transport"


async def test_without_the_fast_path_streams_are_complete_and_gapless(
    redis_url: str, namespace: str, bus: Bus, store: RunStore
) -> None:
    """The gateway app under plain uvicorn (h11): every write takes the ASGI path."""
    settings = Settings(
        redis_url=redis_url, namespace=namespace, redis_cluster=CLUSTER, sse_heartbeat_s=0.2
    )
    app = asgi_app(create_app(settings, frontend=None))
    port = free_port()
    config = uvicorn.Config(app, port=port, http="h11", log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, "the server")
        run = await store.create("demo", None)
        await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
        streams = [await RawStream.open(port, f"/api/runs/{run.run_id}/events") for _ in range(5)]
        readers = [asyncio.create_task(s.read_to_end()) for s in streams]
        for i in range(100):
            await bus.publish(run.run_id, EventType.LOG, str(i))
        await asyncio.sleep(0.5)  # idle long enough for heartbeats
        await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
        received = await asyncio.wait_for(asyncio.gather(*readers), timeout=30)
        for messages in received:
            assert [e["seq"] for e in events_of(messages)] == list(range(1, 103))
        assert all(s.ended and not s.eof for s in streams)
        for s in streams:
            s.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.mark.slow
async def test_a_stalled_viewer_is_bounded_in_bytes_and_costs_a_reading_viewer_nothing(
    gateway_factory: GatewayFactory, redis: Redis, keys: Keys, store: RunStore
) -> None:
    # Far more events allowed than bytes: the byte bound is what holds the buffer.
    gw = await gateway_factory(viewer_buffer=100_000, viewer_buffer_bytes=32_768)
    bus = Bus(redis, keys, maxlen=100_000)
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    stalled = await gw.stream(f"/api/runs/{run.run_id}/events", rcvbuf=4096)
    reading = await gw.stream(f"/api/runs/{run.run_id}/events")
    await stalled.take(1)
    await reading.take(1)
    reader = asyncio.create_task(reading.read_to_end())
    rss_before = psutil.Process(gw.proc.pid).memory_info().rss

    payload = "z" * 1000
    for start in range(0, 3000, 100):
        await asyncio.gather(
            *(bus.publish(run.run_id, EventType.LOG, payload) for _ in range(start, start + 100))
        )
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    # The reading viewer finishes while the other still reads nothing at all.
    fast = await asyncio.wait_for(reader, timeout=30)
    assert [e["seq"] for e in events_of(fast)] == list(range(2, 3003))

    metrics = await gw.metrics()
    assert metrics["tidings_gateway_overflows_total"] >= 1
    # ~1.1 KB per buffered event: 32 KiB hold fewer than 32 of them.
    assert 1 <= metrics["tidings_gateway_viewer_buffer_max"] <= 32
    grown = psutil.Process(gw.proc.pid).memory_info().rss - rss_before
    assert grown < 20 * 2**20, f"gateway RSS grew by {grown / 2**20:.1f} MiB"

    rest = await asyncio.wait_for(stalled.read_to_end(), timeout=60)
    assert [e["seq"] for e in events_of(rest)] == list(range(2, 3003))
    for s in (stalled, reading):
        s.close()


async def test_events_read_from_redis_at_once_reach_each_viewer_in_one_write(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory()
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    streams = [await gw.stream(f"/api/runs/{run.run_id}/events") for _ in range(10)]
    for s in streams:
        await s.take(1)
    readers = [asyncio.create_task(s.read_to_end()) for s in streams]
    before = await gw.metrics()
    # One pipelined round trip: the gateway reads these pub/sub messages in one go.
    commands = [bus.command(run.run_id, EventType.LOG, str(i)) for i in range(200)]
    assert not [o for o in await bus.publish_many(commands) if isinstance(o, Exception)]
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    for messages in await asyncio.wait_for(asyncio.gather(*readers), 30):
        assert [e["seq"] for e in events_of(messages)] == list(range(2, 203))
    after = await gw.metrics()
    written = (
        after["tidings_gateway_direct_writes_total"] - before["tidings_gateway_direct_writes_total"]
    )
    writes = (
        after["tidings_gateway_socket_writes_total"] - before["tidings_gateway_socket_writes_total"]
    )
    assert written == 10 * 201
    assert writes < written / 4  # batches, not a write per event per viewer
    for s in streams:
        s.close()
