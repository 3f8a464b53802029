"""The chat workflow on a real worker whose model is an OpenAI-compatible server on a local port:
the model chooses tools through the API's tool calling, they run with real effects, their results
go back to the model, and the run's events show each tool call and the model's final reply."""

from __future__ import annotations

import json
from typing import Any

import tidings.services.workflows  # noqa: F401  (the `control` fixture validates with them)
from tests.engine_helpers import all_events, of_type, wait_event, wait_terminal
from tests.llm_server import finish, serve_model, split, text, tool_call
from tidings.bus import Bus
from tidings.control import Control
from tidings.events import EventType


def _answer_with_the_results(body: dict[str, Any]) -> list[bytes]:
    """Round two: the model reads the tool messages it was sent and answers with them."""
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    return [*text("Done: ", " | ".join(results), "."), *finish()]


async def test_a_chat_on_a_real_worker_lets_the_model_call_tools(
    control: Control, bus: Bus, workers: Any
) -> None:
    calc = tool_call(0, "call_calc", "calculate", '{"expression": "6*7"}', parts=4)
    runs = tool_call(1, "call_runs", "list_runs", '{"status": "running"}', parts=2)
    first = [*text("Checking."), calc[0], runs[0], *calc[1:], *runs[1:], *finish("tool_calls")]
    async with serve_model(split(first), _answer_with_the_results) as fake:
        await workers(1, llm_provider="openai", llm_base_url=fake.url, llm_model="fake-1")
        rec = await control.start("chat", {"message": "What is 6*7, and what is running?"})
        run_id = rec.run_id
        await wait_event(
            bus,
            run_id,
            lambda e: e.type is EventType.TASK_COMPLETED and (e.task_id or "").startswith("turn-"),
            "the first turn",
        )
        await control.signal(run_id, "stop")
        assert (await wait_terminal(bus, run_id)).type is EventType.WORKFLOW_COMPLETED
    events = await all_events(bus, run_id)

    tools = [e for e in of_type(events, EventType.LOG) if e.task == "tool"]
    assert [e.data for e in tools] == [
        {"tool": "calculate", "args": {"expression": "6*7"}, "ok": True, "result": {"value": 42}},
        {"tool": "list_runs", "args": {"status": "running"}, "ok": True, "result": {"runs": []}},
    ]
    reply = [e for e in of_type(events, EventType.TOKEN) if e.task == "reply"]
    text_ = "".join(e.data["text"] for e in reply if e.data)
    assert text_ == "Checking.Done: 6*7 = 42 | No matching runs.."
    assert all(e.data and e.data["model"] == "fake-1" for e in reply)
    assert all(e.data and e.data["simulated"] is False for e in reply)

    # The model was offered every chat tool as a function, and got both results back by id.
    offered = {t["function"]["name"] for t in fake.requests[0]["tools"]}
    assert {"calculate", "list_runs", "start_run", "signal_run"} <= offered
    assert all(t["type"] == "function" for t in fake.requests[0]["tools"])
    sent_back = [m for m in fake.requests[1]["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in sent_back] == [
        ("call_calc", "6*7 = 42"),
        ("call_runs", "No matching runs."),
    ]
    asked = fake.requests[1]["messages"][-3]
    assert [c["id"] for c in asked["tool_calls"]] == ["call_calc", "call_runs"]
    assert json.loads(asked["tool_calls"][0]["function"]["arguments"]) == {"expression": "6*7"}

    state = (await control.get(run_id)).result
    assert state == {"turns": 1, "messages": 2}
