"""The gateway's non-streaming surface and the run-list stream, against a real gateway process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.test_gateway_support import (
    Gateway,
    GatewayFactory,
    events_of,
    wait_for,
)
from tidings.bus import Bus
from tidings.embedded import free_port
from tidings.events import EventType
from tidings.keys import Keys
from tidings.runs import RunStore
from tidings.services.gateway.app import FRONTEND_DIR
from tidings.services.gateway.errors import BodyLimitMiddleware, exception_handlers

JSON = {"Accept": "application/json"}


async def test_json_pages_of_the_log(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory()
    run = await store.create("demo", {"n": 1})
    published = [await bus.publish(run.run_id, EventType.LOG, f"m{i}") for i in range(25)]
    async with gw.client(headers=JSON) as client:
        path = f"/api/runs/{run.run_id}/events"
        pages, after = [], ""
        while True:
            resp = await client.get(
                path, params={"limit": 10, **({"after": after} if after else {})}
            )
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("application/json")
            body = resp.json()
            assert body["run"]["run_id"] == run.run_id and body["run"]["input"] == {"n": 1}
            if not body["events"]:
                assert body["next"] is None
                break
            assert body["next"] == body["events"][-1]["id"]
            assert body["gap"] is False
            pages.append(body["events"])
            after = body["next"]
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [e["id"] for p in pages for e in p] == [e.id for e in published]
        assert [e["seq"] for p in pages for e in p] == list(range(1, 26))
        # Default page size, and the whole event shape.
        body = (await client.get(path)).json()
        assert len(body["events"]) == 25
        assert body["events"][0] == json.loads(published[0].model_dump_json())

        for params, code in (
            ({"limit": 0}, "bad_request"),
            ({"limit": 1001}, "bad_request"),
            ({"limit": "x"}, "bad_request"),
            ({"after": "nope"}, "bad_cursor"),
        ):
            resp = await client.get(path, params=params)
            assert resp.status_code == 400, params
            assert resp.json()["error"]["code"] == code
        resp = await client.get("/api/runs/does-not-exist/events")
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"


async def test_sse_errors_are_json_before_the_stream_starts(
    gateway_factory: GatewayFactory, store: RunStore
) -> None:
    gw = await gateway_factory()
    run = await store.create("demo", None)
    async with gw.client() as client:
        resp = await client.get("/api/runs/nope/events")
        assert resp.status_code == 404
        assert resp.json() == {
            "error": {"code": "not_found", "message": "no run 'nope'", "details": None}
        }
        resp = await client.get(
            f"/api/runs/{run.run_id}/events", headers={"Last-Event-ID": "12-ab"}
        )
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_cursor"
        resp = await client.get("/api/runs/bad%20id/events")
        assert resp.status_code == 404
        resp = await client.get("/no/such/path")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        resp = await client.delete("/healthz")
        assert resp.status_code == 405
        assert resp.json()["error"]["code"] == "method_not_allowed"


async def test_run_record_counts_this_gateways_viewers(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory()
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go", progress=5)
    async with gw.client() as client:

        async def viewers_are(n: int) -> bool:
            resp = await client.get(f"/api/runs/{run.run_id}")
            assert resp.status_code == 200
            return bool(resp.json()["viewers"] == n)

        record = (await client.get(f"/api/runs/{run.run_id}")).json()
        assert record["status"] == "running" and record["progress"] == 5
        assert record["viewers"] == 0 and record["workflow"] == "demo"
        streams = [await gw.stream(f"/api/runs/{run.run_id}/events") for _ in range(2)]
        await wait_for(lambda: viewers_are(2), "two viewers")
        streams[0].close()
        await wait_for(lambda: viewers_are(1), "one viewer left")
        streams[1].close()
        await wait_for(lambda: viewers_are(0), "no viewers left")
        assert (await client.get("/api/runs/missing")).status_code == 404


async def test_head_on_a_live_stream_answers_headers_and_frees_the_connection(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    """HEAD is what GET would answer, without the body: a live stream's body never ends, so the
    answer must end at the headers, leave the keep-alive connection usable and hold no viewer."""
    gw = await gateway_factory()
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    async with gw.client() as client:
        for path in (
            f"/api/runs/{run.run_id}/events",
            f"/api/streams?run={run.run_id}",
            "/api/streams?feed=runs",
            "/monty/stream",  # a GET starts a monty run; a HEAD must not
        ):
            head = await client.head(path, headers={"Accept": "text/event-stream"})
            assert head.status_code == 200, path
            assert head.headers["content-type"].startswith("text/event-stream"), path
            assert head.content == b""
            # the kept-alive connection the HEAD went over answers the next request
            assert (await client.get("/healthz")).status_code == 200, path
        record = (await client.get(f"/api/runs/{run.run_id}")).json()
        assert record["viewers"] == 0
        monty = (await client.get("/api/runs", params={"workflow": "monty"})).json()
        assert monty["runs"] == []


async def test_run_list_stream_starts_with_a_snapshot_then_live_summaries(
    gateway_factory: GatewayFactory, bus: Bus, store: RunStore
) -> None:
    gw = await gateway_factory()
    older = []
    for i in range(3):
        older.append(await store.create("demo", {"i": i}))
        await asyncio.sleep(0.005)  # distinct creation times: a defined newest-first order
    stream = await gw.stream("/api/runs/events")
    try:
        [snapshot] = await stream.take(1)
        assert snapshot.event == "snapshot"
        runs = json.loads(snapshot.data)["runs"]
        assert [r["run_id"] for r in runs] == [r.run_id for r in reversed(older)]
        assert all(r["status"] == "queued" and r["workflow"] == "demo" for r in runs)

        await wait_for(lambda: _lifecycle_viewers(gw, 1), "the list viewer")
        new = await store.create("other", None)
        await bus.publish(new.run_id, EventType.WORKFLOW_STARTED, "go")
        await bus.publish(new.run_id, EventType.TASK_PROGRESS, progress=50)
        await bus.publish(new.run_id, EventType.WORKFLOW_COMPLETED, "done")
        summaries = [json.loads(m.data) for m in await stream.take(4)]
        assert all(s["run_id"] == new.run_id for s in summaries)
        assert [s["status"] for s in summaries] == ["queued", "running", "running", "completed"]
        assert summaries[2]["progress"] == 50
    finally:
        stream.close()


async def _lifecycle_viewers(gw: Gateway, n: int) -> bool:
    return (await gw.metrics())["tidings_gateway_lifecycle_viewers"] == n


async def test_json_page_flags_a_cursor_older_than_the_trimmed_log(
    gateway_factory: GatewayFactory, redis: Redis, keys: Keys, store: RunStore
) -> None:
    gw = await gateway_factory()
    bus = Bus(redis, keys, maxlen=10)
    run = await store.create("demo", None)
    first = await bus.publish(run.run_id, EventType.LOG, "first")
    for i in range(250):
        await bus.publish(run.run_id, EventType.LOG, str(i))
    async with gw.client(headers=JSON) as client:
        body = (await client.get(f"/api/runs/{run.run_id}/events?after={first.id}")).json()
        assert body["gap"] is True and body["events"][0]["seq"] > 2
        body = (await client.get(f"/api/runs/{run.run_id}/events?after={body['next']}")).json()
        assert body["gap"] is False


async def test_an_idle_stream_gets_comment_heartbeats(
    gateway_factory: GatewayFactory, store: RunStore
) -> None:
    gw = await gateway_factory(sse_heartbeat_s=0.1, sse_retry_ms=1234)
    run = await store.create("demo", None)
    stream = await gw.stream(f"/api/runs/{run.run_id}/events")
    try:
        while len(stream.parser.comments) < 2:
            assert await stream.recv() == []  # nothing but comments on an idle run
        assert stream.parser.comments[:2] == ["ping", "ping"]
        assert stream.parser.retry == 1234
    finally:
        stream.close()


async def test_the_dashboard_is_served_at_the_root(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    async with gw.client() as client:
        resp = await client.get("/")
    if not (FRONTEND_DIR / "index.html").is_file():
        assert resp.status_code == 404
        return
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert resp.text == (FRONTEND_DIR / "index.html").read_text()


async def test_health_readiness_and_metrics(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    async with gw.client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "redis": True, "pubsub": True}
        resp = await client.get("/metrics")
        assert resp.headers["content-type"].startswith("text/plain")
    metrics = await gw.metrics()
    for name in (
        "tidings_gateway_viewers",
        "tidings_gateway_events_received_total",
        "tidings_gateway_sse_bytes_total",
        "tidings_gateway_sse_messages_total",
        "tidings_gateway_catchups_total",
        "tidings_gateway_slow_disconnects_total",
        "tidings_gateway_pubsub_reconnects_total",
        "tidings_gateway_viewer_buffer_max",
        "process_resident_memory_bytes",
    ):
        assert name in metrics, name


async def test_oversized_bodies_get_413_json(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(max_body_bytes=2048)
    big = json.dumps({"workflow": "demo", "input": {"x": "z" * 5000}}).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    async with gw.client() as client:
        for content in (big, chunked()):
            resp = await client.post("/api/runs", content=content)
            assert resp.status_code == 413
            assert resp.json()["error"]["code"] == "body_too_large"


async def test_a_client_that_sends_its_whole_oversized_body_reads_the_413(
    gateway_factory: GatewayFactory,
) -> None:
    """A refused body is read to its end before the answer: closing with unread bytes makes the
    kernel reset the connection, and a client that writes before it reads (httpx, most) would
    get the reset instead of the 413."""
    gw = await gateway_factory(max_body_bytes=1_048_576)
    big = b'{"workflow": "research", "input": {"topic": "' + b"t" * 1_200_000 + b'"}}'

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]

    for attempt in range(20):
        async with gw.client(headers={"Content-Type": "application/json"}) as client:
            content = big if attempt % 2 else chunked()
            resp = await client.post("/api/runs", content=content)
        assert resp.status_code == 413, attempt
        assert resp.json()["error"]["code"] == "body_too_large"


async def test_body_limit_middleware_counts_chunked_bodies_as_they_are_read() -> None:
    """The middleware on its own, under a real server, with a route that reads the body."""

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await request.body())})

    app = Starlette(
        routes=[Route("/echo", echo, methods=["POST"])],
        middleware=[Middleware(BodyLimitMiddleware, max_bytes=1024)],
        exception_handlers=exception_handlers(),
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started, "the test server")

        def body(size: int) -> AsyncIterator[bytes]:
            async def gen() -> AsyncIterator[bytes]:
                for _ in range(size // 256):
                    yield b"a" * 256

            return gen()

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            ok = await client.post("/echo", content=body(1024))
            assert ok.status_code == 200 and ok.json() == {"size": 1024}
            resp = await client.post("/echo", content=body(4096))
            assert resp.status_code == 413
            assert resp.json()["error"]["code"] == "body_too_large"
            resp = await client.post("/echo", content=b"b" * 2000)
            assert resp.status_code == 413
    finally:
        server.should_exit = True
        await serving


async def test_seed_compat_streams_use_the_same_machinery(
    gateway_factory: GatewayFactory, redis: Redis, keys: Keys, store: RunStore, bus: Bus
) -> None:
    """`stream_run` with a custom render: the seed-000 stream carries the same events."""
    gw = await gateway_factory()
    run = await store.create("demo", None)
    await bus.publish(run.run_id, EventType.WORKFLOW_STARTED, "go")
    await bus.publish(run.run_id, EventType.WORKFLOW_COMPLETED, "done")
    stream = await gw.stream(f"/api/v1/workflows/{run.run_id}/stream")
    messages = await stream.read_to_end()
    stream.close()
    assert stream.ended
    named = [m for m in messages if m.event != "message"]
    assert [m.event for m in named] == ["workflow_started", "workflow_completed"]
    native = await gw.stream(f"/api/runs/{run.run_id}/events")
    assert [m.id for m in named] == [e["id"] for e in events_of(await native.read_to_end())]
    native.close()
