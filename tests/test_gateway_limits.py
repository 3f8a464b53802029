"""Per-client limits on real gateway processes sharing one Redis: runs started per minute,
unfinished runs, open event streams (viewer leases), and `Idempotency-Key` on `POST /api/runs`.

No worker runs here unless a test starts one: runs stay queued, which is what "unfinished" needs.
The gateways trust 127.0.0.1 as a proxy, so `X-Forwarded-For` makes a second client in open
mode (every caller is `addr:<ip>` there)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from redis.asyncio import Redis

from tests.test_gateway_support import Gateway, GatewayFactory, RawStream, wait_for
from tidings.keys import Keys
from tidings.runs import RunStore

ME = "addr:127.0.0.1"
OTHER = {"X-Forwarded-For": "10.9.8.7"}  # another client, through the trusted proxy
EVENT_STREAM = {"Accept": "text/event-stream"}
QUEUED = {"workflow": "monty", "input": {"min_sleep_s": 1, "max_sleep_s": 2}}


async def two_gateways(gateway_factory: GatewayFactory, **settings: Any) -> list[Gateway]:
    return [await gateway_factory(trusted_proxies="127.0.0.1", **settings) for _ in range(2)]


async def start(gw: Gateway, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    async with gw.client(headers=headers) as client:
        return await client.post("/api/runs", json=kw.pop("json", QUEUED), **kw)


async def run_count(store: RunStore) -> int:
    """Runs in the history index, every bucket's."""
    keys = store.keys
    return sum([int(await store.redis.zcard(keys.runs_in(b))) for b in keys.bucket_ids])


def assert_limited(resp: httpx.Response, code: str, limit: int) -> dict[str, Any]:
    """A 429 in the API's error shape, with a usable Retry-After."""
    assert resp.status_code == 429, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["details"]["limit"] == limit
    retry = int(resp.headers["retry-after"])
    assert retry >= 1 and error["details"]["retry_after_s"] == retry
    return error


async def test_runs_per_minute_hold_across_gateways_and_per_client(
    gateway_factory: GatewayFactory, store: RunStore
) -> None:
    a, b = await two_gateways(gateway_factory, runs_per_minute=3)
    started = [await start(gw) for gw in (a, b, a)]
    assert [r.status_code for r in started] == [201, 201, 201]
    assert {r.json()["owner"] for r in started} == {ME}  # recorded on the run
    for gw in (b, a):
        error = assert_limited(await start(gw), "too_many_starts", 3)
        assert error["details"]["setting"] == "TIDINGS_RUNS_PER_MINUTE"
        assert error["details"]["client"] == ME
        assert 1 <= int(error["details"]["retry_after_s"]) <= 60
    # Nothing was started by the refused requests; another client has its own window.
    assert await run_count(store) == 3
    assert (await start(b, headers=OTHER)).status_code == 201


async def test_a_start_that_fails_counts_nothing(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(runs_per_minute=2)
    bad = {"workflow": "monty", "input": {"min_sleep_s": 0, "max_sleep_s": 1}}  # schema: > 0
    for _ in range(3):
        assert (await start(gw, json=bad)).status_code == 422
    assert (await start(gw, json={"workflow": "nope"})).status_code == 404
    assert [(await start(gw)).status_code for _ in range(3)] == [201, 201, 429]


async def test_unfinished_runs_per_client_and_a_slot_freed_by_a_run_ending(
    gateway_factory: GatewayFactory, redis: Redis, keys: Keys
) -> None:
    a, b = await two_gateways(gateway_factory, active_runs_per_client=2)
    first, second = (await start(a)).json()["run_id"], (await start(b)).json()["run_id"]
    for gw in (a, b):
        error = assert_limited(await start(gw), "too_many_active_runs", 2)
        assert error["details"]["active"] == 2
        assert error["details"]["setting"] == "TIDINGS_ACTIVE_RUNS_PER_CLIENT"
    assert (await start(a, headers=OTHER)).status_code == 201
    # A queued run that is cancelled ends at once: its slot is free for the next start.
    async with b.client() as client:
        assert (await client.post(f"/api/runs/{first}/signals/cancel")).status_code == 202
    third = await start(b)
    assert third.status_code == 201, third.text
    members = {m.decode() for m in await redis.zrange(keys.client_runs(ME), 0, -1)}
    assert members == {second, third.json()["run_id"]}  # the ended run was pruned
    assert_limited(await start(a), "too_many_active_runs", 2)


async def test_starts_through_the_seed_routes_count_and_are_refused_before_a_stream(
    gateway_factory: GatewayFactory, store: RunStore
) -> None:
    gw = await gateway_factory(runs_per_minute=4)
    async with gw.client() as client:
        assert (await client.post("/api/runs", json=QUEUED)).status_code == 201
        made = await client.post("/api/v1/workflows/", json={"name": "Research tides"})
        def_id = made.json()["id"]
        assert (await client.post(f"/api/v1/workflows/{def_id}/execute")).status_code == 200
        chat = await client.post("/chat", json={"message": "hello", "timeout_s": 0})
        assert chat.status_code == 202, chat.text  # no worker: the reply is pending
        monty = await gw.stream("/monty/stream?min_sleep_s=1&max_sleep_s=2")
        assert monty.status == 200
        monty.close()

        assert_limited(await client.post("/api/runs", json=QUEUED), "too_many_starts", 4)
        assert_limited(await client.post("/chat", json={"message": "hi"}), "too_many_starts", 4)
        refused = await client.get("/monty/stream", headers=EVENT_STREAM)
        assert_limited(refused, "too_many_starts", 4)
        again = await client.post("/api/v1/workflows/", json={"name": "Research rivers"})
        execute = await client.post(f"/api/v1/workflows/{again.json()['id']}/execute")
        assert_limited(execute, "too_many_starts", 4)
        # The definition stays executable once the window moves on.
        assert (await client.get(f"/api/v1/workflows/{again.json()['id']}")).status_code == 200
    assert await run_count(store) == 4


async def open_stream(gw: Gateway, path: str, **kw: Any) -> RawStream:
    stream = await gw.stream(path, **kw)
    assert stream.status == 200, stream.status
    return stream


async def live_leases(redis: Redis, keys: Keys, client: str = ME) -> int:
    return int(await redis.zcount(keys.client_viewers(client), f"({time.time() * 1000}", "+inf"))


async def test_open_streams_per_client_over_every_gateway(
    gateway_factory: GatewayFactory, store: RunStore, redis: Redis, keys: Keys
) -> None:
    a, b = await two_gateways(gateway_factory, viewers_per_client=2)
    run = await store.create("demo", None)
    feed = await open_stream(a, "/api/runs/events")
    one = await open_stream(b, f"/api/runs/{run.run_id}/events")
    assert await live_leases(redis, keys) == 2
    async with a.client(headers=EVENT_STREAM) as client, b.client(headers=EVENT_STREAM) as other:
        for gw_client, path in (
            (client, f"/api/streams?run={run.run_id}"),
            (other, f"/api/runs/{run.run_id}/events"),
            (client, "/api/runs/events"),
            (other, "/api/v1/workflows/" + run.run_id + "/stream"),
        ):
            error = assert_limited(await gw_client.get(path), "too_many_viewers", 2)
            assert error["details"]["setting"] == "TIDINGS_VIEWERS_PER_CLIENT"
        # A seed stream that would start a run starts none when no stream is left.
        runs_before = await run_count(store)
        assert_limited(await other.get("/monty/stream"), "too_many_viewers", 2)
        assert await run_count(store) == runs_before
    # Another client is counted apart.
    (await open_stream(a, "/api/runs/events", headers=OTHER)).close()

    feed.close()

    async def reopened() -> RawStream | None:
        stream = await b.stream(f"/api/streams?run={run.run_id}&feed=runs")
        if stream.status == 200:
            return stream
        stream.close()
        return None

    again: RawStream = await wait_for(reopened, "a stream slot freed by closing one")
    one.close()
    again.close()
    await wait_for(lambda: _leases_are(redis, keys, 0), "every lease released")


async def _leases_are(redis: Redis, keys: Keys, n: int, client: str = ME) -> bool:
    return await live_leases(redis, keys, client) == n


async def _viewers(gw: Gateway, run_id: str) -> int:
    async with gw.client() as client:
        return int((await client.get(f"/api/runs/{run_id}")).json()["viewers"])


async def test_leases_count_viewers_across_gateways_vanish_on_close_and_lapse_on_sigkill(
    gateway_factory: GatewayFactory, store: RunStore, redis: Redis, keys: Keys
) -> None:
    a, b = await two_gateways(gateway_factory, viewer_lease_s=1.0)
    run = await store.create("demo", None)
    on_a = await open_stream(a, f"/api/runs/{run.run_id}/events")
    on_b = [await open_stream(b, f"/api/runs/{run.run_id}/events") for _ in range(2)]
    assert await _viewers(a, run.run_id) == 3  # counted over both gateways, from either
    assert await _viewers(b, run.run_id) == 3
    # Renewed while open: still counted after several lease times.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert await live_leases(redis, keys) == 3
        await asyncio.sleep(0.2)

    on_a.close()
    await wait_for(lambda: _leases_are(redis, keys, 2), "the closed stream's lease gone")
    assert await _viewers(a, run.run_id) == 2

    b.proc.kill()  # no goodbye: its leases lapse
    b.proc.wait()
    await wait_for(lambda: _leases_are(redis, keys, 0), "the killed gateway's leases lapsed", 10)
    assert await _viewers(a, run.run_id) == 0
    for stream in on_b:
        stream.close()


async def test_idempotency_key_starts_one_run_for_concurrent_retries(
    gateway_factory: GatewayFactory, store: RunStore
) -> None:
    a, b = await two_gateways(gateway_factory)
    key = {"Idempotency-Key": "order-42/try"}
    replies = await asyncio.gather(*(start(gw, headers=key) for gw in (a, b) * 4))
    assert sorted(r.status_code for r in replies) == [200] * 7 + [201]
    assert len({r.json()["run_id"] for r in replies}) == 1
    assert all(
        r.headers.get("idempotent-replayed") == "true" for r in replies if r.status_code == 200
    )
    assert await run_count(store) == 1

    # The same key with another body is refused; from another client it is another key.
    other = {"workflow": "monty", "input": {"min_sleep_s": 2, "max_sleep_s": 3}}
    reused = await start(b, headers=key, json=other)
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    assert (await start(a, headers={**key, **OTHER})).status_code == 201
    # Whitespace and key order do not make another body.
    async with a.client() as client:
        raw = '{ "input": {"max_sleep_s": 2, "min_sleep_s": 1}, "workflow": "monty" }'
        same = await client.post(
            "/api/runs", content=raw, headers={**key, "content-type": "application/json"}
        )
    assert same.status_code == 200 and same.json()["run_id"] == replies[0].json()["run_id"]

    for bad in (b"", b"x" * 201, b"caf\xe9"):
        async with a.client() as client:
            resp = await client.post("/api/runs", json=QUEUED, headers=[(b"Idempotency-Key", bad)])
        assert resp.status_code == 400, (bad, resp.text)


async def test_a_failed_start_gives_its_idempotency_key_back(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(runs_per_minute=1)
    key = {"Idempotency-Key": "k1"}
    bad = {"workflow": "monty", "input": {"min_sleep_s": 0, "max_sleep_s": 1}}  # schema: > 0
    assert (await start(gw, headers=key, json=bad)).status_code == 422
    first = await start(gw, headers=key)  # a corrected retry may use the key
    assert first.status_code == 201
    limited = await start(gw, headers={"Idempotency-Key": "k2"})
    assert_limited(limited, "too_many_starts", 1)
    retry = await start(gw, headers=key)  # a replay starts nothing: no limit applies
    assert retry.status_code == 200 and retry.json()["run_id"] == first.json()["run_id"]
