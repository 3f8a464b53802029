"""The chat agent's tools, offered to the model, and the plain intent parser.

Tools have real effects: `start_run`, `list_runs`, `signal_run` and `run_status` go through
`run.runs` (the same code path as the HTTP API, so validation, events and errors are identical);
`calculate` is the AST-walking calculator; `clock` reads the system clock. `chat_tools(run)` gives
them as `tidings.sdk.model.Tool`s: a JSON schema each, which a real model chooses by (its
arguments are checked against it before a handler runs), and a handler that returns
`(text, data)`, `text` being what the user reads.

Intent parsing is a handful of anchored regular expressions, not a model: a tool with side effects
runs only on an unambiguous request ("start monty", "list running runs", "stop <run id>",
"stop monty", "calculate 2*(3+4)", "what time is it"). Anything else is conversation. It is each
tool's `match`, so the simulated model (which cannot choose) calls tools exactly when it says, and
the chat falls back on it when a real model is unreachable.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from tidings.errors import NotFound
from tidings.events import RunStatus
from tidings.sdk import Run, Runs
from tidings.sdk.model import Tool, ToolCall

from .calculator import NAMES, calculate, format_number

__all__ = ["ToolCall", "chat_tools", "parse_intent"]

_ID = r"[A-Za-z0-9_-]{1,64}"
_WORKFLOWS = r"monty|research|prompt_chain|chat"
_START = re.compile(
    rf"^(?:please\s+)?(?:start|run|launch|begin)\s+(?:a\s+|an\s+|the\s+|new\s+)*"
    rf"(?P<workflow>{_WORKFLOWS})\b(?:\s+(?:workflow|run))?"
    r"(?:\s+(?:on|about|into|for)\s+(?P<topic>.+?))?[.!?]*$",
    re.IGNORECASE,
)
_LIST = re.compile(
    r"\b(?:list|show|which|what)\b.*?\b(?:(?P<status>running|queued|paused|completed|failed|"
    r"cancelled)\s+)?(?P<workflow>monty|research|prompt_chain|chat)?\s*(?:runs|workflows)\b",
    re.IGNORECASE,
)
_SIGNAL = re.compile(
    rf"^(?:please\s+)?(?P<signal>stop|cancel|pause|resume)\s+(?:the\s+)?(?:run\s+)?"
    rf"(?P<target>{_ID})(?:\s+(?:run|workflow))?[.!]*$",
    re.IGNORECASE,
)
_STATUS = re.compile(rf"^(?:status|show|get)\s+(?:of\s+)?(?:run\s+)?(?P<target>{_ID})\??$", re.I)
_CALC = re.compile(
    r"^(?:calculate|calc|compute|evaluate|what\s+is|what's|whats)\s+(?P<expr>.+?)[\s?=]*$",
    re.IGNORECASE,
)
_MATH_CHARS = re.compile(r"^[\w\s.,+\-*/()^%]+$")
_BARE_MATH = re.compile(r"^[\d\s.+\-*/()^%]*\d[\d\s.+\-*/()^%]*[+\-*/^%][\d\s.()]*\d[\s)]*$")
_CLOCK = re.compile(
    r"\b(?:what\s+time|the\s+time|current\s+time|time\s+is\s+it|what(?:'s|\s+is)\s+the\s+date|"
    r"today'?s\s+date|what\s+day\s+is)\b",
    re.IGNORECASE,
)
_HELP = re.compile(r"^(?:help|tools|what\s+can\s+you\s+do)\b", re.IGNORECASE)

_HELP_TEXT = (
    'I can start runs ("start monty", "start research on solar power"), list them '
    '("list running runs"), control them ("stop <run id>", "stop monty", "pause <run id>"), '
    'show one ("status <run id>"), calculate ("calculate 2*(3+4)") and tell the time '
    '("what time is it"). Anything else, I answer as a model.'
)


def parse_intent(text: str) -> ToolCall | None:
    """The tool a message asks for, or None for plain conversation."""
    text = " ".join(text.split())
    if m := _START.match(text):
        args: dict[str, Any] = {"workflow": m.group("workflow").lower()}
        if m.group("topic"):
            args["topic"] = m.group("topic").strip()
        return ToolCall("start_run", args)
    if m := _SIGNAL.match(text):
        return ToolCall("signal_run", {"signal": m.group("signal").lower(), "target": m["target"]})
    if m := _STATUS.match(text):
        return ToolCall("run_status", {"target": m.group("target")})
    if m := _CALC.match(text):
        expr = m.group("expr").strip()
        words = set(re.findall(r"[A-Za-z_]\w*", expr))
        if _MATH_CHARS.match(expr) and any(c.isdigit() for c in expr) and words <= NAMES:
            return ToolCall("calculate", {"expression": expr})
    if _BARE_MATH.match(text):
        return ToolCall("calculate", {"expression": text.rstrip("=? ")})
    if _CLOCK.search(text):
        return ToolCall("clock")
    if m := _LIST.search(text):
        found = {k: v.lower() for k, v in m.groupdict().items() if v}
        return ToolCall("list_runs", found)
    if _HELP.match(text):
        return ToolCall("help")
    return None


_NAMES = _WORKFLOWS.split("|")
_STATUSES = ["running", "queued", "paused", "completed", "failed", "cancelled"]
_TARGET = {
    "type": "string",
    "pattern": f"^{_ID}$",
    "description": "A run ID, or a workflow name for its newest unfinished run.",
}


def _schema(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


# name -> (description, JSON schema of its arguments)
_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "start_run": (
        "Start a new run of a workflow. research and prompt_chain take a topic.",
        _schema(
            {
                "workflow": {"type": "string", "enum": _NAMES},
                "topic": {"type": "string", "minLength": 1, "maxLength": 500},
            },
            "workflow",
        ),
    ),
    "list_runs": (
        "List the newest runs (up to 10), optionally of one workflow and status.",
        _schema(
            {
                "workflow": {"type": "string", "enum": _NAMES},
                "status": {"type": "string", "enum": _STATUSES},
            }
        ),
    ),
    "signal_run": (
        "Stop, cancel, pause or resume a run.",
        _schema(
            {
                "signal": {"type": "string", "enum": ["stop", "cancel", "pause", "resume"]},
                "target": _TARGET,
            },
            "signal",
            "target",
        ),
    ),
    "run_status": ("Show one run's status and progress.", _schema({"target": _TARGET}, "target")),
    "calculate": (
        "Evaluate an arithmetic expression exactly (+ - * / // % ^, sqrt, log, sin, pi...).",
        _schema({"expression": {"type": "string", "minLength": 1, "maxLength": 200}}, "expression"),
    ),
    "clock": ("The current date and time (UTC).", _schema({})),
    "help": ("What this assistant can do.", _schema({})),
}


def chat_tools(run: Run) -> list[Tool]:
    """The tools, bound to `run`, in the order the intent parser tries them."""

    def tool(name: str) -> Tool:
        description, parameters = _SPECS[name]

        async def handler(arguments: dict[str, Any]) -> tuple[str, Any]:
            return await _dispatch(run, ToolCall(name, arguments))

        def match(text: str) -> dict[str, Any] | None:
            call = parse_intent(text)
            return call.arguments if call is not None and call.name == name else None

        return Tool(name, description, parameters, handler=handler, match=match)

    return [tool(name) for name in _SPECS]


async def _dispatch(run: Run, call: ToolCall) -> tuple[str, Any]:
    if call.name == "calculate":
        value = calculate(call.arguments["expression"])
        return f"{call.arguments['expression']} = {format_number(value)}", {"value": value}
    if call.name == "clock":
        now = datetime.now(UTC)
        stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
        return f"It is {now:%H:%M:%S} UTC on {now:%A, %d %B %Y}.", {"utc": stamp}
    if call.name == "help":
        return _HELP_TEXT, None
    control = run.runs
    if call.name == "start_run":
        workflow = call.arguments["workflow"]
        input: dict[str, Any] = {}
        if workflow == "research":
            input = {"topic": call.arguments.get("topic") or "recent advances in the field"}
        elif workflow == "prompt_chain":
            prompt = call.arguments.get("topic") or "Say hello."
            input = {"tasks": [{"name": "answer", "prompt": prompt}]}
        record = await control.start(workflow, input)
        return f"Started {workflow} run {record.run_id}.", {
            "run_id": record.run_id,
            "workflow": workflow,
        }
    if call.name == "list_runs":
        status = RunStatus(call.arguments["status"]) if "status" in call.arguments else None
        runs, _ = await control.list_runs(
            workflow=call.arguments.get("workflow"), status=status, limit=10
        )
        runs = [r for r in runs if r.run_id != run.run_id]
        if not runs:
            return "No matching runs.", {"runs": []}
        lines = [f"{r.run_id} {r.workflow} {r.status!s} {r.progress:.0f}%" for r in runs]
        rows = [{"run_id": r.run_id, "workflow": r.workflow, "status": str(r.status)} for r in runs]
        return f"{len(runs)} run(s):\n" + "\n".join(lines), {"runs": rows}
    if call.name in ("signal_run", "run_status"):
        target = await _resolve(run, control, call.arguments["target"])
        if call.name == "run_status":
            rec = await control.get(target)
            text = f"Run {target} ({rec.workflow}) is {rec.status!s} at {rec.progress:.0f}%."
            return text, {"run_id": target, "status": str(rec.status)}
        signal = call.arguments["signal"]
        await control.signal(target, signal)
        return f"Sent {signal} to run {target}.", {"run_id": target, "signal": signal}
    raise AssertionError(f"unknown tool {call.name!r}")


async def _resolve(run: Run, control: Runs, target: str) -> str:
    """A workflow name means its newest unfinished run other than this chat; else a run ID."""
    if target.lower() not in _WORKFLOWS.split("|"):
        return target
    for status in (RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.QUEUED):
        runs, _ = await control.list_runs(workflow=target.lower(), status=status, limit=5)
        for record in runs:
            if record.run_id != run.run_id:
                return str(record.run_id)
    raise NotFound(f"no unfinished {target.lower()} run")
