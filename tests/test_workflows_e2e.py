"""The shipped workflows' behaviour end to end, through the native API: a real OpenAI-compatible
model server, monty's cancel, the chat agent's streamed replies and tool events."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

from tests.test_api_helpers import Stack, running_stack, stack
from tests.test_llm import _serve, _Upstream
from tidings.sse import SSEMessage

__all__ = ["stack"]


async def test_prompt_chain_on_an_openai_compatible_model(
    processes: Any, settings_env: Callable[..., dict[str, str]]
) -> None:
    async with _serve(_Upstream(mode="echo")) as upstream:
        llm = {"llm_provider": "openai", "llm_base_url": upstream.url, "llm_model": "echo-1"}
        async with running_stack(processes, settings_env, **llm) as stack:
            chain = {
                "tasks": [
                    {"name": "a", "prompt": "alpha"},
                    {"name": "b", "prompt": "beta {a}"},
                ]
            }
            run = await stack.start("prompt_chain", chain)
            events = await stack.events(run["run_id"])
            record = (await stack.client.get(f"/api/runs/{run['run_id']}")).json()
    assert record["status"] == "completed", stack.logs()
    # b's prompt had a's output substituted before it reached the model.
    assert record["result"] == {"a": "ECHO:alpha", "b": "ECHO:beta ECHO:alpha"}
    layer = next(e for e in events if e["type"] == "iteration_started")
    assert layer["data"]["model"] == "echo-1" and layer["data"]["simulated"] is False
    tokens = "".join(e["data"]["text"] for e in events if e["type"] == "token" and e["task"] == "b")
    assert tokens == "ECHO:beta ECHO:alpha"
    assert [r["stream"] for r in upstream.requests] == [True, True]


async def test_monty_cancel_aborts_mid_sleep(stack: Stack) -> None:
    run = await stack.start("monty", {"min_sleep_s": 60, "max_sleep_s": 60})
    run_id = run["run_id"]

    sent: list[str] = []

    async def cancel_once(message: SSEMessage) -> None:
        if message.event == "task_progress" and not sent:
            sent.append(message.id)
            resp = await stack.client.post(f"/api/runs/{run_id}/signals/cancel")
            assert resp.status_code == 202

    messages = await stack.sse("GET", f"/api/runs/{run_id}/events", on_message=cancel_once)
    assert messages[-1].event == "workflow_cancelled"
    assert not any(m.event == "iteration_completed" for m in messages)
    state = (await stack.client.get(f"/api/runs/{run_id}/state")).json()["state"]
    assert state["iteration_count"] == 1 and state["total_quotes_delivered"] == 0


async def test_chat_streams_model_replies_and_publishes_tool_calls(stack: Stack) -> None:
    run = await stack.start("chat", {"message": "Tell me about glaciers in the Alps"})
    run_id = run["run_id"]
    say = f"/api/runs/{run_id}/signals/message"
    resp = await stack.client.post(say, json={"text": "calculate 6*7", "ref": "q2"})
    assert resp.status_code == 202

    def two_replies(messages: list[SSEMessage]) -> bool:
        return any('"tool":"calculate"' in m.data for m in messages)

    messages = await stack.sse("GET", f"/api/runs/{run_id}/events", until=two_replies)
    events = [json.loads(m.data) for m in messages]
    reply = "".join(
        e["data"]["text"] for e in events if e["type"] == "token" and e["task"] == "reply"
    )
    assert "glaciers" in reply.lower()
    tool = next(e for e in events if e["type"] == "log" and e.get("task") == "tool")
    assert tool["data"] == {
        "tool": "calculate",
        "args": {"expression": "6*7"},
        "ok": True,
        "result": {"value": 42},
    }
    state = await _state_until(stack, run_id, lambda s: len(s.get("messages", [])) == 4)
    assert [m["role"] for m in state["messages"]] == ["user", "assistant"] * 2
    question, answer = state["messages"][2:]
    assert question["ref"] == "q2" and answer["id"] == question["id"]
    assert answer | {"ts": "", "id": ""} == {
        "role": "assistant",
        "content": "6*7 = 42",
        "ts": "",
        "id": "",
        "reply_to": "q2",
        "tool": "calculate",
        "model": "simulated",
        "simulated": True,
    }
    assert (await stack.client.post(f"/api/runs/{run_id}/signals/stop")).status_code == 202
    record = await stack.wait_status(run_id, "completed")
    assert record["result"] == {"turns": 2, "messages": 4}


async def _state_until(
    stack: Stack, run_id: str, ok: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            state: dict[str, Any] = (await stack.client.get(f"/api/runs/{run_id}/state")).json()[
                "state"
            ] or {}
            if ok(state):
                return state
            await asyncio.sleep(0.05)


async def test_chat_survives_a_model_outage(
    processes: Any, settings_env: Callable[..., dict[str, str]]
) -> None:
    async with _serve(_Upstream(mode="status")) as upstream:
        llm = {"llm_provider": "openai", "llm_base_url": upstream.url, "llm_model": "down-1"}
        async with running_stack(processes, settings_env, **llm) as stack:
            resp = await stack.client.post("/chat", json={"message": "hello, how are rivers?"})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert "the model failed" in body["response"] and "503" in body["response"]
            # The conversation goes on: tools need no model.
            again = await stack.client.post(
                "/chat", json={"message": "calculate 1+1", "workflow_id": body["workflow_id"]}
            )
            assert again.json()["response"] == "1+1 = 2"
            record = (await stack.client.get(f"/api/runs/{body['workflow_id']}")).json()
            assert record["status"] == "running"


async def test_chat_and_monty_resume_on_another_worker_after_a_crash(
    stack: Stack, processes: Any
) -> None:
    chat_run = await stack.start("chat", {"message": "calculate 1+2"})
    chat_id = chat_run["run_id"]
    monty_run = await stack.start("monty", {"min_sleep_s": 0.2, "max_sleep_s": 0.2})
    monty_id = monty_run["run_id"]
    await _state_until(stack, chat_id, lambda s: len(s.get("messages", [])) == 2)
    await _state_until(stack, monty_id, lambda s: s.get("total_quotes_delivered", 0) >= 2)

    stack.worker.send_signal(signal.SIGKILL)  # no hand-back: the lease must expire
    stack.worker.wait()
    processes.python("tidings.services.worker", env=stack.env, name="worker-2")
    say = f"/api/runs/{chat_id}/signals/message"
    assert (await stack.client.post(say, json={"text": "calculate 2+3"})).status_code == 202

    state = await _state_until(stack, chat_id, lambda s: len(s.get("messages", [])) >= 4)
    contents = [m["content"] for m in state["messages"]]
    assert contents == ["calculate 1+2", "1+2 = 3", "calculate 2+3", "2+3 = 5"]
    before = (await stack.client.get(f"/api/runs/{monty_id}/state")).json()["state"]
    after = await _state_until(
        stack,
        monty_id,
        # Two more quotes: `before` may have been read mid-iteration (iteration k, k-1 quotes),
        # and one more quote would then still be iteration k.
        lambda s: s.get("total_quotes_delivered", 0) >= before["total_quotes_delivered"] + 2,
    )
    # Monty continued its count on the new worker rather than starting over.
    assert after["iteration_count"] > before["iteration_count"] >= 2
    events = await stack.sse(
        "GET", f"/api/runs/{monty_id}/events", until=lambda ms: ms[-1].event == "worker_lost"
    )
    assert events[-1].event == "worker_lost"
