"""Tool calling: the OpenAI-compatible provider against a real local server streaming the real
wire format (tool-call deltas split over chunks, error chunks, HTTP errors, a stalled stream),
the tool loop, argument checks, and the simulated model's router."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.llm_server import (
    DONE,
    STALL,
    FakeModel,
    chunk,
    finish,
    serve_model,
    split,
    text,
    tool_call,
)
from tidings.sdk.model import (
    Message,
    Model,
    ModelError,
    Tool,
    ToolCall,
    ToolError,
    ToolResult,
    check_arguments,
    converse,
)
from tidings.services.worker.llm import LLMError, OpenAICompatible, SimulatedLLM

_CALC_SCHEMA = {
    "type": "object",
    "properties": {"expression": {"type": "string", "minLength": 1}},
    "required": ["expression"],
    "additionalProperties": False,
}


async def _calc(arguments: dict[str, Any]) -> tuple[str, Any]:
    expression = arguments["expression"]
    if expression == "1/0":
        raise ToolError("division by zero")
    value = {"6*7": 42, "2+3": 5}[expression]
    return f"{expression} = {value}", {"value": value}


CALC = Tool("calculate", "Evaluate arithmetic.", _CALC_SCHEMA, handler=_calc)
ASK = [Message("system", "Be terse."), Message("user", "What is 6*7?")]


def _client(fake: FakeModel, **kwargs: Any) -> OpenAICompatible:
    return OpenAICompatible(base_url=fake.url, model="fake-1", **kwargs)


async def _chat(model: Model, messages: list[Message], tools: list[Tool]) -> list[Any]:
    return [item async for item in model.chat(messages, tools=tools)]


async def _converse(model: Model, tools: list[Tool], **kwargs: Any) -> list[Any]:
    return [item async for item in converse(model, ASK, tools, **kwargs)]


def test_the_engine_names_are_the_sdk_classes() -> None:
    assert LLMError is ModelError


# --- the wire format -----------------------------------------------------------------------------


async def test_tool_call_deltas_split_over_chunks_become_tool_calls() -> None:
    # Two calls interleaved, their argument text cut mid-token, every event split in two writes.
    first = tool_call(0, "call_a", "calculate", '{"expression": "6*7"}', parts=4)
    second = tool_call(1, "call_b", "calculate", '{"expression":"2+3"}', parts=2)
    pieces = [*text("Let me ", "check."), first[0], second[0], *first[1:], *second[1:]]
    async with serve_model(split([*pieces, *finish("tool_calls")])) as fake:
        items = await _chat(_client(fake, api_key="sk-x"), ASK, [CALC])
    assert items == [
        "Let me ",
        "check.",
        ToolCall("calculate", {"expression": "6*7"}, "call_a"),
        ToolCall("calculate", {"expression": "2+3"}, "call_b"),
    ]
    sent = fake.requests[0]
    assert sent["stream"] is True and sent["model"] == "fake-1"
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "calculate",
                "description": "Evaluate arithmetic.",
                "parameters": _CALC_SCHEMA,
            },
        }
    ]
    assert sent["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What is 6*7?"},
    ]


async def test_a_name_repeated_in_every_delta_and_a_missing_index_are_followed() -> None:
    # Some servers send no `index` and repeat the name with each fragment.
    pieces = [
        chunk({"tool_calls": [{"id": "c1", "function": {"name": "calculate", "arguments": ""}}]}),
        chunk({"tool_calls": [{"function": {"name": "calculate", "arguments": '{"expres'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": 'sion": "2+3"}'}}]}),
        chunk({"tool_calls": [{"id": "c2", "function": {"name": "calculate", "arguments": "{}"}}]}),
        DONE,
    ]
    async with serve_model(pieces) as fake:
        items = await _chat(_client(fake), ASK, [CALC])
    assert items == [
        ToolCall("calculate", {"expression": "2+3"}, "c1"),
        ToolCall("calculate", {}, "c2"),
    ]


async def test_the_tool_loop_sends_results_back_until_the_model_answers_in_text() -> None:
    call = tool_call(0, "call_1", "calculate", '{"expression": "6*7"}')
    async with serve_model(
        [*call, *finish("tool_calls")], [*text("It is ", "42."), *finish()]
    ) as fake:
        items = await _converse(_client(fake), [CALC])
    assert items[1:] == ["It is ", "42."]
    result = items[0]
    assert isinstance(result, ToolResult)
    assert (result.ok, result.text, result.data) == (True, "6*7 = 42", {"value": 42})
    assert result.call == ToolCall("calculate", {"expression": "6*7"}, "call_1")
    second = fake.requests[1]
    assert second["messages"][2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "calculate", "arguments": '{"expression": "6*7"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "6*7 = 42"},
    ]
    assert "tools" in second


async def test_unknown_tools_bad_arguments_and_tool_failures_go_back_to_the_model() -> None:
    calls = [
        *tool_call(0, "c0", "erase_disk", "{}"),
        *tool_call(1, "c1", "calculate", '{"expr": 1}'),
        *tool_call(2, "c2", "calculate", '{"expression": "6*'),  # cut short: not JSON
        *tool_call(3, "c3", "calculate", '["6*7"]'),
        *tool_call(4, "c4", "calculate", '{"expression": "1/0"}'),
    ]
    async with serve_model([*calls, *finish("tool_calls")], [*text("Sorry."), *finish()]) as fake:
        items = await _converse(_client(fake), [CALC])
    assert items[-1] == "Sorry."
    results = [i for i in items if isinstance(i, ToolResult)]
    assert [r.ok for r in results] == [False] * 5
    replies = {m["tool_call_id"]: m["content"] for m in fake.requests[1]["messages"][3:]}
    assert replies["c0"] == "Error: unknown tool 'erase_disk'; tools: calculate"
    assert replies["c1"] == (
        "Error: invalid arguments: expression is required; expr is not a parameter"
    )
    assert replies["c2"].startswith("Error: could not read the arguments: not valid JSON")
    assert replies["c3"].startswith("Error: could not read the arguments: not a JSON object")
    assert replies["c4"] == "Error: division by zero"


async def test_a_model_that_keeps_calling_tools_is_stopped_after_max_rounds() -> None:
    call = [*tool_call(0, "c", "calculate", '{"expression": "2+3"}'), *finish("tool_calls")]
    async with serve_model(call, call) as fake:
        with pytest.raises(ModelError, match="still called tools after 2 rounds"):
            await _converse(_client(fake), [CALC], max_rounds=2)
    assert "tools" in fake.requests[0] and "tools" not in fake.requests[1]


# --- failures ------------------------------------------------------------------------------------

_BAD_DELTAS: list[tuple[Any, str]] = [
    ("not a list", "malformed tool call delta"),
    (["not an object"], "malformed tool call delta"),
    ([{"index": "zero", "function": {"name": "calculate"}}], r"malformed tool call delta \(index"),
    ([{"index": 0, "function": "calculate"}], "malformed tool call delta"),
    ([{"index": 0, "function": {"name": 7}}], "malformed tool call delta"),
    ([{"index": 0, "id": "c", "function": {"arguments": "{}"}}], "tool call without a name"),
]


@pytest.mark.parametrize(("deltas", "error"), _BAD_DELTAS)
async def test_malformed_tool_call_deltas_are_model_errors(deltas: Any, error: str) -> None:
    async with serve_model([chunk({"tool_calls": deltas}), DONE]) as fake:
        with pytest.raises(ModelError, match=error):
            await _chat(_client(fake), ASK, [CALC])


@pytest.mark.parametrize(
    ("pieces", "error"),
    [
        (
            [*text("Hal"), b'data: {"error": {"message": "overloaded"}}\n\n'],
            "reported an error.*overloaded",
        ),
        ([*text("Hal"), b"event: error\ndata: upstream died\n\n"], "reported an error.*died"),
        ([b"data: {not json\n\n"], "invalid JSON"),
        ([b"data: [1, 2]\n\n"], "unexpected chunk"),
        ([b'data: {"choices": {"0": 1}}\n\n'], "unexpected chunk"),
    ],
)
async def test_error_chunks_and_bad_json_are_model_errors(pieces: list[bytes], error: str) -> None:
    async with serve_model(pieces) as fake:
        with pytest.raises(ModelError, match=error):
            await _converse(_client(fake), [CALC])


async def test_an_http_500_is_a_model_error_with_the_servers_message() -> None:
    async with serve_model(500) as fake:
        with pytest.raises(ModelError, match=r"answered 500: .*fake failure 500"):
            await _converse(_client(fake), [CALC])


async def test_a_failure_in_the_second_round_is_a_model_error() -> None:
    call = [*tool_call(0, "c", "calculate", '{"expression": "2+3"}'), *finish("tool_calls")]
    async with serve_model(call, 503) as fake:
        items: list[Any] = []
        with pytest.raises(ModelError, match="answered 503"):
            async for item in converse(_client(fake), ASK, [CALC]):
                items.append(item)
    assert [type(i) for i in items] == [ToolResult]  # the tool ran before the model failed


async def test_a_stalled_stream_times_out_as_a_model_error() -> None:
    async with serve_model([*text("Hello"), STALL]) as fake:
        got: list[Any] = []
        with pytest.raises(ModelError, match=r"did not send the next bytes within 0.3 s"):
            async for item in _client(fake, timeout=0.3).chat(ASK, tools=[CALC]):
                got.append(item)
    assert got == ["Hello"]


async def test_a_json_answer_instead_of_a_stream_is_a_model_error() -> None:
    async with serve_model({"choices": [{"message": {"content": "hi"}}]}) as fake:
        with pytest.raises(ModelError, match=r"did not stream \(application/json\)"):
            await _chat(_client(fake), ASK, [])


# --- the simulated model -------------------------------------------------------------------------


def _match_calc(text: str) -> dict[str, Any] | None:
    return {"expression": text.removeprefix("calc ")} if text.startswith("calc ") else None


async def test_the_simulated_model_calls_the_tool_its_match_picks_then_repeats_its_text() -> None:
    llm = SimulatedLLM(token_delay_ms=0)
    tool = Tool("calculate", "", _CALC_SCHEMA, handler=_calc, match=_match_calc)
    question = [Message("system", "S"), Message("user", "calc 6*7")]
    items = [i async for i in converse(llm, question, [tool])]
    assert [type(i) for i in items] == [ToolResult, str]
    assert items[1] == "6*7 = 42"
    failing = [Message("system", "S"), Message("user", "calc 1/0")]
    items = [i async for i in converse(llm, failing, [tool])]
    assert items[1] == "That did not work: division by zero"


async def test_the_simulated_model_answers_conversation_as_before() -> None:
    llm = SimulatedLLM(token_delay_ms=0)
    tool = Tool("calculate", "", _CALC_SCHEMA, handler=_calc, match=_match_calc)
    messages = [
        Message("system", "S"),
        Message("user", "hi"),
        Message("assistant", "hello"),
        Message("user", "Tell me about glaciers"),
    ]
    reply = "".join([i async for i in converse(llm, messages, [tool]) if isinstance(i, str)])
    # The same text the chat produced before tools: the history folded into the system prompt.
    system = "S\n\nConversation so far:\nuser: hi\nassistant: hello"
    assert reply == llm.compose("Tell me about glaciers", system=system)
    assert "glaciers" in reply.lower()


# --- arguments -----------------------------------------------------------------------------------


def test_arguments_are_checked_against_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 5},
            "kind": {"type": "string", "enum": ["a", "b"]},
            "id": {"type": "string", "pattern": "^[a-z]+$"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["n"],
        "additionalProperties": False,
    }
    assert check_arguments(schema, {"n": 3, "kind": "a", "id": "x", "tags": ["t"]}) == []
    assert check_arguments(schema, {"n": 3.0}) == []  # 3.0 is an integer in JSON
    assert check_arguments(schema, {"n": True}) == ["n must be integer, not boolean"]
    assert check_arguments(schema, {"n": 9, "kind": "c", "id": "X1", "tags": [1], "z": 0}) == [
        "n is above 5",
        'kind must be one of "a", "b"',
        "id does not match ^[a-z]+$",
        "tags[0] must be string, not integer",
        "z is not a parameter",
    ]
    assert check_arguments(schema, []) == ["arguments must be object, not array"]
    assert json.dumps(check_arguments(schema, {})) == '["n is required"]'
