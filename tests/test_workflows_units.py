"""Pure parts of the shipped workflows: input validation, the chain's DAG, the calculator, the
chat agent's intent parser, the research question parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from pydantic import ValidationError
from redis.asyncio import Redis

from tidings.bus import Bus
from tidings.catalog import RegistryWorkflows
from tidings.control import Control
from tidings.errors import InvalidInput
from tidings.keys import Keys
from tidings.sdk import registry
from tidings.services.workflows.calculator import CalculatorError, calculate, format_number
from tidings.services.workflows.chat_tools import ToolCall, parse_intent
from tidings.services.workflows.monty import MontyInput
from tidings.services.workflows.prompt_chain import ChainInput, layers, render
from tidings.services.workflows.research import ResearchInput, parse_queries, parse_questions
from tidings.settings import Settings

# --- prompt_chain --------------------------------------------------------------------------------


def _chain(*tasks: tuple[str, str, list[str]]) -> ChainInput:
    return ChainInput.model_validate(
        {"tasks": [{"name": n, "prompt": p, "depends_on": d} for n, p, d in tasks]}
    )


def test_chain_layers_run_independent_tasks_together() -> None:
    chain = _chain(
        ("a", "facts about owls", []),
        ("b", "facts about bats", []),
        ("c", "compare {a} with {b}", []),  # placeholders are dependencies too
        ("d", "summarise", ["c"]),
    )
    assert layers(chain.tasks) == [["a", "b"], ["c"], ["d"]]


def test_chain_render_replaces_only_known_names() -> None:
    assert render("x={a} y={zzz} {json: 1}", {"a": "1"}) == "x=1 y={zzz} {json: 1}"


@pytest.mark.parametrize(
    ("tasks", "needle"),
    [
        ([("a", "p", []), ("a", "q", [])], "unique"),
        ([("a", "p", ["nope"])], "unknown nope"),
        ([("a", "p {a}", [])], "itself"),
        ([("a", "p", ["b"]), ("b", "q", ["a"])], "cycle"),
        ([("a", "{c}", []), ("b", "{a}", []), ("c", "{b}", [])], "cycle"),
    ],
)
def test_chain_rejects_what_is_not_a_dag(
    tasks: list[tuple[str, str, list[str]]], needle: str
) -> None:
    with pytest.raises(ValidationError, match=needle):
        _chain(*tasks)


def test_chain_rejects_bad_names_and_empty_chains() -> None:
    with pytest.raises(ValidationError):
        ChainInput.model_validate({"tasks": []})
    with pytest.raises(ValidationError):
        _chain(("has space", "p", []))


async def test_control_with_the_code_loaded_turns_a_cyclic_chain_into_invalid_input(
    redis: Redis, keys: Keys, settings: Settings
) -> None:
    # Where the workflows' code is loaded, their models validate (what a schema cannot say
    # included); the gateway has only the catalog's schemas and the worker fails such a run.
    control = Control(redis, keys, Bus(redis, keys), settings, RegistryWorkflows(registry))
    bad = {"tasks": [{"name": "a", "prompt": "{b}"}, {"name": "b", "prompt": "{a}"}]}
    with pytest.raises(InvalidInput) as caught:
        await control.start("prompt_chain", bad)
    assert caught.value.status == 422
    assert "cycle" in str(caught.value.errors)
    for bucket in keys.bucket_ids:  # nothing half-created
        assert await redis.zcard(keys.runs_in(bucket)) == 0


# --- other inputs --------------------------------------------------------------------------------


def test_research_and_monty_inputs_validate_bounds() -> None:
    assert ResearchInput(topic="x").model_dump() == {"topic": "x", "breadth": 3, "depth": 1}
    for bad in ({"topic": ""}, {"topic": "x" * 501}, {"topic": "x", "breadth": 17}):
        with pytest.raises(ValidationError):
            ResearchInput.model_validate(bad)
    assert MontyInput().min_sleep_s == 5 and MontyInput().max_sleep_s == 30
    with pytest.raises(ValidationError, match="min_sleep_s"):
        MontyInput(min_sleep_s=3, max_sleep_s=2)
    with pytest.raises(ValidationError):
        MontyInput(quotes=["  "])


def test_every_shipped_workflow_is_registered_with_a_schema() -> None:
    import tidings.services.workflows  # noqa: F401  (registers the shipped workflows)

    shipped = {"research", "prompt_chain", "monty", "chat"}
    assert shipped <= set(registry.workflows)
    for definition in (registry.workflows[name] for name in shipped):
        assert definition.description
        assert definition.schema()["type"] == "object"


def test_parse_questions_reads_lists_and_pads_to_breadth() -> None:
    text = "Sure:\n1. First?\n2) Second?\n- Third?\n* First?\nnot a question"
    assert parse_questions(text, 3, "t") == ["First?", "Second?", "Third?"]
    padded = parse_questions("", 10, "bees")
    assert len(padded) == len(set(padded)) == 10 and "bees" in padded[0]


def test_parse_queries_keeps_two_or_three_search_queries() -> None:
    text = "1. a?\n2. b?\n3. c?\n4. d?"
    assert parse_queries(text, "q?", "t") == ["a?", "b?", "c?"]
    assert parse_queries("1. a?", "q?", "t") == ["a?", "q?"]
    assert parse_queries("no list at all", "q?", "t") == ["q?", "t: q?"]


# --- calculator ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("2*(3+4)", 14),
        ("2^10", 1024),
        ("-3 + +4", 1),
        ("7 // 2 + 7 % 2", 4),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(pi, 2)", 3.14),
        ("max(1, 5, 3)", 5),
    ],
)
def test_calculator_evaluates_arithmetic(expr: str, value: float) -> None:
    assert calculate(expr) == value


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd')",
        "x",
        "[1, 2]",
        "'a' * 3",
        "lambda: 1",
        "2 if 1 else 3",
        "1 < 2",
        "True + 1",
        "sqrt.__call__(4)",
        "abs(x=1)",
    ],
)
def test_calculator_refuses_anything_but_arithmetic(expr: str) -> None:
    with pytest.raises(CalculatorError):
        calculate(expr)


@pytest.mark.parametrize(
    "expr", ["9**9**9", "10**1000", "2**1001", "(10**60)*(10**60)", "1/0", "1" * 300, "1e308*10"]
)
def test_calculator_bounds_the_work(expr: str) -> None:
    with pytest.raises(CalculatorError):
        calculate(expr)


def test_calculator_formats_results() -> None:
    assert format_number(14.0) == "14"
    assert format_number(1 / 3) == "0.333333333333"


# --- chat intents --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "call"),
    [
        ("start monty", ToolCall("start_run", {"workflow": "monty"})),
        (
            "Start a research on deep sea mining",
            ToolCall("start_run", {"workflow": "research", "topic": "deep sea mining"}),
        ),
        ("list runs", ToolCall("list_runs", {})),
        (
            "show running monty runs",
            ToolCall("list_runs", {"status": "running", "workflow": "monty"}),
        ),
        ("stop abc-123", ToolCall("signal_run", {"signal": "stop", "target": "abc-123"})),
        ("please cancel monty", ToolCall("signal_run", {"signal": "cancel", "target": "monty"})),
        ("status of run abc-123", ToolCall("run_status", {"target": "abc-123"})),
        ("calculate 2*(3+4)", ToolCall("calculate", {"expression": "2*(3+4)"})),
        ("what is sqrt(2)^2?", ToolCall("calculate", {"expression": "sqrt(2)^2"})),
        ("12 * 7", ToolCall("calculate", {"expression": "12 * 7"})),
        ("What time is it?", ToolCall("clock")),
        ("help", ToolCall("help")),
    ],
)
def test_intent_parser_recognises_tool_requests(text: str, call: ToolCall) -> None:
    assert parse_intent(text) == call


@pytest.mark.parametrize(
    "text",
    ["what is the capital of France?", "tell me about monty python", "hello there", "stop"],
)
def test_intent_parser_leaves_conversation_alone(text: str) -> None:
    assert parse_intent(text) is None


# --- properties ----------------------------------------------------------------------------------


@examples(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_calculator_only_ever_answers_a_number_or_a_calculator_error(text: str) -> None:
    try:
        value = calculate(text)
    except CalculatorError:
        return
    assert isinstance(value, int | float) and not isinstance(value, bool)


@examples(max_examples=100, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.lists(st.sets(st.integers(0, n - 1)), min_size=n, max_size=n)
    )
)
def test_chain_layers_respect_every_dependency(edges: list[set[int]]) -> None:
    # Only edges to earlier tasks: always a DAG, in any input order.
    tasks = [
        {"name": f"t{i}", "prompt": "p", "depends_on": [f"t{j}" for j in deps if j < i]}
        for i, deps in enumerate(edges)
    ]
    chain = ChainInput.model_validate({"tasks": list(reversed(tasks))})
    order = {name: n for n, layer in enumerate(layers(chain.tasks)) for name in layer}
    assert set(order) == {t["name"] for t in tasks}
    for task in tasks:
        for dep in task["depends_on"]:
            assert order[dep] < order[task["name"]]
