"""`run.converse` / `ctx.converse`: the SDK's tool loop with its text published as `token` events.

The text deltas of every round are buffered and published about every 50 ms as one `token`
event, like `stream_tokens`, with data `{"text", "model", "simulated"}` plus the caller's `data`
(chat adds its `ref`). The buffer is flushed before each `ToolResult` is handed on, so a tool's
`log` event follows the text that preceded the call. A simulated model cannot write about a tool's
result: its answer after a tool is the tool's own text, so those tokens are labelled
`{"tool": name, "simulated": false}` (exact output, not model prose) instead. When the model
fails, what was buffered is published before the `ModelError` goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from tidings.sdk.model import Message, Model, ModelError, Tool, ToolResult, converse

from .publisher import Publisher
from .tokens import TokenBuffer

__all__ = ["publish_conversation"]


async def publish_conversation(
    model: Model,
    publisher: Publisher,
    messages: Sequence[Message],
    tools: Sequence[Tool] = (),
    *,
    task: str | None,
    task_id: str | None = None,
    max_rounds: int = 4,
    max_tokens: int = 400,
    data: dict[str, Any] | None = None,
) -> AsyncIterator[str | ToolResult]:
    tokens = TokenBuffer(publisher, task, task_id)
    label: dict[str, Any] = {"model": model.name, "simulated": model.simulated, **(data or {})}
    current = label
    try:
        async for item in converse(
            model, messages, tools, max_rounds=max_rounds, max_tokens=max_tokens
        ):
            if isinstance(item, ToolResult):
                await tokens.flush()
                if model.simulated:
                    current = {**(data or {}), "tool": item.call.name, "simulated": False}
            else:
                await tokens.add(item, current)
            yield item
    except ModelError:
        await tokens.flush()
        raise
    await tokens.flush()
