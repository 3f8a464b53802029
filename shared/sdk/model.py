"""The model interface: what a workflow asks of a language model, and the tools it may offer it.

Decisions:
- `Model.chat(messages, tools=...)` yields text deltas (`str`) as they arrive and, at the end of
  the model's turn, the `ToolCall`s it chose (complete, arguments parsed). One iterator, so a
  caller streams text and collects calls in the same loop, and cancelling it closes the call.
- Providers live in the engine (`tidings.services.worker.llm`); this module knows no wire format.
  A provider that cannot read a call's arguments still yields the call, with `error` set: the
  model is told so (a tool error message) instead of the turn failing.
- Every failure of the model itself (unreachable, an HTTP error, a malformed or stalled stream) is
  a `ModelError`. A tool's failure is not: unknown tool, arguments that do not fit its schema and
  errors raised by its handler go back to the model as a tool message marked `error`, and the
  model may try again or explain.
- `converse` is the tool loop: ask, run the chosen tools, send their results back, until the model
  answers in text or `max_rounds` rounds have run (the last round offers no tools, so the model
  must answer). It yields the text and each `ToolResult`, in order.
- `Tool.match` is for models that cannot choose (the offline simulated one): given a user message
  it returns the arguments that message asks this tool for, or None.
- Arguments are checked against the tool's JSON schema: the subset models are given in practice
  (types, required, enum, additionalProperties false, string lengths and pattern, number bounds,
  items).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from tidings.errors import Fenced, TidingsError

__all__ = [
    "Message",
    "Model",
    "ModelError",
    "Tool",
    "ToolCall",
    "ToolError",
    "ToolResult",
    "check_arguments",
    "converse",
    "run_tool",
]

logger = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant", "tool"]


class ModelError(TidingsError):
    """The model failed: unreachable, an HTTP error, a malformed or stalled stream."""

    code = "model_error"
    status = 502


class ToolError(TidingsError):
    """Raise it in a tool's handler to report a failure to the model with this message."""

    code = "tool_error"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's request to run tool `name` with `arguments`. `id` pairs it with its result.
    `error` is set when the provider could not read the arguments (then they are empty)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation. `tool_calls` on an assistant message; `tool_call_id`,
    `name` and `error` on a tool result."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""
    error: bool = False


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What running a call gave: `text` goes back to the model, `data` is for events and state."""

    call: ToolCall
    ok: bool
    text: str
    data: Any = None

    def message(self) -> Message:
        return Message(
            "tool", self.text, tool_call_id=self.call.id, name=self.call.name, error=not self.ok
        )


ToolHandler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call. `parameters` is a JSON schema of an object. The handler
    receives the checked arguments and returns a `ToolResult`, a `(text, data)` pair, a string,
    or any JSON value (sent to the model as JSON); it raises `ToolError` (or any error) to fail.
    A tool without a handler is only a spec: `converse` reports calls of it as errors."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    handler: ToolHandler | None = None
    match: Callable[[str], dict[str, Any] | None] | None = None

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }


@runtime_checkable
class Model(Protocol):
    name: str
    simulated: bool

    def stream(
        self, prompt: str, *, system: str | None = None, max_tokens: int = 400
    ) -> AsyncIterator[str]:
        """Yield the completion of `prompt` as text deltas, as soon as each is available."""
        ...

    def chat(
        self, messages: Sequence[Message], *, tools: Sequence[Tool] = (), max_tokens: int = 400
    ) -> AsyncIterator[str | ToolCall]:
        """Yield the model's next message: text deltas as they come, then the tools it calls."""
        ...


# --- running tools -------------------------------------------------------------------------------


async def run_tool(tools: Sequence[Tool], call: ToolCall) -> ToolResult:
    """Run `call` with the tool of its name. Never raises for the tool's failures: an unknown
    name, unreadable or invalid arguments and the handler's errors are results with `ok` False.
    Only a `Fenced` (this run belongs to another worker now) and cancellation go through."""
    if call.error:
        return ToolResult(call, False, f"could not read the arguments: {call.error}")
    tool = next((t for t in tools if t.name == call.name), None)
    if tool is None or tool.handler is None:
        known = ", ".join(t.name for t in tools if t.handler is not None) or "none"
        return ToolResult(call, False, f"unknown tool {call.name!r}; tools: {known}")
    problems = check_arguments(tool.parameters, call.arguments)
    if problems:
        return ToolResult(call, False, "invalid arguments: " + "; ".join(problems))
    try:
        value = await tool.handler(dict(call.arguments))
    except Fenced:
        raise
    except Exception as exc:  # reported to the model, which may retry or explain
        if not isinstance(exc, TidingsError | ValueError):
            logger.warning("tool %s failed", call.name, exc_info=exc)
        return ToolResult(call, False, str(exc) or type(exc).__name__)
    if isinstance(value, ToolResult):
        return value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return ToolResult(call, True, value[0], value[1])
    if isinstance(value, str):
        return ToolResult(call, True, value, value)
    return ToolResult(call, True, json.dumps(value, default=str), value)


async def converse(
    model: Model,
    messages: Sequence[Message],
    tools: Sequence[Tool] = (),
    *,
    max_rounds: int = 4,
    max_tokens: int = 400,
) -> AsyncIterator[str | ToolResult]:
    """Ask `model`, run the tools it calls, send the results back, until it answers in text.
    Yields text deltas and each `ToolResult` as it comes. Raises `ModelError` when the model fails
    or still calls tools in the last round (offered none)."""
    history = list(messages)
    for round_no in range(1, max(1, max_rounds) + 1):
        offered = tools if round_no < max_rounds else ()
        text: list[str] = []
        calls: list[ToolCall] = []
        async for item in model.chat(history, tools=offered, max_tokens=max_tokens):
            if isinstance(item, ToolCall):
                calls.append(item)
            else:
                text.append(item)
                yield item
        if not calls:
            return
        if not offered:
            raise ModelError(f"the model still called tools after {max_rounds} rounds")
        history.append(Message("assistant", "".join(text), tool_calls=tuple(calls)))
        for call in calls:
            result = await run_tool(tools, call)
            history.append(result.message())
            yield result


# --- arguments -----------------------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def check_arguments(schema: Mapping[str, Any], value: Any, where: str = "") -> list[str]:
    """What is wrong with `value` under `schema` (a JSON schema); empty when it fits."""
    at = where or "arguments"
    problems: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is(value, name) for name in names):
            return [f"{at} must be {' or '.join(names)}, not {_kind(value)}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{at} must be one of {', '.join(map(json.dumps, schema['enum']))}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{at} is shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{at} is longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{at} does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{at} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{at} is above {schema['maximum']}")
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            problems += check_arguments(schema["items"], item, f"{at}[{i}]")
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                problems.append(f"{_join(where, name)} is required")
        for name, item in value.items():
            if name in properties:
                problems += check_arguments(properties[name], item, _join(where, name))
            elif schema.get("additionalProperties") is False:
                problems.append(f"{_join(where, name)} is not a parameter")
    return problems


def _is(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(name, object))


def _kind(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is(value, name) and not (name == "integer" and isinstance(value, float)):
            return name
    return type(value).__name__


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
