"""The run control API end to end: a real gateway and worker, spoken to over HTTP and SSE."""

from __future__ import annotations

from typing import Any

from tests.test_api_helpers import Stack, stack

__all__ = ["stack"]

JSON_BODY = {"content-type": "application/json"}


def _error(resp: Any) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()["error"]
    return body


async def test_catalog_lists_the_shipped_workflows_with_input_schemas(stack: Stack) -> None:
    resp = await stack.client.get("/api/workflows")
    assert resp.status_code == 200
    catalog = {w["name"]: w for w in resp.json()["workflows"]}
    assert {"research", "prompt_chain", "monty", "chat"} <= set(catalog)
    research = catalog["research"]
    assert research["description"]
    assert research["input_schema"]["required"] == ["topic"]
    assert research["input_schema"]["properties"]["breadth"]["maximum"] == 16
    spec = (await stack.client.get("/openapi.json")).json()
    assert spec["openapi"] == "3.1.0" and "/api/runs/{run_id}/signals/{name}" in spec["paths"]
    schemas = spec["components"]["schemas"]
    assert {"ResearchInput", "ChainInput", "ChainTask", "MontyInput", "ChatInput"} <= set(schemas)
    assert schemas["ChainInput"]["properties"]["tasks"]["items"] == {
        "$ref": "#/components/schemas/ChainTask"
    }


async def test_bad_requests_get_clear_errors_and_create_nothing(stack: Stack) -> None:
    post = stack.client.post
    resp = await post(
        "/api/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and _error(resp)["code"] == "malformed_json"
    resp = await post("/api/runs", json={"input": {}})
    assert resp.status_code == 422 and _error(resp)["details"][0]["loc"] == ["workflow"]
    resp = await post("/api/runs", json={"workflow": "monty", "surprise": 1})
    assert resp.status_code == 422
    resp = await post("/api/runs", json={"workflow": "nope"})
    assert resp.status_code == 404
    resp = await post("/api/runs", json={"workflow": "research", "input": {"topic": ""}})
    assert resp.status_code == 422 and _error(resp)["details"][0]["loc"] == ["topic"]
    resp = await post("/api/runs", json={"workflow": "monty", "input": {"quotes": ["  "]}})
    assert resp.status_code == 422 and _error(resp)["details"][0]["loc"] == ["quotes", 0]
    resp = await stack.client.get("/api/runs?limit=0")
    assert resp.status_code == 422
    assert (await stack.client.get("/api/runs")).json()["runs"] == []
    assert (await stack.client.get("/api/runs/nope/state")).status_code == 404
    assert (await post("/api/runs/nope/signals/stop")).status_code == 404


async def test_what_a_schema_cannot_say_fails_the_run_at_once(stack: Stack) -> None:
    """A cycle between tasks passes the JSON schema (the gateway's check) and is refused by the
    workflow's model when the run starts: the run fails with the validation message."""
    chain = {"tasks": [{"name": "a", "prompt": "{b}"}, {"name": "b", "prompt": "{a}"}]}
    run = await stack.start("prompt_chain", chain)
    assert run["served"] is True and run["version"] == "1" and "warning" not in run
    events = await stack.events(run["run_id"])
    assert [e["type"] for e in events] == ["workflow_started", "workflow_failed"]
    assert "invalid input for workflow 'prompt_chain'" in events[-1]["message"]
    assert "cycle" in events[-1]["message"]
    monty = await stack.start("monty", {"min_sleep_s": 9, "max_sleep_s": 1})
    failed = (await stack.events(monty["run_id"]))[-1]
    assert failed["type"] == "workflow_failed" and "min_sleep_s" in failed["message"]


async def test_research_runs_end_to_end_with_findings_and_a_report(stack: Stack) -> None:
    run = await stack.start("research", {"topic": "urban heat islands", "breadth": 2, "depth": 2})
    run_id = run["run_id"]
    assert run["status"] == "queued"
    assert run["links"] == {
        "self": f"/api/runs/{run_id}",
        "events": f"/api/runs/{run_id}/events",
        "state": f"/api/runs/{run_id}/state",
        "signals": f"/api/runs/{run_id}/signals/{{name}}",
    }
    events = await stack.events(run_id)
    types = [e["type"] for e in events]
    assert types[0] == "workflow_started" and types[-1] == "workflow_completed"
    assert types.count("iteration_started") == 2 and types.count("iteration_completed") == 2
    assert "token" in types
    rounds = [e["data"]["questions"] for e in events if e["type"] == "iteration_started"]
    assert [len(r) for r in rounds] == [2, 2] and rounds[0] != rounds[1]  # depth follows up
    findings = [e for e in events if (e.get("data") or {}).get("finding")]
    assert len(findings) == 4
    assert all(f["message"].startswith("Found: ") for f in findings)
    assert all(f["data"]["simulated"] is True for f in findings)
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 100
    plan_done = next(e for e in events if e["type"] == "task_completed" and e["task"] == "plan")
    assert plan_done["progress"] <= 20 and plan_done["message"] == "Completed: plan"
    synth = next(e for e in events if e["type"] == "task_started" and e["task"] == "synthesize")
    assert synth["progress"] >= 90 and synth["message"] == "Starting task: synthesize"
    # Each question is several model calls (queries, notes per query, the finding), reported
    # step by step, and the bar moves inside a round while its questions are researched.
    first = "research 1.1"
    steps = [e for e in events if e["type"] == "task_progress" and e["task"] == first]
    assert steps[0]["message"].startswith("Researching: ")
    queries = steps[1]["data"]["queries"]
    assert 2 <= len(queries) <= 3 and steps[1]["message"].startswith("Searching: ")
    assert len(steps) == 3 + len(queries) and steps[-1]["message"].startswith("Found: ")
    fractions = [e["data"]["fraction"] for e in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1
    answering = [e for e in events if e["type"] == "token" and e["task"] == first]
    assert answering and all(e["data"]["model"] == "simulated" for e in answering)
    end_of_round = next(e for e in events if e["type"] == "iteration_completed")
    assert any(20 < e["progress"] < 55 for e in events[: events.index(end_of_round)])

    record = (await stack.client.get(f"/api/runs/{run_id}")).json()
    report = record["result"]
    assert record["status"] == "completed"
    assert report["topic"] == "urban heat islands"
    assert len(report["findings"]) == 4 and report["summary"]
    assert all(2 <= len(f["queries"]) <= 3 for f in report["findings"])
    assert report["model"] == "simulated" and report["simulated"] is True


async def test_prompt_chain_runs_its_dag(stack: Stack) -> None:
    chain = {
        "tasks": [
            {"name": "owls", "prompt": "Two facts about owls."},
            {"name": "bats", "prompt": "Two facts about bats."},
            {"name": "compare", "prompt": "Compare: {owls} versus {bats}"},
        ]
    }
    run = await stack.start("prompt_chain", chain)
    events = await stack.events(run["run_id"])
    assert events[-1]["type"] == "workflow_completed"
    started = [e["task"] for e in events if e["type"] == "task_started"]
    assert set(started) == {"owls", "bats", "compare"} and started[-1] == "compare"
    layers = [e["data"]["tasks"] for e in events if e["type"] == "iteration_started"]
    assert layers == [["owls", "bats"], ["compare"]]
    # Every prompt is worth a third of the bar, counted as it completes.
    counted = [e for e in events if e["type"] == "task_progress" and e["task"] is None]
    assert counted and counted[-1]["data"] == {"done": 1, "total": 1}
    assert counted[-1]["progress"] == 100 and events[-2]["type"] == "iteration_completed"
    assert all(round(e["progress"], 6) in (0, 33.333333, 66.666667, 100) for e in counted)
    result = (await stack.client.get(f"/api/runs/{run['run_id']}")).json()["result"]
    assert set(result) == {"owls", "bats", "compare"} and all(result.values())


async def test_history_lists_newest_first_with_filters_and_a_cursor(stack: Stack) -> None:
    quick = {"min_sleep_s": 0.05, "max_sleep_s": 0.05, "max_iterations": 1}
    ids = [(await stack.start("monty", quick))["run_id"] for _ in range(3)]
    chat = (await stack.start("chat", {}))["run_id"]
    page = (await stack.client.get("/api/runs", params={"workflow": "monty", "limit": 2})).json()
    assert [r["run_id"] for r in page["runs"]] == ids[::-1][:2]
    assert page["next"] and "before=" in page["next_link"]
    rest = await stack.client.get("/api/runs", params={"workflow": "monty", "before": page["next"]})
    assert [r["run_id"] for r in rest.json()["runs"]] == ids[:1]
    for run_id in ids:
        await stack.wait_status(run_id, "completed")
    done = (await stack.client.get("/api/runs", params={"status": "completed"})).json()["runs"]
    assert {r["run_id"] for r in done} == set(ids)
    everything = (await stack.client.get("/api/runs")).json()["runs"]
    assert everything[0]["run_id"] == chat
    bad = await stack.client.get("/api/runs", params={"status": "sleepy"})
    assert bad.status_code == 422


async def test_state_query_and_signals(stack: Stack) -> None:
    run = await stack.start("monty", {"min_sleep_s": 0.2, "max_sleep_s": 0.3})
    run_id = run["run_id"]
    await stack.wait_status(run_id, "running")
    signal = stack.client.post
    resp = await signal(f"/api/runs/{run_id}/signals/pause")
    assert resp.status_code == 202 and resp.json()["event"]["type"] == "signal_received"
    await stack.wait_status(run_id, "paused")
    assert (await signal(f"/api/runs/{run_id}/signals/pause")).status_code == 409
    assert (
        await signal(f"/api/runs/{run_id}/signals/resume", json={"why": "test"})
    ).status_code == 202
    await stack.wait_status(run_id, "running")
    resp = await signal(f"/api/runs/{run_id}/signals/bogus")
    assert resp.status_code == 422
    resp = await signal(f"/api/runs/{run_id}/signals/stop", content=b"[1, 2]", headers=JSON_BODY)
    assert resp.status_code == 422
    resp = await signal(f"/api/runs/{run_id}/signals/stop", content=b"{oops", headers=JSON_BODY)
    assert resp.status_code == 400

    state = (await stack.client.get(f"/api/runs/{run_id}/state")).json()
    assert state["run_id"] == run_id and state["workflow"] == "monty"
    assert {"iteration_count", "total_quotes_delivered", "current_quote", "total_elapsed"} <= set(
        state["state"]
    )
    assert (await signal(f"/api/runs/{run_id}/signals/stop")).status_code == 202
    record = await stack.wait_status(run_id, "completed")
    assert record["result"]["total_iterations"] >= 1
    assert (await signal(f"/api/runs/{run_id}/signals/stop")).status_code == 409
    final = (await stack.client.get(f"/api/runs/{run_id}/state")).json()["state"]
    assert final["should_exit"] is True and final["status"] == "completed"
    assert final["total_quotes_delivered"] == record["result"]["total_quotes_delivered"]
