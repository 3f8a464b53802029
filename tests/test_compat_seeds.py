"""The seeds' own routes end to end, spoken to the way the seeds' clients speak to them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.test_api_helpers import Stack, stack
from tidings.services.bench.soak.procs import Stack as SoakStack
from tidings.sse import SSEMessage, SSEParser

__all__ = ["stack"]

_SEED000_FIELDS = {
    "event_type",
    "workflow_id",
    "task_id",
    "task_name",
    "progress_percent",
    "message",
    "data",
    "timestamp",
}
_MONTY_FIELDS = {
    "event",
    "workflow_id",
    "timestamp",
    "progress",
    "status",
    "iteration",
    "iteration_count",
    "quotes_delivered",
    "total_quotes_delivered",
    "current_quote",
    "elapsed",
    "total_elapsed",
    "should_exit",
}


def _ended(messages: list[SSEMessage]) -> bool:
    return any(json.loads(m.data).get("event") == "workflow_completed" for m in messages)


async def test_seed000_create_execute_stream(stack: Stack) -> None:
    body = {"name": "Research AI in Healthcare", "tasks": [], "config": {"breadth": 2, "depth": 1}}
    resp = await stack.client.post("/api/v1/workflows/", json=body)
    assert resp.status_code == 201, resp.text
    workflow = resp.json()
    wf_id = workflow["id"]
    assert workflow["status"] == "pending" and workflow["input"]["topic"] == "AI in Healthcare"
    early = await stack.client.get(f"/api/v1/workflows/{wf_id}/stream")
    assert early.status_code == 409

    resp = await stack.client.post(f"/api/v1/workflows/{wf_id}/execute?stream=true")
    assert resp.status_code == 200, resp.text
    stream_url = resp.json()["metadata"]["stream_url"]
    assert stream_url == f"/api/v1/workflows/{wf_id}/stream"
    again = await stack.client.post(f"/api/v1/workflows/{wf_id}/execute?stream=true")
    assert again.status_code == 409

    messages = await stack.sse("GET", stream_url)
    first = messages[0]
    assert first.event == "message"
    assert json.loads(first.data) == {"status": "connected", "workflow_id": wf_id}
    events = [(m.event, json.loads(m.data)) for m in messages[1:]]
    assert events[0][0] == "workflow_started" and events[-1][0] == "workflow_completed"
    for name, data in events:
        assert set(data) >= _SEED000_FIELDS
        assert data["event_type"] == name and data["workflow_id"] == wf_id
    names = [name for name, _ in events]
    assert {"task_started", "task_completed", "iteration_started", "iteration_completed"} <= set(
        names
    )
    plan = next(d for n, d in events if n == "task_started" and d["task_name"] == "plan")
    assert plan["message"]
    assert events[-1][1]["progress_percent"] == 100
    status = (await stack.client.get(f"/api/v1/workflows/{wf_id}")).json()
    assert status["status"] == "completed" and status["results"]["topic"] == "AI in Healthcare"

    # Resuming with the last id the seed's EventSource saw sends nothing twice.
    last_id = messages[-2].id
    tail = await stack.sse("GET", stream_url, headers={"Last-Event-ID": last_id})
    assert [m.event for m in tail[1:]] == ["workflow_completed"]
    over = await stack.client.get(stream_url, headers={"Last-Event-ID": messages[-1].id})
    assert over.status_code == 204


async def _logged_types(client: httpx.AsyncClient, run_id: str) -> list[str]:
    """The run's whole log, page by page: each event's type."""
    types: list[str] = []
    params = {"limit": "500"}
    while True:
        page = await client.get(
            f"/api/runs/{run_id}/events", params=params, headers={"Accept": "application/json"}
        )
        assert page.status_code == 200, page.text
        body = page.json()
        if not body["events"]:
            return types
        types += [e["type"] for e in body["events"]]
        params["after"] = body["next"]


async def test_seed000_stream_from_processes_started_as_the_soak_starts_them(
    tmp_path: Path,
) -> None:
    """The soak's gateway once ran under the package's pre-rename name while the seed routes
    imported the installed one: two copies of `access`, so the principal set by one failed the
    other's check and every seed-000 stream was a 500. Now: the whole log, then the end."""
    soak = SoakStack(tmp_path, f"compat{uuid.uuid4().hex[:8]}", {"llm_token_delay_ms": 0})
    soak.start_valkey()
    try:
        gw = await soak.start_gateway(0)
        await soak.start_worker(0)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            body = {"name": "Research otters", "config": {"breadth": 2, "depth": 1}}
            created = await client.post("/api/v1/workflows/", json=body)
            assert created.status_code == 201, created.text
            wf_id = created.json()["id"]
            executed = await client.post(f"/api/v1/workflows/{wf_id}/execute?stream=true")
            assert executed.status_code == 200, executed.text
            messages: list[SSEMessage] = []
            stream_url = executed.json()["metadata"]["stream_url"]
            headers = {"Accept": "text/event-stream"}
            async with client.stream("GET", stream_url, headers=headers) as resp:
                assert resp.status_code == 200, (await resp.aread()).decode()
                parser = SSEParser()
                async for chunk in resp.aiter_bytes():
                    messages += parser.feed(chunk)
            logged = await _logged_types(client, wf_id)
        assert [m.event for m in messages[1:]] == logged
        assert logged[-1] == "workflow_completed"
    finally:
        soak.close()


async def test_seed000_tasks_with_prompts_become_a_prompt_chain(stack: Stack) -> None:
    body = {
        "name": "Two step",
        "tasks": [
            {"name": "facts", "prompt": "Facts about otters."},
            {"name": "poem", "prompt": "A poem from: {facts}", "dependencies": ["facts"]},
        ],
    }
    created = (await stack.client.post("/api/v1/workflows/", json=body)).json()
    assert created["workflow"] == "prompt_chain"
    await stack.client.post(f"/api/v1/workflows/{created['id']}/execute")
    record = await stack.wait_status(created["id"], "completed")
    assert set(record["result"]) == {"facts", "poem"}


async def test_seed000_rejects_bad_definitions(stack: Stack) -> None:
    post = stack.client.post
    assert (await post("/api/v1/workflows/", json={"tasks": []})).status_code == 422
    bad = {"name": "x", "config": {"breadth": 99}}
    assert (await post("/api/v1/workflows/", json=bad)).status_code == 422
    assert (await post("/api/v1/workflows/nope/execute")).status_code == 404
    assert (await stack.client.get("/api/v1/workflows/nope/stream")).status_code == 404


async def test_seed003_monty_stream_stop_status_query(stack: Stack) -> None:
    seen: dict[str, Any] = {}

    async def react(message: SSEMessage) -> None:
        data = json.loads(message.data)
        if data["event"] == "workflow_started":
            seen["id"] = data["workflow_id"]
        if data["event"] == "progress_update" and "stopped" not in seen:
            run_id = seen["id"]
            query = await stack.client.get(f"/workflow/{run_id}/query")
            seen["query"] = query.json()
            status = await stack.client.get(f"/workflow/{run_id}/status")
            seen["status"] = status.json()
            stop = await stack.client.post(f"/workflow/{run_id}/signal/stop")
            seen["stopped"] = stop.json()

    messages = await stack.sse(
        "GET",
        "/monty/stream",
        params={"min_sleep_s": 2, "max_sleep_s": 3},
        on_message=react,
        until=_ended,
    )
    run_id = seen["id"]
    assert seen["stopped"] == {
        "status": "signal sent",
        "workflow_id": run_id,
        "signal": "stop_workflow",
    }
    assert seen["status"]["status"] == "RUNNING" and seen["status"]["workflow_type"] == "monty"
    assert {"iteration_count", "total_quotes_delivered", "current_quote", "should_exit"} <= set(
        seen["query"]
    )
    assert all(m.event == "message" for m in messages)  # unnamed: the seed uses onmessage
    events = [json.loads(m.data) for m in messages]
    assert all(set(e) >= _MONTY_FIELDS for e in events)
    assert all(m.id.startswith(f"{run_id}/") for m in messages)
    assert events[0]["event"] == "workflow_started"
    updates = [e for e in events if e["event"] == "progress_update"]
    assert updates and all(e["workflow_id"] == run_id for e in updates)
    quotes = [e for e in updates if e["status"].endswith("_complete")]
    assert len(quotes) == 1 and quotes[0]["current_quote"]
    final = events[-1]
    assert final["result"] == {
        "total_iterations": 1,
        "total_quotes_delivered": 1,
        "total_elapsed": final["result"]["total_elapsed"],
    }
    assert final["should_exit"] is True
    status = (await stack.client.get(f"/workflow/{run_id}/status")).json()
    assert status["status"] == "COMPLETED" and status["result"]["total_iterations"] == 1
    query = (await stack.client.get(f"/workflow/{run_id}/query")).json()
    assert query["iteration_count"] == 1 and query["total_quotes_delivered"] == 1


async def test_seed003_monty_post_with_custom_quotes_and_resume(stack: Stack) -> None:
    quotes = ["Ni!", "Ekke Ekke Ekke Ekke Ptang Zoo Boing!"]
    body = {"min_sleep_s": 0.1, "max_sleep_s": 0.2, "max_iterations": 2, "quotes": quotes}
    messages = await stack.sse("POST", "/monty/stream", json=body)
    events = [json.loads(m.data) for m in messages]
    assert events[-1]["event"] == "workflow_completed"
    assert events[-1]["result"]["total_iterations"] == 2
    delivered = {e["current_quote"] for e in events if e["current_quote"]}
    assert delivered and delivered <= set(quotes)
    # A reconnecting EventSource sends its last id back: the same run resumes, none restarts.
    resumed = await stack.sse("GET", "/monty/stream", headers={"Last-Event-ID": messages[-2].id})
    assert [json.loads(m.data)["event"] for m in resumed] == ["workflow_completed"]
    over = await stack.client.get("/monty/stream", headers={"Last-Event-ID": messages[-1].id})
    assert over.status_code == 204  # tells EventSource to stop reconnecting
    bad = await stack.client.post("/monty/stream", json={"min_sleep_s": 0, "max_sleep_s": 1})
    assert bad.status_code == 422  # what the schema says is checked before any run starts
    # min <= max is the model's rule, not the schema's: the run starts and fails at once.
    failed = await stack.sse("POST", "/monty/stream", json={"min_sleep_s": 5, "max_sleep_s": 1})
    assert json.loads(failed[-1].data)["event"] == "workflow_failed"


async def test_seed003_chat_with_tools_and_history(stack: Stack) -> None:
    resp = await stack.client.post("/chat", json={"message": "calculate 2*(3+4)"})
    assert resp.status_code == 200, resp.text
    first = resp.json()
    chat_id = first["workflow_id"]
    assert first["response"] == "2*(3+4) = 14" and first["tool"] == "calculate"

    async def say(text: str) -> dict[str, Any]:
        r = await stack.client.post("/chat", json={"message": text, "workflow_id": chat_id})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    assert "UTC" in (await say("what time is it?"))["response"]
    started = await say("start monty")
    assert started["tool"] == "start_run"
    monty_id = started["response"].split()[-1].rstrip(".")
    assert (await stack.client.get(f"/api/runs/{monty_id}")).json()["workflow"] == "monty"
    assert monty_id in (await say("list runs"))["response"]
    assert (await say(f"stop {monty_id}"))["response"] == f"Sent stop to run {monty_id}."
    chatter = await say("Tell me about rivers and deltas")
    assert chatter["tool"] is None and chatter["response"]

    history = (await stack.client.get(f"/workflow/{chat_id}/history")).json()
    roles = [m["role"] for m in history["messages"]]
    assert roles == ["user", "assistant"] * 6
    assert history["messages"][0]["content"] == "calculate 2*(3+4)"
    assert all(m["ts"] for m in history["messages"])

    assert (await stack.client.post(f"/workflow/{chat_id}/signal/stop")).status_code == 200
    record = await stack.wait_status(chat_id, "completed")
    assert record["result"]["turns"] == 6
    await stack.wait_status(monty_id, "completed")
    bad = await stack.client.post("/chat", json={"message": ""})
    assert bad.status_code == 422
    not_chat = await stack.client.post("/chat", json={"message": "hi", "workflow_id": monty_id})
    assert not_chat.status_code == 409
    unknown = await stack.client.post("/chat", json={"message": "hi", "workflow_id": "nope"})
    assert unknown.status_code == 404
