"""The chat agent's tools and the plain intent parser that picks one.

Tools have real effects: `start_run`, `list_runs`, `signal_run` and `run_status` go through
`tidings.control.Control` (the same code path as the HTTP API, so validation, events and errors
are identical); `calculate` is the AST-walking calculator; `clock` reads the system clock.

Intent parsing is a handful of anchored regular expressions, not a model: a tool with side effects
runs only on an unambiguous request ("start monty", "list running runs", "stop <run id>",
"stop monty", "calculate 2*(3+4)", "what time is it"). Anything else is conversation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tidings.errors import NotFound, TidingsError
from tidings.events import RunStatus
from tidings.sdk import Run, Runs

from .calculator import NAMES, CalculatorError, calculate, format_number

__all__ = ["ToolCall", "parse_intent", "run_tool"]

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


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    args: dict[str, Any] = field(default_factory=dict)


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


async def run_tool(run: Run, call: ToolCall) -> dict[str, Any]:
    """Execute `call`; `{"tool", "ok", "text", "data"}` where `text` is what the user reads."""
    try:
        text, data = await _dispatch(run, call)
        return {"tool": call.name, "args": call.args, "ok": True, "text": text, "data": data}
    except (TidingsError, CalculatorError) as exc:
        return {"tool": call.name, "args": call.args, "ok": False, "text": str(exc), "data": None}


async def _dispatch(run: Run, call: ToolCall) -> tuple[str, Any]:
    if call.name == "calculate":
        value = calculate(call.args["expression"])
        return f"{call.args['expression']} = {format_number(value)}", {"value": value}
    if call.name == "clock":
        now = datetime.now(UTC)
        stamp = now.isoformat(timespec="seconds").replace("+00:00", "Z")
        return f"It is {now:%H:%M:%S} UTC on {now:%A, %d %B %Y}.", {"utc": stamp}
    if call.name == "help":
        return _HELP_TEXT, None
    control = run.runs
    if call.name == "start_run":
        workflow = call.args["workflow"]
        input: dict[str, Any] = {}
        if workflow == "research":
            input = {"topic": call.args.get("topic") or "recent advances in the field"}
        elif workflow == "prompt_chain":
            prompt = call.args.get("topic") or "Say hello."
            input = {"tasks": [{"name": "answer", "prompt": prompt}]}
        record = await control.start(workflow, input)
        return f"Started {workflow} run {record.run_id}.", {
            "run_id": record.run_id,
            "workflow": workflow,
        }
    if call.name == "list_runs":
        status = RunStatus(call.args["status"]) if "status" in call.args else None
        runs, _ = await control.list_runs(
            workflow=call.args.get("workflow"), status=status, limit=10
        )
        runs = [r for r in runs if r.run_id != run.run_id]
        if not runs:
            return "No matching runs.", {"runs": []}
        lines = [f"{r.run_id} {r.workflow} {r.status!s} {r.progress:.0f}%" for r in runs]
        rows = [{"run_id": r.run_id, "workflow": r.workflow, "status": str(r.status)} for r in runs]
        return f"{len(runs)} run(s):\n" + "\n".join(lines), {"runs": rows}
    if call.name in ("signal_run", "run_status"):
        target = await _resolve(run, control, call.args["target"])
        if call.name == "run_status":
            rec = await control.get(target)
            text = f"Run {target} ({rec.workflow}) is {rec.status!s} at {rec.progress:.0f}%."
            return text, {"run_id": target, "status": str(rec.status)}
        signal = call.args["signal"]
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
