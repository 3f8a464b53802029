"""Streaming a model's output into a run's log as coalesced `token` events.

Deltas are buffered and published about every `_COALESCE_S` (50 ms) as one `token` event with
data `{"text": <joined deltas>, "model": llm.name, "simulated": llm.simulated}`, plus a last flush
at the end: viewers see text arrive smoothly without an event per token, and every token says
which model wrote it, so a dashboard can label a simulated reply as such. Cancelling the consumer
(a `cancel` signal cancels the run's task) unwinds the model's generator, which closes its HTTP
response: the in-flight call is aborted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from tidings.events import EventType

from .llm import LLM
from .publisher import Publisher

__all__ = ["stream_tokens"]

_COALESCE_S = 0.05


async def stream_tokens(
    llm: LLM,
    publisher: Publisher,
    prompt: str,
    *,
    task: str | None,
    task_id: str | None = None,
    system: str | None = None,
    max_tokens: int = 400,
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    buffered: list[str] = []
    last = loop.time()
    label: dict[str, Any] = {"model": llm.name, "simulated": llm.simulated}
    stream = llm.stream(prompt, system=system, max_tokens=max_tokens)
    async for delta in stream:
        buffered.append(delta)
        now = loop.time()
        if now - last >= _COALESCE_S:
            last = now
            text = "".join(buffered)
            buffered.clear()
            await publisher.send(
                EventType.TOKEN, task=task, task_id=task_id, data={"text": text, **label}
            )
        yield delta
    if buffered:
        text = "".join(buffered)
        await publisher.send(
            EventType.TOKEN, task=task, task_id=task_id, data={"text": text, **label}
        )
