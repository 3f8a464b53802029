"""Runs that belong to a stream: a `/monty/stream` run is stopped once its viewers have been gone
for the grace period (and not while one reconnects in time, to any gateway), and after its
longest lifetime in any case; a chat started by `POST /chat` ends after its idle timeout.

Real gateways and workers on one Redis; each wait is on a condition with a deadline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from tests.test_gateway_support import Gateway, GatewayFactory, RawStream, wait_for
from tidings.sse import SSEMessage

MONTY = "/monty/stream?min_sleep_s=0.3&max_sleep_s=0.5&progress_interval_s=0.1"


async def log_of(gw: Gateway, run_id: str) -> list[dict[str, Any]]:
    async with gw.client() as client:
        resp = await client.get(
            f"/api/runs/{run_id}/events",
            params={"limit": 1000},
            headers={"Accept": "application/json"},
        )
    events: list[dict[str, Any]] = resp.json()["events"]
    return events


async def status_of(gw: Gateway, run_id: str) -> str:
    async with gw.client() as client:
        return str((await client.get(f"/api/runs/{run_id}")).json()["status"])


def stops(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "signal_received" and e["data"]["signal"] == "stop"]


async def watch(gw: Gateway, path: str, n: int, **kw: Any) -> tuple[RawStream, list[SSEMessage]]:
    """A stream and its first `n` messages."""
    stream = await gw.stream(path, **kw)
    assert stream.status == 200, stream.status
    return stream, await stream.take(n)


def run_of(messages: list[SSEMessage]) -> str:
    return messages[-1].id.partition("/")[0]


async def test_a_monty_stream_run_stops_after_its_viewer_left_for_the_grace(
    gateway_factory: GatewayFactory, workers: Callable[..., Any]
) -> None:
    await workers(1)
    gw = await gateway_factory(orphan_grace_s=1.5)
    stream, first = await watch(gw, MONTY, 3)
    run_id = run_of(first)
    assert await status_of(gw, run_id) == "running"
    stream.close()
    left = time.time()

    await wait_for(lambda: _status_is(gw, run_id, "completed"), "the orphaned run completed", 20)
    [stop] = stops(await log_of(gw, run_id))
    assert stop["data"]["payload"]["reason"] == "no viewer for 1.5 s"
    stopped_at = datetime.fromisoformat(stop["ts"].replace("Z", "+00:00")).timestamp()
    assert stopped_at >= left + 1.5 - 0.05  # not before the grace was over


async def _status_is(gw: Gateway, run_id: str, status: str) -> bool:
    return await status_of(gw, run_id) == status


async def test_a_viewer_reconnecting_within_the_grace_to_another_gateway_keeps_the_run(
    gateway_factory: GatewayFactory, workers: Callable[..., Any]
) -> None:
    await workers(1)
    grace = 1.5
    a, b = [await gateway_factory(orphan_grace_s=grace) for _ in range(2)]
    stream, first = await watch(a, MONTY, 3)
    run_id = run_of(first)
    stream.close()  # an EventSource reconnects with the last id it saw, here to another gateway
    left = time.time()
    again, more = await watch(b, MONTY, 1, headers={"Last-Event-ID": first[-1].id})
    assert run_of(more) == run_id

    # Well past the grace since the first viewer left, the run goes on, watched from `b`.
    while time.time() < left + 3 * grace:
        messages = await again.take(1)
        assert messages and json.loads(messages[0].data)["event"] != "stop_requested"
    assert await status_of(a, run_id) == "running"
    assert stops(await log_of(a, run_id)) == []
    async with a.client() as client:
        assert (await client.get(f"/api/runs/{run_id}")).json()["viewers"] == 1

    again.close()
    await wait_for(lambda: _status_is(a, run_id, "completed"), "stopped once b's viewer left", 20)
    assert len(stops(await log_of(a, run_id))) == 1


async def test_a_watched_stream_run_ends_at_its_longest_lifetime(
    gateway_factory: GatewayFactory, workers: Callable[..., Any]
) -> None:
    await workers(1)
    gw = await gateway_factory(stream_run_max_s=1, orphan_grace_s=2)
    stream, first = await watch(gw, MONTY, 1)
    rest = await stream.read_to_end()  # ends by itself although its viewer stayed
    stream.close()
    run_id = run_of(first)
    events = [json.loads(m.data) for m in rest]
    assert events[-1]["event"] == "workflow_completed"
    assert "stop_requested" in [e["event"] for e in events]
    [stop] = stops(await log_of(gw, run_id))
    assert stop["data"]["payload"]["reason"] == "ran for its longest, 1 s"


async def test_a_chat_started_by_post_chat_ends_after_its_idle_timeout(
    gateway_factory: GatewayFactory, workers: Callable[..., Any]
) -> None:
    await workers(1, llm_token_delay_ms=1)
    gw = await gateway_factory(chat_idle_s=1)
    async with gw.client() as client:
        resp = await client.post("/chat", json={"message": "calculate 6*7"})
        assert resp.status_code == 200, resp.text
        chat_id = resp.json()["workflow_id"]
        assert (await client.get(f"/api/runs/{chat_id}")).json()["input"]["idle_timeout_s"] == 1
    await wait_for(lambda: _status_is(gw, chat_id, "completed"), "the idle chat completed", 20)
    events = await log_of(gw, chat_id)
    [idle] = [e for e in events if e["type"] == "log" and (e["data"] or {}).get("reason") == "idle"]
    assert "no message for 1 s" in idle["message"]
    assert events[-1]["type"] == "workflow_completed"
    async with gw.client() as client:
        late = await client.post("/chat", json={"message": "hello?", "workflow_id": chat_id})
    assert late.status_code == 409
