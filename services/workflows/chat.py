"""`chat`: a long-lived conversation. Each user message is a `message` signal; replies stream.

A message is `{"text": "...", "ref": "optional client reference"}`; an optional first message may
come in the input. Each message goes to the model with the agent's tools (`chat_tools`: start,
list, stop or inspect runs, calculate, tell the time) through `run.converse`: the model chooses a
tool (or several, or none), the tools run, their results go back to it, and its answer streams as
`token` events of task `reply`. With the OpenAI-compatible provider that is the API's own tool
calling; the simulated model calls a tool exactly when the intent parser recognises a command and
then answers with the tool's text (labelled `tool`, not simulated). Every tool call is published
as a `log` event of task `tool` with data `{"tool", "args", "ok", "result"}`.

`run.state["messages"]` holds the conversation, the latest 400 messages: `role`, `content`, `ts`,
`id` (the signal's id, unique), on user messages the client's `ref` and on replies `reply_to`
(that `ref`) and `tool` (the last tool that ran, if any). It is what the history route returns and
what `POST /chat` waits on. Each turn is checkpointed under a step named after its message id, so
a run re-executed after a crash (which sees its signal history again) neither repeats a tool's
side effect nor answers twice.

A model failure during a reply is reported in the reply and as a `log` event; the conversation
goes on, and a command the intent parser recognises still runs (tools need no model). The run
ends on `stop` (after the current turn) or after `idle_timeout_s` without a message: it then
completes, after a `log` event with data `{"reason": "idle"}` that says so.
`POST /chat` starts chats with the gateway's `TIDINGS_CHAT_IDLE_S`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tidings.events import EventType, now_iso
from tidings.sdk import Run, workflow
from tidings.sdk.model import Message, ModelError, ToolResult, run_tool

from ._runtime import model_info
from .chat_tools import chat_tools, parse_intent

__all__ = ["ChatInput", "chat"]

_SYSTEM = (
    "You are the assistant of Tidings, a workflow engine that streams every step of every run. "
    "Answer briefly and plainly."
)
_HISTORY_TURNS = 12
# The state is rewritten whole on every turn: keep it bounded in a conversation that never ends.
_KEEP_MESSAGES = 400


class ChatInput(BaseModel):
    message: str | None = Field(
        None, min_length=1, max_length=8_000, description="First user message."
    )
    system: str | None = Field(None, max_length=4_000, description="Replaces the system prompt.")
    idle_timeout_s: float = Field(
        900, ge=1, le=7 * 86_400, description="End the conversation after this long idle."
    )


@workflow(
    "chat",
    Input=ChatInput,
    description="A conversation: send `message` signals; replies stream; tools act on runs.",
)
async def chat(run: Run, input: ChatInput) -> dict[str, Any]:
    info = model_info(run)
    if "messages" not in run.state:
        await run.save_state(messages=[], status="waiting", turns=0, **info)
    if input.message and not _answered(run, "input"):
        await _turn(run, input, input.message, key="input", ref="input", info=info)
    while not run.stop_requested:
        await run.save_state(status="waiting")
        signal = await run.next_message(timeout=input.idle_timeout_s)
        if signal is None:
            if not run.stop_requested:
                await run.emit(
                    EventType.LOG,
                    f"no message for {input.idle_timeout_s:g} s: the conversation ends",
                    data={"reason": "idle", "idle_timeout_s": input.idle_timeout_s},
                )
            break  # stop requested or idle too long
        text = str(signal.payload.get("text") or signal.payload.get("message") or "").strip()
        if not text:
            await run.emit(EventType.LOG, "ignored an empty message", data={"signal": signal.id})
            continue
        key = signal.id or now_iso()
        if not _answered(run, key):  # a re-execution sees the signal history again
            ref = str(signal.payload.get("ref") or key)[:64]
            await _turn(run, input, text[:8_000], key=key, ref=ref, info=info)
    await run.save_state(status="ended")
    return {"turns": run.state.get("turns", 0), "messages": len(run.state["messages"])}


def _answered(run: Run, key: str) -> bool:
    return any(m.get("id") == key and m["role"] == "assistant" for m in run.state["messages"])


async def _turn(
    run: Run, input: ChatInput, text: str, *, key: str, ref: str, info: dict[str, Any]
) -> None:
    """Answer one user message. `key` identifies the message (the signal's id, unique), `ref`
    is the client's own reference, echoed as the reply's `reply_to`."""
    messages: list[dict[str, Any]] = list(run.state["messages"])
    if not any(m.get("id") == key and m["role"] == "user" for m in messages):
        user = {"role": "user", "content": text, "ts": now_iso(), "id": key, "ref": ref}
        messages.append(user)
        await run.save_state(messages=messages, status="replying")
    history = messages[-_HISTORY_TURNS - 1 : -1]

    async def reply() -> dict[str, Any]:
        tools = chat_tools(run)
        conversation = [
            Message("system", input.system or _SYSTEM),
            *(
                Message("user" if m["role"] == "user" else "assistant", m["content"])
                for m in history
            ),
            Message("user", text),
        ]
        parts: list[str] = []
        used: list[ToolResult] = []
        try:
            async for item in run.converse(conversation, tools, task="reply", data={"ref": ref}):
                if isinstance(item, ToolResult):
                    used.append(item)
                    await _log_tool(run, item)
                else:
                    parts.append(item)
        except ModelError as exc:
            # A model outage ends this reply, not the conversation.
            await run.emit(EventType.LOG, f"model error: {exc}", task="reply")
            call = None if used else parse_intent(text)
            if call is None:
                parts.append(f" [the model failed: {exc}]")
            else:  # an unambiguous command needs no model
                result = await run_tool(tools, call)
                used.append(result)
                await _log_tool(run, result)
                content = result.text if result.ok else f"That did not work: {result.text}"
                await run.emit(
                    EventType.TOKEN,
                    task="reply",
                    data={"text": content, "ref": ref, "tool": call.name, "simulated": False},
                )
                parts = [content]
        return {"content": "".join(parts).strip(), "tool": used[-1].call.name if used else None}

    answer = await run.step(f"turn-{key}", reply)
    messages = list(run.state["messages"])
    if not any(m.get("id") == key and m["role"] == "assistant" for m in messages):
        messages.append(
            {
                "role": "assistant",
                "content": answer["content"],
                "ts": now_iso(),
                "id": key,
                "reply_to": ref,
                "tool": answer["tool"],
                **info,
            }
        )
    await run.save_state(
        messages=messages[-_KEEP_MESSAGES:],
        turns=int(run.state.get("turns", 0)) + 1,
        status="waiting",
    )


async def _log_tool(run: Run, result: ToolResult) -> None:
    call = result.call
    await run.emit(
        EventType.LOG,
        f"tool {call.name}: {result.text}",
        task="tool",
        data={"tool": call.name, "args": call.arguments, "ok": result.ok, "result": result.data},
    )
